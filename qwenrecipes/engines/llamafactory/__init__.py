"""The llamafactory engine: everything qwenrecipes knows about it lives in this folder."""

from qwenrecipes.engines.llamafactory.engine import ENGINE

__all__ = ["ENGINE"]
