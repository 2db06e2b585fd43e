"""Pieces every command module shares: the RECIPE argument (a file or a packaged example's name) and a rich
console that does not cut tables when the output is a file or a pipe."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

# Rich sizes tables to the terminal, and to 80 columns when there is none: piped or redirected output then
# shows "eng…". Without a terminal there is nothing to fit, so give tables their natural width.
UNLIMITED_WIDTH = 10_000


def make_console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty() or bool(os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE"))
    width = None if terminal or os.environ.get("COLUMNS") else UNLIMITED_WIDTH
    return Console(stderr=stderr, width=width)


def _locate(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    from qwenrecipes.recipe.examples import locate_recipe

    return None if value is None else locate_recipe(value)


def recipe_argument(**kwargs: Any) -> Callable[[Any], Any]:
    """`RECIPE`: a recipe file, or the name of a packaged example (`qwenrecipes recipes` lists them)."""
    return click.argument("recipe", type=click.Path(path_type=Path), callback=_locate, **kwargs)
