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
import threading
import time
from pathlib import Path
from typing import BinaryIO, TextIO

from qwenrecipes.errors import EngineError
from qwenrecipes.run.events import EVENT_TYPES, Event, Normalizer, decode_line, make_event
from qwenrecipes.run.procgroup import end_group, group_cpu_seconds, group_rss_gb, killpg, signals_to_flag
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
            self.events.write(json.dumps(stamped, ensure_ascii=False) + "\n")
            self.events.flush()
            event = stamped
        elif event["type"] == "metrics":
            self.metrics = event
        if self.on_event is not None:
            self.on_event(event)

    def handle_line(self, raw: bytes, terminator: bytes) -> None:
        clean = self.redactor.data(raw)
        self.log.write(clean + terminator)
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
        with open(spec.run_dir / LOG_FILE, "ab") as self.log, \
                open(spec.run_dir / EVENTS_FILE, "a", encoding="utf-8") as self.events, \
                signals_to_flag(flag):
            header = (f"\n===== qwenrecipes: {' '.join(spec.argv)} (resume_from={spec.resume_from}) "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n")
            self.log.write(self.redactor.data(header.encode()))
            try:
                process = subprocess.Popen(
                    spec.argv, cwd=spec.run_dir, env=spec.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise EngineError(f"could not start {spec.argv[0]!r} for {spec.engine}: {exc}; "
                                  f"reinstall the {spec.engine} env") from exc
            return self._loop(process, flag)

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
                    self.handle_line(pending, b"\n")
                    pending = b""
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
                if not killed and now - exited_at > 2.0:
                    killpg(pgid, signal.SIGKILL)
                    killed = True
            if self.kill_reason is None and stop_sent_at is None and process.poll() is None:
                if flag:
                    stop_sent_at = now
                    self.kill_reason = "interrupted"
                    # SIGINT lets HF Trainer raise KeyboardInterrupt and unwind; SIGTERM passes on as is.
                    killpg(pgid, signal.SIGINT if flag[0] == signal.SIGINT else signal.SIGTERM)
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
                killpg(pgid, signal.SIGKILL)
                killed = True
        if pending:
            self.handle_line(pending, b"\n")
        for event in self.normalizer.flush():
            self.emit(event)
        returncode = process.wait()
        end_group(pgid)  # nothing of the engine outlives the run
        self.poll_checkpoints()
        if flag and self.kill_reason is None:
            self.kill_reason = "interrupted"  # the signal came as the engine was finishing anyway
        return ("interrupted" if self.kill_reason == "interrupted" else
                "failed" if self.kill_reason or returncode != 0 else "ok"), returncode
