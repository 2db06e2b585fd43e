"""The engine's process group, seen and ended from outside: its live members, CPU time and resident memory (from
/proc), signals to the whole group, Ctrl-C / SIGTERM turned into a flag while the engine runs, and the whole
process tree (setsid descendants included) ended when it is over."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
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


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Before the engine starts (data preparation), SIGTERM interrupts like Ctrl-C does, so the caller's
    cleanup and summary run instead of the process vanishing mid-write. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


# ------------------------------------------------------------------------------------------ process tree
# The engine's process group is not all of it: a descendant may call setsid (a compile server, a daemonized
# data worker) and leave the group. Becoming a child subreaper makes such orphans ours instead of PID 1's,
# so walking /proc from our pid finds every one of them, and `end_tree` ends them all.
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux); False where that is not possible."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> None:
    """preexec_fn of the engine: SIGKILL it when `run` itself dies, even by SIGKILL (Linux)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def children_of(pid: int) -> set[int]:
    return {p for p, f in _proc_stats() if len(f) > 1 and int(f[1]) == pid}


def descendants(root: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, bool]]:
    """(pid, is a zombie) of every descendant of `root`, leaving out the subtrees rooted at `exclude`."""
    parent: dict[int, list[tuple[int, bool]]] = {}
    for pid, fields in _proc_stats():
        if len(fields) > 1:
            parent.setdefault(int(fields[1]), []).append((pid, fields[0] in (b"Z", b"X")))
    found: list[tuple[int, bool]] = []
    todo = [root]
    while todo:
        for pid, zombie in parent.get(todo.pop(), []):
            if pid not in exclude and pid != root:
                found.append((pid, zombie))
                todo.append(pid)
    return found


def end_tree(pgid: int | None, exclude: set[int] | frozenset[int] = frozenset(), timeout: float = 5.0) -> None:
    """SIGKILL the engine's group and every other descendant of this process but the subtrees in `exclude`
    (children that were here before the engine), reap those re-parented to us, and wait until all are gone."""
    me = os.getpid()
    deadline = time.time() + timeout
    while True:
        tree = descendants(me, exclude)
        alive = [pid for pid, zombie in tree if not zombie]
        if pgid is not None:
            alive += [pid for pid in group_members(pgid) if pid not in alive]
            killpg(pgid, signal.SIGKILL)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid, _ in tree:  # orphans re-parented to us (subreaper) are ours to reap
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if not alive or time.time() > deadline:
            return
        time.sleep(0.05)
