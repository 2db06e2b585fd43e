"""The engine's process group, seen and ended from outside: its live members, CPU time and resident memory (from
/proc), signals to the whole group, and Ctrl-C / SIGTERM turned into a flag while the engine runs."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def signals_to_flag(flag: list[int]) -> Iterator[None]:
    """While the engine runs, Ctrl-C / SIGTERM only set a flag: the loop then stops the engine's whole
    process group and still writes the summary. Only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        flag.append(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, fields of /proc/pid/stat after the command name) for every process; nothing off Linux."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(entry), fields


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a group. Zombies are left out: an orphan's zombie waits for
    whatever PID 1 is to reap it and holds no resources."""
    # fields: state ppid pgrp ...
    return [pid for pid, f in _proc_stats() if len(f) > 2 and int(f[2]) == pgid and f[0] not in (b"Z", b"X")]


def group_alive(pgid: int) -> bool:
    """Whether any live process of the group still exists."""
    if os.path.isdir("/proc/self"):
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)  # signal 0 probes without sending anything
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGKILL whatever is left of the engine's group and wait until it is gone."""
    deadline = time.time() + timeout
    while killpg(pgid, signal.SIGKILL) and group_alive(pgid) and time.time() < deadline:
        time.sleep(0.05)


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds used so far by the live processes of a group; None off Linux."""
    if not os.path.isdir("/proc/self"):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of /proc/pid/stat, index 11 and 12 after the command name.
    return sum(int(f[11]) + int(f[12]) for _, f in _proc_stats() if len(f) > 12 and int(f[2]) == pgid) / ticks


def group_rss_gb(pgid: int) -> float | None:
    """Resident memory of the whole engine process group; None where /proc is unreadable."""
    page = os.sysconf("SC_PAGE_SIZE")
    # rss is field 24 of /proc/pid/stat, index 21 after the command name.
    total = sum(int(f[21]) * page for _, f in _proc_stats() if len(f) > 21 and int(f[2]) == pgid)
    return total / 1024**3 if total else None
