"""What one supervised engine run needs (``RunSpec``: command, environment, run dir, timeouts) and what it
returns (``RunResult``); built by ``runner.prepare_run`` from a recipe, or by bench and tests directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.run.events import Event

DEFAULT_STALL_TIMEOUT = 600.0
DEFAULT_TRACEBACK_TIMEOUT = 60.0
DEFAULT_GRACE = 15.0

EventCallback = Callable[[Event], None]


@dataclass
class RunSpec:
    """Everything `execute` needs; built by `prepare_run` from a recipe, or by tests for a fake engine."""

    run_dir: Path
    engine: str
    argv: list[str]
    env: dict[str, str]
    output_dir: Path
    logging_steps: int = 1
    total_steps: int | None = None
    recipe_name: str = ""
    recipe_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    resume_from: str | None = None
    start_step: int = 0
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    traceback_timeout: float = DEFAULT_TRACEBACK_TIMEOUT
    grace: float = DEFAULT_GRACE
    warnings: list[str] = field(default_factory=list)
    # --resume of a run that already finished: why it is done (execute then runs nothing and writes nothing).
    finished: str | None = None
    # The run dir's lock (run/lock.py) taken by prepare_run; execute takes it when None and releases it.
    lock: int | None = None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str  # "ok" | "failed" | "interrupted"
    summary: dict[str, Any]

    @property
    def resumable(self) -> bool:
        """A complete checkpoint exists: --resume continues; without one only --force starts over."""
        artifacts = self.summary.get("artifacts")
        return bool(isinstance(artifacts, dict) and artifacts.get("checkpoints"))

    @property
    def next_step(self) -> str:
        """The flag that works after an interruption, with what it does."""
        return ("--resume  (continues from the last checkpoint)" if self.resumable else
                "--force  (no checkpoint was saved yet, so the run starts over)")
