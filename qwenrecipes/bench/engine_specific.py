"""The bench's questions about engines, answered by the engines themselves (``Engine.env.package``,
``Engine.console_modules``): which distribution carries an engine's version, and the module form of a console
script (offline bundles are unzipped wheels, without scripts). Everything else under bench/ names no engine."""

from __future__ import annotations

from typing import Any

from qwenrecipes.engines import ENGINES

# The engine whose rows are the "vs" baseline of the report: vanilla TRL/PEFT, the plainest Trainer setup.
BASELINE_ENGINE = "trl"


def engine_distribution(engine: str) -> str:
    """The distribution whose version is the engine's version."""
    return ENGINES[engine].env.package if engine in ENGINES else engine


def console_module(script: str) -> str | None:
    """The module a console script runs (`python -m` form), from any engine that declares it."""
    for name in ENGINES:
        module = ENGINES[name].console_modules.get(script)
        if module is not None:
            return module
    return None


def engine_logged_memory_gib(metrics: dict[str, Any]) -> float | None:
    """The peak torch max_allocated the engine logged itself (an engine may log it per logging step and reset
    torch's peak counters as it does, so the shim's exit hook alone can under-report)."""
    value: float | None = metrics.get("engine_logged_memory_gib")
    return value
