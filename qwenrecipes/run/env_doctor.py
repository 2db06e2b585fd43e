"""`qwenrecipes env doctor`: check one engine's env step by step (folder, marker, interpreter, imports) and name
the exact command that fixes what is wrong."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qwenrecipes.run.env_health import HEALTH_TIMEOUT_S, Health, check_health, interpreter_runs
from qwenrecipes.run.env_locks import load_lock
from qwenrecipes.run.envs import MARKER, env_root, find_current, list_envs, python_in


@dataclass(frozen=True)
class DoctorReport:
    """What ``doctor`` found for one engine; ``fix`` is the exact command to run when not ok."""

    engine: str
    root: Path
    path: Path | None  # the current env's folder, when one exists
    installed: bool
    marker: bool
    python_runs: bool
    health: Health | None
    stale: list[Path]
    problems: list[str]
    fix: str | None

    @property
    def ok(self) -> bool:
        return not self.problems


def doctor(
    engine: str, *, env_dir: str | os.PathLike[str] | None = None, timeout: float = HEALTH_TIMEOUT_S
) -> DoctorReport:
    """Check one engine's env step by step (folder, marker, interpreter, imports) and name the fix."""
    lock = load_lock(engine)
    root = env_root(env_dir)
    # The fix names --env-dir when the root is not the default one, so it can be pasted as it is.
    env_dir_option = f"--env-dir {root} " if env_dir is not None or os.environ.get("QWENRECIPES_ENV_DIR") else ""
    infos = [i for i in list_envs(env_dir=root) if i.engine == engine]
    stale = [i.path for i in infos if i.status != "current"]
    current = [i for i in infos if i.status == "current"]
    problems: list[str] = []
    if not current:
        incomplete = [i.path for i in infos if i.status == "incomplete"]
        if incomplete:
            problems.append(f"{incomplete[0]} has no {MARKER}: an install did not finish")
        else:
            problems.append(f"not installed (no env for the current lock under {root})")
        if stale:
            problems.append(f"{len(stale)} stale env(s) from older locks: `qwenrecipes env remove {engine} --stale`")
        fix = f"qwenrecipes env {env_dir_option}install {engine}"
        return DoctorReport(engine, root, None, False, False, False, None, stale, problems, fix)

    # Prefer the running interpreter's minor version, as env_for does.
    found = find_current(engine, root, lock, None)
    path = found.path if found else current[0].path
    python = python_in(path)
    why_not = interpreter_runs(python)
    if why_not is not None:
        problems.append(f"its interpreter {python} does not run ({why_not}); the base Python may have moved")
    health: Health | None = None
    if why_not is None:
        health = check_health(engine, path, timeout=timeout)
        if health.status == "failed":
            problems.append(f"health check failed: {health.message}")
    fix = f"qwenrecipes env {env_dir_option}install --force {engine}" if problems else None
    return DoctorReport(engine, root, path, True, True, why_not is None, health, stale, problems, fix)
