"""One engine process under supervision: stream its output (tqdm's ``\r`` redraws included), log it redacted,
normalize it into events, report checkpoints once, and stop it on Ctrl-C, a stall or a hang after a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, TextIO

from qwenrecipes.errors import EngineError
from qwenrecipes.run.events import EVENT_TYPES, Event, Normalizer, decode_line, make_event
from qwenrecipes.run.procgroup import (
    become_subreaper,
    children_of,
    descendants,
    die_with_parent,
    end_tree,
    group_cpu_seconds,
    group_rss_gb,
    killpg,
    signals_to_flag,
)
from qwenrecipes.run.ranks import RankTracebacks, split_rank
from qwenrecipes.run.redact import Redactor
from qwenrecipes.run.rundir import EVENTS_FILE, LOG_FILE, find_checkpoints
from qwenrecipes.run.spec import EventCallback, RunSpec

_MAX_PENDING = 1 << 16  # an unterminated "line" longer than this is flushed as is


class Supervisor:
    """One engine process: stream, log, normalize, watch, stop."""

    def __init__(self, spec: RunSpec, on_event: EventCallback | None) -> None:
        self.spec = spec
        self.on_event = on_event
        self.redactor = Redactor(spec.env)
        self.normalizer = Normalizer(spec.engine, logging_steps=spec.logging_steps, start_step=spec.start_step,
                                     total_steps=spec.total_steps)
        self.ranks = RankTracebacks(spec.engine)  # per-rank tracebacks of a multi-process run (run/ranks.py)
        # Checkpoints are reported once, whether the engine's "Saving model checkpoint to" line or the
        # folder poll sees them first; keyed by the path relative to the run dir.
        self.seen_checkpoints: set[str] = {self._relative(p) for _, p in find_checkpoints(spec.output_dir)}
        self.last_output = time.time()
        self.traceback_at: float | None = None  # when the last traceback line was seen
        self.traceback_cpu: tuple[float, float | None] | None = None  # (window start, group CPU seconds)
        self.kill_reason: str | None = None
        self.pgid: int | None = None
        self.peak_rss_gb: float | None = None
        self.log_tail: list[str] = []
        self.metrics: Event = {}
        self.write_error: str | None = None  # the first log/events write that failed (a full disk)
        self.existing_children: set[int] = set()  # our children from before the engine: not the engine's
        self.log: BinaryIO  # opened by run()
        self.events: TextIO  # opened by run() / execute()

    def _relative(self, path: Path | str) -> str:
        path = Path(path)
        if path.is_absolute():
            with contextlib.suppress(ValueError):
                path = path.relative_to(self.spec.run_dir.resolve())
        return os.path.normpath(path)

    def emit(self, event: Event) -> None:
        if event["type"] == "checkpoint" and event.get("path"):
            key = self._relative(event["path"])
            if key in self.seen_checkpoints:
                return
            self.seen_checkpoints.add(key)
        if event["type"] in EVENT_TYPES:
            stamped = make_event(self.redactor.value(event), t=time.time())
            if self.write_error is None:
                try:
                    self.events.write(json.dumps(stamped, ensure_ascii=False) + "\n")
                    self.events.flush()
                except OSError as exc:
                    self._write_failed(self.spec.run_dir / EVENTS_FILE, exc)
            event = stamped
        elif event["type"] == "metrics":
            self.metrics = event
        if self.on_event is not None:
            self.on_event(event)

    def _write_failed(self, path: Path, exc: OSError) -> None:
        """A full disk (or a vanished run dir): stop writing, and the loop stops the engine, which could not
        save its checkpoints either; the summary names the file."""
        self.write_error = f"could not write {path}: {exc.strerror or exc}; the engine was stopped"

    def handle_line(self, raw: bytes, terminator: bytes) -> None:
        clean = self.redactor.data(raw)
        if self.write_error is None:
            try:
                self.log.write(clean + terminator)  # unbuffered: on disk as it comes, even if `run` is killed
            except OSError as exc:
                self._write_failed(self.spec.run_dir / LOG_FILE, exc)
        text = decode_line(clean)
        if text.strip():
            self.log_tail = [*self.log_tail[-39:], text]
        # Multi-process: events from rank 0 (and the launcher) once; other ranks only keep their tracebacks.
        rank, text = split_rank(text)
        if rank is None:
            self.ranks.feed_launcher(text)
        else:
            self.ranks.feed(rank, text)
            if rank != 0:
                return
        for event in self.normalizer.feed(text):
            if event["type"] == "error":
                self.traceback_at = time.time()
            elif event["type"] in ("train", "eval"):
                self.traceback_at = None  # training went on: that traceback was not fatal
            self.emit(event)
        if self.normalizer.in_traceback:
            self.traceback_at = time.time()

    def _hung_after_traceback(self, pgid: int, now: float) -> bool:
        """A traceback, then `traceback_timeout` seconds with neither output nor CPU use. The CPU test
        matters: engines log non-fatal tracebacks and may then spend minutes silently tokenizing or
        compiling; a process that hangs on a dead kernel or lock sits idle. Busy silence is left to the
        general stall timeout."""
        if self.traceback_at is None:
            self.traceback_cpu = None
            return False
        cpu = group_cpu_seconds(pgid)
        if self.traceback_cpu is None or self.traceback_at > self.traceback_cpu[0]:
            self.traceback_cpu = (self.traceback_at, cpu)
            return False
        window = now - self.traceback_at
        if window <= self.spec.traceback_timeout:
            return False
        if cpu is not None and self.traceback_cpu[1] is not None and cpu - self.traceback_cpu[1] > 0.1 * window:
            # Working, not hung: measure the next window from here.
            self.traceback_at = now
            self.traceback_cpu = (now, cpu)
            return False
        return True

    def poll_checkpoints(self) -> None:
        for step, path in find_checkpoints(self.spec.output_dir):
            if self._relative(path) not in self.seen_checkpoints:
                self.emit({"type": "checkpoint", "step": step, "path": self._relative(path)})

    def run(self) -> tuple[str, int | None]:
        spec = self.spec
        flag: list[int] = []
        become_subreaper()  # setsid descendants stay ours to find and end (procgroup.end_tree)
        self.existing_children = children_of(os.getpid())
        with open(spec.run_dir / LOG_FILE, "ab", buffering=0) as self.log, \
                open(spec.run_dir / EVENTS_FILE, "a", encoding="utf-8") as self.events, \
                signals_to_flag(flag):
            header = (f"\n===== qwenrecipes: {' '.join(spec.argv)} (resume_from={spec.resume_from}) "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n")
            self.log.write(self.redactor.data(header.encode()))
            try:
                process = subprocess.Popen(
                    spec.argv, cwd=spec.run_dir, env=spec.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
            except OSError as exc:
                raise EngineError(f"could not start {spec.argv[0]!r} for {spec.engine}: {exc}; "
                                  f"reinstall the {spec.engine} env") from exc
            try:
                return self._loop(process, flag)
            finally:
                # Whatever happened (an error of ours included), nothing of the engine outlives the run.
                self.end_all(process)

    def end_all(self, process: subprocess.Popen[bytes]) -> None:
        end_tree(self.pgid, exclude=self.existing_children | {process.pid})
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        end_tree(self.pgid, exclude=self.existing_children)

    def kill_tree(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the engine's group and every descendant outside it (a setsid child holding the pipe)."""
        killpg(process.pid, signal.SIGKILL)
        for pid, zombie in descendants(os.getpid(), self.existing_children):
            if not zombie:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _loop(self, process: subprocess.Popen[bytes], flag: list[int]) -> tuple[str, int | None]:
        spec = self.spec
        pgid = self.pgid = process.pid  # start_new_session: the child leads its own group
        chunks: queue.Queue[bytes | None] = queue.Queue()
        assert process.stdout is not None
        fd = process.stdout.fileno()

        def reader() -> None:
            # os.read returns whatever is there: tqdm's \r redraws arrive without waiting for a newline.
            try:
                while chunk := os.read(fd, 65536):
                    chunks.put(chunk)
            except OSError:
                pass
            chunks.put(None)

        threading.Thread(target=reader, daemon=True).start()
        pending = b""
        stop_sent_at: float | None = None
        killed = False
        eof = False
        last_poll = 0.0
        exited_at: float | None = None
        while not eof:
            try:
                chunk = chunks.get(timeout=0.25)
            except queue.Empty:
                chunk = b""
            if chunk is None:
                eof = True
            elif chunk:
                self.last_output = time.time()
                pending += chunk
                parts = re.split(rb"(\r\n|\r|\n)", pending)
                pending = parts[-1]
                for i in range(0, len(parts) - 1, 2):
                    self.handle_line(parts[i], parts[i + 1])
                if len(pending) > _MAX_PENDING:
                    # A line this long is written in pieces, cut where no secret can straddle the cut
                    # (a secret split in two would escape redaction); the rest waits for more output.
                    now_part, pending = self.redactor.split_safe(pending, force=len(pending) > 4 * _MAX_PENDING)
                    if now_part:
                        self.handle_line(now_part, b"")
            now = time.time()
            if now - last_poll >= 1.0:
                last_poll = now
                self.poll_checkpoints()
                rss = group_rss_gb(pgid) if process.poll() is None else None
                if rss:
                    self.peak_rss_gb = max(self.peak_rss_gb or 0.0, rss)
            if process.poll() is not None and not eof:
                # The engine exited but a leftover child (dataloader worker, compile server) may hold the
                # pipe open forever: after a moment to drain, end the group so the read sees EOF.
                exited_at = exited_at or now
                if now - exited_at > 2.0 and (not killed or now - exited_at > 4.0):
                    self.kill_tree(process)  # the group and any setsid descendant holding the pipe
                    killed = True
            if self.kill_reason is None and stop_sent_at is None and process.poll() is None:
                if flag:
                    stop_sent_at = now
                    self.kill_reason = "interrupted"
                    # SIGINT lets HF Trainer raise KeyboardInterrupt and unwind; SIGTERM passes on as is.
                    killpg(pgid, signal.SIGINT if flag[0] == signal.SIGINT else signal.SIGTERM)
                elif self.write_error is not None:
                    self.kill_reason = self.write_error
                    stop_sent_at = now
                    killpg(pgid, signal.SIGTERM)
                elif now - self.last_output > spec.stall_timeout:
                    self.kill_reason = f"stalled: no output for {int(now - self.last_output)} s " \
                                       f"(--stall-timeout {spec.stall_timeout:g})"
                    stop_sent_at = now
                    killpg(pgid, signal.SIGTERM)
                elif self._hung_after_traceback(pgid, now):
                    self.kill_reason = f"hung after a traceback: no output for {int(now - self.last_output)} s"
                    stop_sent_at = now
                    killpg(pgid, signal.SIGTERM)
            # A second Ctrl-C means "now"; otherwise the engine gets the grace period to unwind.
            if (stop_sent_at is not None and not killed and process.poll() is None
                    and (now - stop_sent_at > spec.grace or len(flag) > 1)):
                self.kill_tree(process)
                killed = True
        if pending:
            self.handle_line(pending, b"\n")
        for event in self.normalizer.flush():
            self.emit(event)
        returncode = process.wait()
        end_tree(pgid, exclude=self.existing_children)  # nothing of the engine outlives the run
        self.poll_checkpoints()
        if flag and self.kill_reason is None:
            self.kill_reason = "interrupted"  # the signal came as the engine was finishing anyway
        return ("interrupted" if self.kill_reason == "interrupted" else
                "failed" if self.kill_reason or returncode != 0 else "ok"), returncode
