"""`explain` on every example: the effective settings come back from the rendered files, and every
difference between engines is flagged with the engine's own reason (none left unexplained)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenrecipes.engines import ENGINES
from qwenrecipes.recipe.concepts import CONCEPTS
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.explain import explain_plan
from tests.conftest import EXAMPLE_RECIPES, target_for


@pytest.mark.parametrize("recipe", EXAMPLE_RECIPES, ids=[r.stem for r in EXAMPLE_RECIPES])
def test_every_divergence_is_explained(recipe: Path) -> None:
    plan = plan_recipe(recipe, target=target_for(recipe))
    rows = explain_plan(plan, list(ENGINES))
    assert [row.concept for row in rows] == list(CONCEPTS)
    for row in rows:
        if row.diverges:
            assert row.why and "no note recorded" not in row.why, row.concept
    agreed = {row.concept: row.values["trl"] for row in rows if not row.diverges}
    training = plan.recipe.training
    assert agreed["learning_rate"] == training["learning_rate"]
    assert agreed["max_steps"] == plan.max_steps and agreed["warmup_steps"] == plan.warmup_steps
    assert agreed["effective_batch"] == plan.effective_batch and agreed["seed"] == training["seed"]


def test_every_divergence_of_a_packed_recipe_is_explained(tmp_path: Path) -> None:
    """qwenrecipes' bins reach each engine its own way (TRL with max_length null, LLaMA-Factory through a
    block-diagonal mask): each such difference carries the engine's note, and over-long rows agree (dropped before
    packing)."""
    from tests.packing_checks import packed_recipe

    plan = plan_recipe(packed_recipe(tmp_path), target="cpu")
    assert plan.packing is not None
    rows = {row.concept: row for row in explain_plan(plan, list(ENGINES))}
    for row in rows.values():
        if row.diverges:
            assert row.why and "no note recorded" not in row.why, row.concept
    assert not rows["truncation"].diverges
