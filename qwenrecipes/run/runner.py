"""Run one recipe on one engine: render into a run dir, supervise the engine process, normalize its
output into events.jsonl, and leave a summary.json whatever happens (ok, failed, interrupted).

A run dir holds:
  .qwenrecipes-run.json   marker: only folders with it are ever deleted by --force
  engine.log              the engine's raw output (secrets redacted), appended across resumes
  events.jsonl            normalized events (see events.py), appended across resumes
  summary.json            written atomically at the end of every invocation
  ... the rendered engine files, data/ and the engine's output dir (checkpoints, adapter)

Library code: no printing, no sys.exit. Progress reaches the caller through ``on_event``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.run import doctor
from qwenrecipes.run.events import (
    EVENT_TYPES,
    Event,
    Normalizer,
    decode_line,
    make_event,
    read_events,
)

MARKER_FILE = ".qwenrecipes-run.json"
LOG_FILE = "engine.log"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
SUPERSEDED_FILE = "events.superseded.jsonl"
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
# Token-shaped strings are redacted even when they did not come from our environment (an engine may
# read ~/.cache/huggingface/token and echo it).
_TOKEN_RE = re.compile(rb"\bhf_[A-Za-z0-9]{20,}\b")
REDACTED = "***"

DEFAULT_STALL_TIMEOUT = 600.0
DEFAULT_TRACEBACK_TIMEOUT = 60.0
DEFAULT_GRACE = 15.0
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_MAX_PENDING = 1 << 16  # an unterminated "line" longer than this is flushed as is

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


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str  # "ok" | "failed" | "interrupted"
    summary: dict[str, Any]


# --------------------------------------------------------------------------------------------- secrets


class Redactor:
    """Replaces secret values (from the environment the engine gets) in bytes and text."""

    def __init__(self, env: dict[str, str]) -> None:
        # Short values would redact ordinary words; real tokens are long.
        values = {env[n] for n in SECRET_NAMES if len(env.get(n, "")) >= 6}
        self._values = sorted((v.encode() for v in values), key=len, reverse=True)

    def data(self, raw: bytes) -> bytes:
        for value in self._values:
            raw = raw.replace(value, REDACTED.encode())
        return _TOKEN_RE.sub(REDACTED.encode(), raw)

    def text(self, text: str) -> str:
        return self.data(text.encode("utf-8", errors="surrogateescape")).decode("utf-8", errors="replace")

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


# ------------------------------------------------------------------------------------------ run dirs


def default_run_dir(recipe_name: str, engine: str) -> Path:
    return Path("runs") / f"{recipe_name}-{engine}"


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    marker = run_dir / MARKER_FILE
    if not marker.is_file() or marker.is_symlink():
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and value.get("kind") == "qwenrecipes-run" else None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and read_marker(path) is not None


def remove_run_dir(run_dir: Path) -> None:
    """--force: delete a previous run. Only ever a real folder carrying our marker, never the folder we
    stand in or one above it, so a mistyped --run-dir cannot wipe unrelated work."""
    if not is_run_dir(run_dir):
        raise QwenRecipesError(
            f"{run_dir} is not a qwenrecipes run dir (no {MARKER_FILE}); --force only deletes runs: "
            "choose another --run-dir or move the folder away yourself")
    resolved, cwd = run_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise QwenRecipesError(f"refusing to delete {run_dir}: it holds the current directory; cd elsewhere first")
    shutil.rmtree(resolved)


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def find_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """checkpoint-N folders under output_dir, by step. A folder without trainer_state.json is still being
    written (or was cut off by a kill) and cannot be resumed from, so it is left out."""
    found: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in output_dir.iterdir():
            match = _CHECKPOINT_RE.match(entry.name)
            if match and entry.is_dir() and (entry / "trainer_state.json").is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def find_artifacts(run_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Adapters (folders with adapter_model.safetensors), full models and checkpoints, relative to run_dir."""
    adapters: list[str] = []
    models: list[str] = []
    if output_dir.is_dir():
        for path in sorted(output_dir.rglob("adapter_model.safetensors")):
            adapters.append(str(path.parent.relative_to(run_dir)))
        for path in sorted(output_dir.rglob("model*.safetensors")):
            models.append(str(path.parent.relative_to(run_dir)))
    checkpoints = [str(p.relative_to(run_dir)) for _, p in find_checkpoints(output_dir)]
    final_adapters = [a for a in adapters if not _CHECKPOINT_RE.match(Path(a).name)]
    return {
        "adapter_dir": final_adapters[-1] if final_adapters else None,
        "adapter_dirs": adapters,
        "model_dirs": sorted(set(models)),
        "checkpoints": checkpoints,
    }


# ------------------------------------------------------------------------------------------- prepare


def recipe_hash(resolved_text: str) -> str:
    return hashlib.sha256(resolved_text.encode("utf-8")).hexdigest()


def claim_run_dir(run_dir: Path, engine: str, digest: str, output_dir: Path, *, resume: bool,
                  force: bool) -> tuple[str | None, int]:
    """Decide what happens to an existing run dir before anything is written into it.

    Returns (checkpoint to resume from relative to run_dir, its step), or (None, 0) for a fresh run.
    """
    if resume and force:
        raise QwenRecipesError("--resume and --force contradict each other: --resume continues the run, "
                               "--force deletes it; pass one")
    if resume:
        marker = read_marker(run_dir) if run_dir.is_dir() else None
        if marker is None:
            raise QwenRecipesError(f"nothing to resume in {run_dir}: it is not a qwenrecipes run dir; "
                                   "run without --resume to start")
        if marker.get("engine") != engine:
            raise QwenRecipesError(f"{run_dir} is a {marker.get('engine')} run, not {engine}: resume it with "
                                   f"--engine {marker.get('engine')}, or pick another --run-dir")
        if marker.get("recipe_hash") != digest:
            raise QwenRecipesError(f"the recipe changed since {run_dir} was started, so its checkpoints do not "
                                   "match it: use --force to start over, or another --run-dir")
        checkpoints = find_checkpoints(output_dir)
        if not checkpoints:
            raise QwenRecipesError(f"no complete checkpoint-N under {output_dir} to resume from: "
                                   "use --force to start over")
        start_step, checkpoint = checkpoints[-1]
        _truncate_events_after(run_dir, start_step)
        return str(checkpoint.relative_to(run_dir)), start_step
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise QwenRecipesError(f"{run_dir} exists and is not a plain folder: choose another --run-dir")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not force:
            hint = ("pass --resume to continue it or --force to delete it and start over"
                    if is_run_dir(run_dir) else
                    "it is not a qwenrecipes run, so --force will not delete it: choose another --run-dir")
            raise QwenRecipesError(f"run dir {run_dir} is not empty: {hint}")
        remove_run_dir(run_dir)
    return None, 0


def prepare_run(recipe_path: str | Path, engine: str, *, run_dir: Path | None = None, resume: bool = False,
                force: bool = False, target: str | None = None, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                traceback_timeout: float = DEFAULT_TRACEBACK_TIMEOUT, grace: float = DEFAULT_GRACE) -> RunSpec:
    """Plan and render the recipe into the run dir, and decide the command (fresh or resumed)."""
    from qwenrecipes.recipe.plan import plan_recipe
    from qwenrecipes.render.folder import get_engine, render_plan, resolved_recipe_text, write_rendered
    from qwenrecipes.run import envs

    plan = plan_recipe(recipe_path, target=target)
    engine_obj = get_engine(engine)
    run_dir = run_dir or default_run_dir(plan.recipe.name, engine)
    digest = recipe_hash(resolved_recipe_text(plan))
    output_dir = run_dir / plan.recipe.output["dir"]
    engine_env = envs.env_for(engine)  # raises with the install hint when the env is missing

    resume_from, start_step = claim_run_dir(run_dir, engine, digest, output_dir, resume=resume, force=force)
    rendered = render_plan(plan, engine)
    write_rendered(plan, rendered, run_dir)
    if not resume:
        write_json_atomic(run_dir / MARKER_FILE, {
            "kind": "qwenrecipes-run", "engine": engine, "recipe": plan.recipe.name,
            "recipe_source": str(Path(recipe_path).resolve()), "recipe_hash": digest, "created": time.time()})
    argv = engine_obj.command(plan, resume_from=resume_from) if resume_from else list(rendered.argv)
    # bin/ first on PATH, telemetry off (envs.base_environment), then the engine's own variables; our
    # environment underneath so secrets (HF_TOKEN, WANDB_API_KEY) reach the engine without touching a file.
    env = engine_env.run_environment(rendered.environment, wandb=plan.recipe.output["report_to"] == "wandb")
    env["PYTHONUNBUFFERED"] = "1"  # line-by-line output, or the watchdog sees silence that isn't there
    return RunSpec(
        run_dir=run_dir, engine=engine, argv=argv, env=env,
        output_dir=output_dir, logging_steps=int(plan.recipe.training["logging_steps"] or 1),
        total_steps=plan.max_steps, recipe_name=plan.recipe.name, recipe_hash=digest,
        versions=dict(engine_env.versions), resume_from=resume_from, start_step=start_step,
        stall_timeout=stall_timeout, traceback_timeout=traceback_timeout, grace=grace, warnings=list(rendered.warnings))


def _truncate_events_after(run_dir: Path, step: int) -> None:
    """Resuming from checkpoint-N replays steps N+1...: move their old events aside so every step appears
    once in events.jsonl (kept in events.superseded.jsonl, not deleted)."""
    path = run_dir / EVENTS_FILE
    events = read_events(path)
    keep = [e for e in events if not (isinstance(e.get("step"), int) and e["step"] > step)]
    gone = [e for e in events if isinstance(e.get("step"), int) and e["step"] > step]
    if gone:
        with open(run_dir / SUPERSEDED_FILE, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in gone)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in keep), encoding="utf-8")
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------- execute


@contextlib.contextmanager
def _signals_to_flag(flag: list[int]) -> Iterator[None]:
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


def _killpg(pgid: int, sig: int) -> bool:
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


def _end_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGKILL whatever is left of the engine's group and wait until it is gone."""
    deadline = time.time() + timeout
    while _killpg(pgid, signal.SIGKILL) and group_alive(pgid) and time.time() < deadline:
        time.sleep(0.05)


def _group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds used so far by the live processes of a group; None off Linux."""
    if not os.path.isdir("/proc/self"):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of /proc/pid/stat, index 11 and 12 after the command name.
    return sum(int(f[11]) + int(f[12]) for _, f in _proc_stats() if len(f) > 12 and int(f[2]) == pgid) / ticks


def _group_rss_gb(pgid: int) -> float | None:
    """Resident memory of the whole engine process group; None where /proc is unreadable."""
    page = os.sysconf("SC_PAGE_SIZE")
    # rss is field 24 of /proc/pid/stat, index 21 after the command name.
    total = sum(int(f[21]) * page for _, f in _proc_stats() if len(f) > 21 and int(f[2]) == pgid)
    return total / 1024**3 if total else None


class _Supervisor:
    """One engine process: stream, log, normalize, watch, stop."""

    def __init__(self, spec: RunSpec, on_event: EventCallback | None) -> None:
        self.spec = spec
        self.on_event = on_event
        self.redactor = Redactor(spec.env)
        self.normalizer = Normalizer(spec.engine, logging_steps=spec.logging_steps, start_step=spec.start_step,
                                     total_steps=spec.total_steps)
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
        cpu = _group_cpu_seconds(pgid)
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
                _signals_to_flag(flag):
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
                rss = _group_rss_gb(pgid) if process.poll() is None else None
                if rss:
                    self.peak_rss_gb = max(self.peak_rss_gb or 0.0, rss)
            if process.poll() is not None and not eof:
                # The engine exited but a leftover child (dataloader worker, compile server) may hold the
                # pipe open forever: after a moment to drain, end the group so the read sees EOF.
                exited_at = exited_at or now
                if not killed and now - exited_at > 2.0:
                    _killpg(pgid, signal.SIGKILL)
                    killed = True
            if self.kill_reason is None and stop_sent_at is None and process.poll() is None:
                if flag:
                    stop_sent_at = now
                    self.kill_reason = "interrupted"
                    # SIGINT lets HF Trainer raise KeyboardInterrupt and unwind; SIGTERM passes on as is.
                    _killpg(pgid, signal.SIGINT if flag[0] == signal.SIGINT else signal.SIGTERM)
                elif now - self.last_output > spec.stall_timeout:
                    self.kill_reason = f"stalled: no output for {int(now - self.last_output)} s " \
                                       f"(--stall-timeout {spec.stall_timeout:g})"
                    stop_sent_at = now
                    _killpg(pgid, signal.SIGTERM)
                elif self._hung_after_traceback(pgid, now):
                    self.kill_reason = f"hung after a traceback: no output for {int(now - self.last_output)} s"
                    stop_sent_at = now
                    _killpg(pgid, signal.SIGTERM)
            # A second Ctrl-C means "now"; otherwise the engine gets the grace period to unwind.
            if (stop_sent_at is not None and not killed and process.poll() is None
                    and (now - stop_sent_at > spec.grace or len(flag) > 1)):
                _killpg(pgid, signal.SIGKILL)
                killed = True
        if pending:
            self.handle_line(pending, b"\n")
        for event in self.normalizer.flush():
            self.emit(event)
        returncode = process.wait()
        _end_group(pgid)  # nothing of the engine outlives the run
        self.poll_checkpoints()
        if flag and self.kill_reason is None:
            self.kill_reason = "interrupted"  # the signal came as the engine was finishing anyway
        return ("interrupted" if self.kill_reason == "interrupted" else
                "failed" if self.kill_reason or returncode != 0 else "ok"), returncode


def execute(spec: RunSpec, on_event: EventCallback | None = None) -> RunResult:
    """Run the engine command in the run dir, supervised; always writes summary.json."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = _Supervisor(spec, on_event)
    started = time.time()
    previous = read_summary(spec.run_dir) if spec.resume_from else None
    with open(spec.run_dir / EVENTS_FILE, "a", encoding="utf-8") as supervisor.events:
        supervisor.emit({"type": "start", "engine": spec.engine, "argv": spec.argv, "resume_from": spec.resume_from,
                         "start_step": spec.start_step, "total_steps": spec.total_steps, "versions": spec.versions,
                         "recipe_hash": spec.recipe_hash})
        for warning in spec.warnings:
            supervisor.emit({"type": "warning", "message": warning, "source": "qwenrecipes"})
    status, returncode = supervisor.run()
    ended = time.time()
    summary = build_summary(spec, supervisor, status=status, returncode=returncode, started=started, ended=ended,
                            previous=previous)
    with open(spec.run_dir / EVENTS_FILE, "a", encoding="utf-8") as supervisor.events:
        supervisor.emit({"type": "end", "status": status, "returncode": returncode,
                         "wall_time_s": round(ended - started, 3), "steps": summary.get("steps"),
                         **({"message": summary["error"]["reason"]} if summary.get("error") else {}),
                         **{k: v for k, v in supervisor.metrics.items() if k != "type"}})
    write_json_atomic(spec.run_dir / SUMMARY_FILE, supervisor.redactor.value(summary))
    return RunResult(spec.run_dir, status, summary)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's summary.json, or None while it runs (or when it was killed before writing one, or is damaged)."""
    try:
        value = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _numbers(events: list[Event], key: str) -> list[float]:
    return [e[key] for e in events if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)]


def build_summary(spec: RunSpec, supervisor: _Supervisor, *, status: str, returncode: int | None, started: float,
                  ended: float, previous: dict[str, Any] | None) -> dict[str, Any]:
    events = read_events(spec.run_dir / EVENTS_FILE)
    train = sorted((e for e in events if e.get("type") == "train" and isinstance(e.get("step"), int)),
                   key=lambda e: e["step"])
    losses = _numbers(train, "loss")
    evals = _numbers([e for e in events if e.get("type") == "eval"], "eval_loss")
    this_run = [e for e in train if e.get("t", 0) >= started]
    steps_per_s = supervisor.metrics.get("steps_per_s")
    if steps_per_s is None and len(this_run) >= 2 and this_run[-1]["t"] > this_run[0]["t"]:
        steps_per_s = (this_run[-1]["step"] - this_run[0]["step"]) / (this_run[-1]["t"] - this_run[0]["t"])
    tokens_per_s: float | None = None
    reported = _numbers(this_run, "tokens_per_s")
    seen = [e for e in this_run if isinstance(e.get("tokens_seen"), (int, float))]
    if reported:
        tokens_per_s = sum(reported) / len(reported)
    elif len(seen) >= 2 and seen[-1]["t"] > seen[0]["t"]:
        tokens_per_s = (seen[-1]["tokens_seen"] - seen[0]["tokens_seen"]) / (seen[-1]["t"] - seen[0]["t"])
    # Axolotl reports 0.0 GiB on CPU (no accelerator memory): that is "unknown", not a measurement.
    memory = [m for m in _numbers(train, "memory_gb") if m > 0]
    previous_wall = float(previous.get("total_wall_time_s") or previous.get("wall_time_s") or 0) if previous else 0.0
    summary: dict[str, Any] = {
        "schema": 1,
        "engine": spec.engine,
        "versions": spec.versions,
        "recipe": spec.recipe_name,
        "recipe_hash": spec.recipe_hash,
        "status": status,
        "returncode": returncode,
        "pgid": supervisor.pgid,  # the engine's process group, all of it ended before this was written
        "started": round(started, 3),
        "ended": round(ended, 3),
        "wall_time_s": round(ended - started, 3),
        "total_wall_time_s": round(previous_wall + ended - started, 3),
        "resumed_from": spec.resume_from,
        "steps": train[-1]["step"] if train else spec.start_step or 0,
        "total_steps": spec.total_steps,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
        "final_eval_loss": evals[-1] if evals else None,
        "tokens_per_s": round(tokens_per_s, 3) if tokens_per_s else None,
        "steps_per_s": round(steps_per_s, 4) if steps_per_s else None,
        "peak_memory_gb": max(memory) if memory else None,
        "peak_host_rss_gb": round(supervisor.peak_rss_gb, 3) if supervisor.peak_rss_gb else None,
        "artifacts": find_artifacts(spec.run_dir, spec.output_dir),
        "error": None,
    }
    if status == "failed":
        summary["error"] = _error_info(supervisor, returncode)
    elif status == "interrupted":
        summary["error"] = {"reason": "interrupted (Ctrl-C or SIGTERM); continue with --resume"}
    return summary


def _error_info(supervisor: _Supervisor, returncode: int | None) -> dict[str, Any]:
    traceback = supervisor.normalizer.last_traceback
    tail = "\n".join(supervisor.log_tail[-20:])
    text = traceback or tail
    diagnosis = doctor.classify(f"{traceback or ''}\n{tail}")
    reason = supervisor.kill_reason or f"engine exited with code {returncode}"
    return {"reason": reason, "text": text, "class": diagnosis.name if diagnosis else None,
            "fix": diagnosis.fix if diagnosis else None}


def run_recipe(recipe_path: str | Path, engine: str, *, run_dir: Path | None = None, resume: bool = False,
               force: bool = False, target: str | None = None, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
               traceback_timeout: float = DEFAULT_TRACEBACK_TIMEOUT, grace: float = DEFAULT_GRACE,
               on_event: EventCallback | None = None) -> RunResult:
    """`qwenrecipes run`: prepare the run dir, then run the engine under supervision."""
    spec = prepare_run(recipe_path, engine, run_dir=run_dir, resume=resume, force=force, target=target,
                       stall_timeout=stall_timeout, traceback_timeout=traceback_timeout, grace=grace)
    return execute(spec, on_event)
