"""Files that ship inside the package (schema, templates, example recipes), read via importlib.resources.

In an installed wheel, ``templates/`` and ``recipes/`` are force-included under the package; in an
editable checkout they sit beside it at the repository root, so both places are looked at.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def resource(relative: str) -> Traversable:
    """A packaged file or folder: ``schema/recipe.schema.json``, ``templates/axolotl``, ``recipes``."""
    packaged = files("qwenrecipes").joinpath(relative)
    if packaged.is_file() or packaged.is_dir():
        return packaged
    top = relative.split("/", 1)[0]
    if top in ("templates", "recipes"):
        local = _REPO_ROOT / relative
        if local.exists():
            return local
    return packaged


def read_resource_text(relative: str) -> str:
    return resource(relative).read_text(encoding="utf-8")
