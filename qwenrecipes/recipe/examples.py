"""The example recipes that ship with qwenrecipes, findable by name from any folder
(`qwenrecipes validate tiny-cpu` works outside the repository, as `qwenrecipes recipes` lists them)."""

from __future__ import annotations

from pathlib import Path

from qwenrecipes.resources import resource

SUFFIX = ".yaml"


def _folder() -> Path | None:
    folder = resource("recipes")
    return Path(str(folder)) if folder.is_dir() else None


def example_recipes() -> list[tuple[str, str]]:
    """(name, first comment line) of every packaged example, sorted by name."""
    folder = _folder()
    if folder is None:
        return []
    out = []
    for entry in sorted(folder.glob(f"*{SUFFIX}")):
        lines = entry.read_text(encoding="utf-8").splitlines()
        out.append((entry.stem, lines[0].lstrip("# ") if lines else ""))
    return out


def locate_recipe(argument: Path) -> Path:
    """The recipe a command-line argument means: the file when it exists, else the packaged example of that
    name (`tiny-cpu` or `tiny-cpu.yaml`), else the argument unchanged (the loader then says it is not found)."""
    if argument.exists() or len(argument.parts) != 1:
        return argument
    folder = _folder()
    if folder is None:
        return argument
    name = argument.name if argument.name.endswith(SUFFIX) else f"{argument.name}{SUFFIX}"
    candidate = folder / name
    return candidate if candidate.is_file() else argument
