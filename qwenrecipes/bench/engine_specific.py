"""The bench's engine-specific knowledge, kept together in one place: which distribution carries each engine's
version, the module form of each engine's console script (for offline bundles), the baseline engine of the report,
and which engine logs its own peak memory. Everything else under bench/ names no engine. (Issue 11: these lines
become engine hooks in engines/<name>/.)"""

from __future__ import annotations

from typing import Any

# The engine whose rows are the "vs" baseline of the report (vanilla TRL/PEFT).
BASELINE_ENGINE = "trl"
# Distributions whose versions go into each row: the engine's own first (``engine_distribution``).
ENGINE_DISTRIBUTIONS = {"axolotl": "axolotl", "llamafactory": "llamafactory", "trl": "trl", "unsloth": "unsloth"}
# Console scripts an offline bundle does not have (it is unzipped wheels): the same entry points as modules.
CONSOLE_MODULES = {"axolotl": "axolotl.cli.main", "llamafactory-cli": "llamafactory.cli",
                   "accelerate": "accelerate.commands.accelerate_cli", "trl": "trl.cli"}


def engine_distribution(engine: str) -> str:
    """The distribution whose version is the engine's version."""
    return ENGINE_DISTRIBUTIONS.get(engine, engine)


def engine_logged_memory_gib(metrics: dict[str, Any]) -> float | None:
    """The peak torch max_allocated the engine logged itself (Axolotl logs it per logging step, and resets torch's
    peak counters as it does, so the shim's exit hook alone can under-report)."""
    value: float | None = metrics.get("engine_logged_memory_gib")
    return value
