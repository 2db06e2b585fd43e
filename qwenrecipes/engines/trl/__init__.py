"""The trl engine: everything qwenrecipes knows about it lives in this folder."""

from qwenrecipes.engines.trl.engine import ENGINE

__all__ = ["ENGINE"]
