"""The engine registry: name -> engine object (see base.Engine).

Built-in engines are modules of this package, imported by name on first lookup. Other packages add engines
through the entry-point group ``qwenrecipes.engines`` (name -> ``"module:ENGINE"``), which is read only when
a name is not built in or when every engine is listed: `render -e trl` never pays for importlib.metadata.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from qwenrecipes.engines.base import Engine

ENTRY_POINT_GROUP = "qwenrecipes.engines"

# Built-in name -> module exporting ENGINE. The order is the order engines are listed and rendered in.
ENGINE_MODULES: dict[str, str] = {
    "axolotl": "qwenrecipes.engines.axolotl",
    "llamafactory": "qwenrecipes.engines.llamafactory",
    "unsloth": "qwenrecipes.engines.unsloth",
    "trl": "qwenrecipes.engines.trl",
    "swift": "qwenrecipes.engines.swift",
}


@lru_cache(maxsize=1)
def _plugins() -> dict[str, EntryPoint]:
    """Engines other installed packages register (a built-in name cannot be taken over)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in ENGINE_MODULES}
    return dict(sorted(found.items()))


def refresh() -> None:
    """Forget the plug-ins read so far (after installing a package into the running interpreter)."""
    _plugins.cache_clear()


class _Registry(Mapping[str, "Engine"]):
    """A read-only mapping that imports an engine's module on first lookup: `render -e trl` does not compile
    the other engines' modules (noticeable at process start, where every import counts)."""

    def __getitem__(self, name: str) -> Engine:
        module = ENGINE_MODULES.get(name)
        if module is not None:
            return importlib.import_module(module).ENGINE  # type: ignore[no-any-return]
        engine: Engine = _plugins()[name].load()  # KeyError for an unknown name
        return engine

    def __contains__(self, name: object) -> bool:
        # Mapping's default would import the module to answer.
        return name in ENGINE_MODULES or (isinstance(name, str) and name in _plugins())

    def __iter__(self) -> Iterator[str]:
        yield from ENGINE_MODULES
        yield from _plugins()

    def __len__(self) -> int:
        return len(ENGINE_MODULES) + len(_plugins())


ENGINES: Mapping[str, Engine] = _Registry()
