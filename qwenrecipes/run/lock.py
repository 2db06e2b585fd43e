"""One `qwenrecipes run` per run dir at a time: an exclusive flock on ``<run dir>/.qwenrecipes-run.lock``.

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a stale lock never
needs clearing by hand. The lock file stays in the run dir across ``--force`` (which deletes everything else):
deleting it would let a second process lock a fresh file while the first still holds the old one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from qwenrecipes.errors import QwenRecipesError

LOCK_FILE = ".qwenrecipes-run.lock"


def lock_run_dir(run_dir: Path) -> int:
    """Create run_dir if needed and lock it; returns the lock's file descriptor (release with `unlock`).

    Raises QwenRecipesError (exit 2) naming the holder's pid when another process holds it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise QwenRecipesError(f"cannot lock run dir {run_dir}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise QwenRecipesError(
            f"run dir {run_dir} is in use by another qwenrecipes run (pid {holder}): wait for it to end, "
            "stop it, or choose another --run-dir") from None
    with contextlib.suppress(OSError):  # the pid is only for the message above
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the last descriptor of the open file releases the flock


def _holder(fd: int) -> str:
    # The holder writes its pid just after taking the lock: give it a moment rather than report "unknown".
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        except OSError:
            return "unknown"
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"
