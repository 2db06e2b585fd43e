"""The engine registry: name -> engine object. One module per engine (see base.Engine)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwenrecipes.engines.base import Engine

# name -> module exporting ENGINE. The order is the order engines are listed and rendered in.
ENGINE_MODULES: dict[str, str] = {
    "axolotl": "qwenrecipes.engines.axolotl",
    "llamafactory": "qwenrecipes.engines.llamafactory",
    "unsloth": "qwenrecipes.engines.unsloth",
    "trl": "qwenrecipes.engines.trl",
}


class _Registry(Mapping[str, "Engine"]):
    """A read-only mapping that imports an engine's module on first lookup: `render -e trl` does not compile
    the other three engines' modules (noticeable at process start, where every import counts)."""

    def __getitem__(self, name: str) -> Engine:
        return importlib.import_module(ENGINE_MODULES[name]).ENGINE  # KeyError for an unknown name

    def __contains__(self, name: object) -> bool:
        return name in ENGINE_MODULES  # Mapping's default would import the module to answer

    def __iter__(self) -> Iterator[str]:
        return iter(ENGINE_MODULES)

    def __len__(self) -> int:
        return len(ENGINE_MODULES)


ENGINES: Mapping[str, Engine] = _Registry()
