"""Every example recipe renders for every engine, parses back, and matches its golden folder.

Regenerate after an intended change: `QWENRECIPES_UPDATE_GOLDEN=1 pytest tests/test_golden.py`, then
review `git diff tests/golden`.
"""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest
import yaml

from qwenrecipes.engines import ENGINES
from qwenrecipes.paths import qwenrecipes_home
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.folder import render_plan
from tests.conftest import EXAMPLE_RECIPES, REPO, UPDATE_GOLDEN, target_for

GOLDEN = REPO / "tests" / "golden"
CASES = [(recipe, engine) for recipe in EXAMPLE_RECIPES for engine in ENGINES]


def _normalize(text: str) -> str:
    """Machine-specific paths (the tiny model's cache) become a placeholder."""
    return text.replace(str(qwenrecipes_home()), "$QWENRECIPES_HOME")


def parse_back(name: str, text: str) -> object:
    """Every rendered file parses in its own language; returns the parsed value."""
    if name.endswith((".yaml", ".yml")):
        return yaml.safe_load(text)
    if name.endswith(".json"):
        return json.loads(text)
    if name.endswith(".py"):
        compile(text, name, "exec")
        return ast.parse(text)
    if name.endswith(".args") or name == "COMMAND":
        return [shlex.split(line) for line in text.splitlines() if line.strip()]
    return text


@pytest.mark.parametrize(("recipe", "engine"), CASES, ids=[f"{r.stem}-{e}" for r, e in CASES])
def test_render_matches_golden(recipe: Path, engine: str) -> None:
    plan = plan_recipe(recipe, target=target_for(recipe))
    files = render_plan(plan, engine).files
    folder = GOLDEN / recipe.stem / engine
    for name, text in files.items():
        assert parse_back(name, text) is not None
        # A rendered folder is copied to the GPU host: it must not name the machine it was rendered on.
        assert str(REPO) not in _normalize(text), f"{recipe.stem}/{engine}/{name} names this checkout's path"
    if UPDATE_GOLDEN:
        for old in folder.rglob("*") if folder.exists() else []:
            if old.is_file():
                old.unlink()
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(_normalize(text), encoding="utf-8")
    expected = {str(p.relative_to(folder)): p.read_text(encoding="utf-8") for p in folder.rglob("*") if p.is_file()}
    assert sorted(expected) == sorted(files), f"file set changed for {recipe.stem}/{engine}"
    for name, text in files.items():
        assert _normalize(text) == expected[name], (
            f"{recipe.stem}/{engine}/{name} differs from its golden file; if intended, regenerate with "
            "QWENRECIPES_UPDATE_GOLDEN=1 pytest tests/test_golden.py")
