"""The swift (ms-swift) engine: everything qwenrecipes knows about it lives in this folder."""

from qwenrecipes.engines.swift.engine import ENGINE

__all__ = ["ENGINE"]
