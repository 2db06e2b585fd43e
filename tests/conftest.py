"""Shared test helpers. Golden files: regenerate with `QWENRECIPES_UPDATE_GOLDEN=1 pytest tests/test_golden.py`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from qwenrecipes.cli import main
from qwenrecipes.plan import Plan
from qwenrecipes.resolve import resolve_for_engine

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
EXAMPLE_RECIPES = sorted(RECIPES.glob("*.yaml"))
UPDATE_GOLDEN = os.environ.get("QWENRECIPES_UPDATE_GOLDEN") == "1"


def target_for(recipe: Path) -> str:
    """Example recipes are resolved for the hardware they are written for, so goldens don't depend on
    the machine the tests run on."""
    return "cpu" if "cpu" in recipe.stem else "cuda"


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
