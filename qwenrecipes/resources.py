"""Files that ship inside the package (schema, templates, example recipes): read from the package folder, or via
importlib.resources when the package is imported from a zip archive.

In an installed wheel, ``templates/`` and ``recipes/`` are force-included under the package; in an
editable checkout they sit beside it at the repository root, so both places are looked at.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent


def resource(relative: str) -> Traversable:
    """A packaged file or folder: ``schema/recipe.schema.json``, ``templates/<engine>``, ``recipes``."""
    if _PACKAGE_DIR.is_dir():
        # Installed as plain files (wheel or editable checkout): what importlib.resources would return, without
        # its imports (zipfile and friends), which every `render` would pay for at process start.
        packaged: Traversable = _PACKAGE_DIR / relative
    else:  # imported from a zip archive: only importlib.resources can read it
        from importlib.resources import files

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
