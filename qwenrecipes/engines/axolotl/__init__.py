"""The axolotl engine: everything qwenrecipes knows about it lives in this folder."""

from qwenrecipes.engines.axolotl.engine import ENGINE

__all__ = ["ENGINE"]
