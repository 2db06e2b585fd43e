"""The engine registry: name -> engine object. One module per engine (see base.Engine)."""

from __future__ import annotations

from qwenrecipes.engines import axolotl, llamafactory, trl, unsloth
from qwenrecipes.engines.base import Engine

ENGINES: dict[str, Engine] = {
    "axolotl": axolotl.ENGINE,
    "llamafactory": llamafactory.ENGINE,
    "unsloth": unsloth.ENGINE,
    "trl": trl.ENGINE,
}
