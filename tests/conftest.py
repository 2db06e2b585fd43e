"""Shared test helpers. Golden files: regenerate with `QWENRECIPES_UPDATE_GOLDEN=1 pytest tests/test_golden.py`."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
EXAMPLE_RECIPES = sorted(RECIPES.glob("*.yaml"))
UPDATE_GOLDEN = os.environ.get("QWENRECIPES_UPDATE_GOLDEN") == "1"


def target_for(recipe: Path) -> str:
    """Example recipes are resolved for the hardware they are written for, so goldens don't depend on
    the machine the tests run on."""
    return "cpu" if "cpu" in recipe.stem else "cuda"
