"""Shared test helpers. Golden files: regenerate with `QWENRECIPES_UPDATE_GOLDEN=1 pytest tests/test_golden.py`."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from qwenrecipes.cli import main
from qwenrecipes.recipe.load import build_recipe, load_recipe_document
from qwenrecipes.recipe.plan import Plan, make_plan
from qwenrecipes.render.resolve import resolve_for_engine

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
EXAMPLE_RECIPES = sorted(RECIPES.glob("*.yaml"))
TINY = RECIPES / "tiny-cpu.yaml"
UPDATE_GOLDEN = os.environ.get("QWENRECIPES_UPDATE_GOLDEN") == "1"


def target_for(recipe: Path) -> str:
    """Example recipes are resolved for the hardware they are written for, so goldens don't depend on
    the machine the tests run on."""
    return "cpu" if "cpu" in recipe.stem else "cuda"


def tiny_plan(changes: dict[str, dict[str, Any]], target: str = "cuda") -> Plan:
    """tiny-cpu with sections overridden key by key (datasets stay relative to recipes/). The engines' render tests
    assert their own text path: data.handoff text unless a change says otherwise (the token handoff, the default
    of a recipe, is tested by tests/test_handoff.py, the goldens and the engine runs)."""
    document = copy.deepcopy(load_recipe_document(TINY))
    for section, values in changes.items():
        document.setdefault(section, {}).update(values)
    if not document["data"].get("packing"):  # qwenrecipes' packing needs the token handoff
        document["data"].setdefault("handoff", "text")
    return make_plan(build_recipe(document, TINY), target=target)


def cuda_plan(**changes: dict[str, Any]) -> Plan:
    """tiny-cpu turned into a CUDA recipe (bf16, 8-bit AdamW), with section overrides on top."""
    training = {"precision": "bf16", "optimizer": "adamw_8bit", **changes.get("training", {})}
    return tiny_plan({**changes, "training": training})


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr), the code 0 when main returns without exiting."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def render_resolved(engine: Any, plan: Plan) -> dict[str, str]:
    """An engine module's files for a plan, after the per-engine resolution every real path does first
    (render.render_plan): engines only read concrete checkpointing / Liger / micro-batch values."""
    return engine.render(resolve_for_engine(plan, engine.name))
