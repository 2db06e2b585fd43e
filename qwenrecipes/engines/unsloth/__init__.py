"""The unsloth engine: everything qwenrecipes knows about it lives in this folder."""

from qwenrecipes.engines.unsloth.engine import ENGINE

__all__ = ["ENGINE"]
