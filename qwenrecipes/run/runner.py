"""Run one recipe on one engine: render into a run dir (fresh, resumed from its last checkpoint, or replacing a
previous run), supervise the engine process, normalize its output into events.jsonl, and leave a summary.json
whatever happens (ok, failed, interrupted). The run dir's layout is in ``rundir``.

Library code: no printing, no sys.exit. Progress reaches the caller through ``on_event``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.run.events import parse_event_line
from qwenrecipes.run.lock import LOCK_FILE, lock_run_dir, unlock
from qwenrecipes.run.procgroup import sigterm_interrupts
from qwenrecipes.run.rundir import (
    EVENTS_FILE,
    MARKER_FILE,
    SUMMARY_FILE,
    SUPERSEDED_FILE,
    default_run_dir,
    find_checkpoints,
    has_marker_file,
    is_empty_run_dir,
    read_marker,
    remove_run_dir,
    write_json_atomic,
)
from qwenrecipes.run.spec import (
    DEFAULT_GRACE,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TRACEBACK_TIMEOUT,
    EventCallback,
    RunResult,
    RunSpec,
)
from qwenrecipes.run.summary import build_summary, read_summary
from qwenrecipes.run.supervisor import Supervisor

CONTRADICTION = "--resume and --force contradict each other: --resume continues the run, --force deletes it; pass one"
# Space kept free for summary.json and the last event, given back just before they are written: a disk that
# fills up during the run still gets its summary.
RESERVE_FILE = ".qwenrecipes-reserve"
RESERVE_BYTES = 1 << 16


def recipe_hash(resolved_text: str) -> str:
    return hashlib.sha256(resolved_text.encode("utf-8")).hexdigest()


def claim_run_dir(run_dir: Path, engine: str, digest: str, output_dir: Path, *, resume: bool,
                  force: bool) -> tuple[str | None, int]:
    """Decide what happens to an existing run dir before anything is written into it.

    Returns (checkpoint to resume from relative to run_dir, its step), or (None, 0) for a fresh run.
    """
    if resume and force:
        raise QwenRecipesError(CONTRADICTION)
    if resume:
        problems: list[str] = []
        marker = read_marker(run_dir, problems) if run_dir.is_dir() else None
        if marker is None and has_marker_file(run_dir):
            raise QwenRecipesError(f"cannot resume {run_dir}: {'; '.join(problems) or 'its marker is damaged'}; "
                                   "use --force to start over")
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
    if run_dir.is_dir() and not is_empty_run_dir(run_dir):
        if not force:
            if not has_marker_file(run_dir):
                hint = "it is not a qwenrecipes run, so --force will not delete it: choose another --run-dir"
            elif find_checkpoints(output_dir):
                hint = "pass --resume to continue it or --force to delete it and start over"
            else:
                hint = "it holds a run with no checkpoint to resume from: pass --force to delete it and start over"
            raise QwenRecipesError(f"run dir {run_dir} is not empty: {hint}")
        remove_run_dir(run_dir)
    return None, 0


def refuse_before_locking(run_dir: Path, *, resume: bool, force: bool) -> None:
    """What can be refused without writing anything, checked before the lock file is created in run_dir: a
    foreign folder is never written into (claim_run_dir checks again, under the lock)."""
    if resume and force:
        raise QwenRecipesError(CONTRADICTION)
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise QwenRecipesError(f"{run_dir} exists and is not a plain folder: choose another --run-dir")
    if resume and not has_marker_file(run_dir):
        raise QwenRecipesError(f"nothing to resume in {run_dir}: it is not a qwenrecipes run dir; "
                               "run without --resume to start")
    # A folder holding our lock file is ours even before its marker is written: a second `run` racing the first
    # into a new dir must reach the lock and be told who holds it, not be called foreign.
    lock_file = run_dir / LOCK_FILE
    ours = lock_file.is_file() and not lock_file.is_symlink()
    if run_dir.is_dir() and not ours and not has_marker_file(run_dir) and not is_empty_run_dir(run_dir):
        raise QwenRecipesError(f"run dir {run_dir} is not empty: it is not a qwenrecipes run, so --force will not "
                               "delete it: choose another --run-dir")


def finished_run(run_dir: Path, output_dir: Path, total_steps: int | None) -> str | None:
    """Why a run needs no --resume (its last invocation ended ok, or a checkpoint at the last step exists);
    None when there is something left to train. Resuming a finished run would train one step past its end."""
    summary = read_summary(run_dir) or {}
    steps = summary.get("steps")
    if summary.get("status") == "ok":
        return f"it ended ok at step {steps}/{summary.get('total_steps') or '?'}"
    checkpoints = find_checkpoints(output_dir)
    if total_steps and checkpoints and checkpoints[-1][0] >= total_steps:
        return f"its checkpoint at step {checkpoints[-1][0]} is the last of {total_steps} steps"
    return None


def prepare_run(recipe_path: str | Path, engine: str, *, run_dir: Path | None = None, resume: bool = False,
                force: bool = False, target: str | None = None, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                traceback_timeout: float = DEFAULT_TRACEBACK_TIMEOUT, grace: float = DEFAULT_GRACE) -> RunSpec:
    """Plan and render the recipe into the run dir, and decide the command (fresh or resumed)."""
    from qwenrecipes.recipe.plan import plan_recipe
    from qwenrecipes.render.folder import get_engine, render_plan, resolved_recipe_text, write_rendered
    from qwenrecipes.run import envs
    from qwenrecipes.run.distributed import check_distributed, node_argv

    plan = plan_recipe(recipe_path, target=target)
    engine_obj = get_engine(engine)
    run_dir = run_dir or default_run_dir(plan.recipe.name, engine)
    digest = recipe_hash(resolved_recipe_text(plan))
    output_dir = run_dir / plan.recipe.output["dir"]
    engine_env = envs.env_for(engine)  # raises with the install hint when the env is missing
    check_distributed(plan, engine_obj, run_dir, resume=resume)  # launcher limits, resume's world size

    refuse_before_locking(run_dir, resume=resume, force=force)
    lock = lock_run_dir(run_dir)  # a second `run` into this dir stops here (exit 2, naming our pid)
    fresh = False
    try:
        with sigterm_interrupts():
            if resume and (done := finished_run(run_dir, output_dir, plan.max_steps)):
                return RunSpec(run_dir=run_dir, engine=engine, argv=[], env={}, output_dir=output_dir,
                               total_steps=plan.max_steps, recipe_name=plan.recipe.name, recipe_hash=digest,
                               finished=done, lock=lock)
            resume_from, start_step = claim_run_dir(run_dir, engine, digest, output_dir, resume=resume, force=force)
            if not resume:
                # The marker first: a preparation cut short (Ctrl-C while the data is written) leaves a run dir
                # that --force takes, not a folder that looks foreign.
                fresh = True
                write_json_atomic(run_dir / MARKER_FILE, {
                    "kind": "qwenrecipes-run", "engine": engine, "recipe": plan.recipe.name,
                    "recipe_source": str(Path(recipe_path).resolve()), "recipe_hash": digest,
                    "created": time.time()})
            rendered = render_plan(plan, engine)
            write_rendered(plan, rendered, run_dir)
    except BaseException as exc:
        if fresh:
            _summary_before_start(run_dir, engine, plan.recipe.name, digest, plan.max_steps, exc)
        unlock(lock)
        raise
    argv = engine_obj.command(plan, resume_from=resume_from) if resume_from else list(rendered.argv)
    argv = node_argv(plan, argv)  # several nodes: this node's rank and the rendezvous from the environment
    # bin/ first on PATH, telemetry off (envs.base_environment), then the engine's own variables; our
    # environment underneath so secrets (HF_TOKEN, WANDB_API_KEY) reach the engine without touching a file.
    env = engine_env.run_environment(rendered.environment, wandb=plan.recipe.output["report_to"] == "wandb")
    env["PYTHONUNBUFFERED"] = "1"  # line-by-line output, or the watchdog sees silence that isn't there
    return RunSpec(
        run_dir=run_dir, engine=engine, argv=argv, env=env,
        output_dir=output_dir, logging_steps=int(plan.recipe.training["logging_steps"] or 1),
        total_steps=plan.max_steps, recipe_name=plan.recipe.name, recipe_hash=digest,
        versions=dict(engine_env.versions), resume_from=resume_from, start_step=start_step,
        stall_timeout=stall_timeout, traceback_timeout=traceback_timeout, grace=grace, warnings=list(rendered.warnings),
        lock=lock)


def _summary_before_start(run_dir: Path, engine: str, recipe: str, digest: str, total_steps: int | None,
                          exc: BaseException) -> None:
    """A fresh run stopped while its folder was being prepared still gets a summary (and says --force)."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    reason = ("interrupted while preparing the run dir, before the engine started" if interrupted else
              f"preparing the run dir failed: {exc}")
    now = time.time()
    summary = {"schema": 1, "engine": engine, "recipe": recipe, "recipe_hash": digest,
               "status": "interrupted" if interrupted else "failed", "phase": "preparing", "returncode": None,
               "started": round(now, 3), "ended": round(now, 3), "wall_time_s": 0.0, "total_wall_time_s": 0.0,
               "steps": 0, "total_steps": total_steps, "artifacts": {"checkpoints": []},
               "error": {"reason": f"{reason}; start over with --force"}}
    with contextlib.suppress(OSError):
        write_json_atomic(run_dir / SUMMARY_FILE, summary)


def _truncate_events_after(run_dir: Path, step: int) -> None:
    """Resuming from checkpoint-N replays steps N+1...: move their old events aside so every step appears
    once in events.jsonl (kept in events.superseded.jsonl, not deleted)."""
    path = run_dir / EVENTS_FILE
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return
    keep: list[bytes] = []
    gone: list[bytes] = []
    for line in lines:
        # A damaged line is kept as it is (readers skip it and name it): resuming loses nothing.
        event = parse_event_line(line)
        later = event is not None and isinstance(event.get("step"), int) and event["step"] > step
        (gone if later else keep).append(line if line.endswith(b"\n") else line + b"\n")
    if gone:
        with open(run_dir / SUPERSEDED_FILE, "ab") as handle:
            handle.writelines(gone)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(b"".join(keep))
    os.replace(temporary, path)


def execute(spec: RunSpec, on_event: EventCallback | None = None) -> RunResult:
    """Run the engine command in the run dir, supervised; always writes summary.json (a finished run given to
    --resume runs nothing and writes nothing). Holds the run dir's lock until the summary is written."""
    if spec.lock is None:
        spec.lock = lock_run_dir(spec.run_dir)
    try:
        if spec.finished is not None:
            return RunResult(spec.run_dir, "ok", read_summary(spec.run_dir) or {"status": "ok"})
        return _execute(spec, on_event)
    finally:
        unlock(spec.lock)
        spec.lock = None


def _execute(spec: RunSpec, on_event: EventCallback | None) -> RunResult:
    reserve = spec.run_dir / RESERVE_FILE
    with contextlib.suppress(OSError):
        reserve.write_bytes(b"\0" * RESERVE_BYTES)
    supervisor = Supervisor(spec, on_event)
    started = time.time()
    previous = read_summary(spec.run_dir) if spec.resume_from else None
    crash: BaseException | None = None
    try:
        with sigterm_interrupts(), open(spec.run_dir / EVENTS_FILE, "a", encoding="utf-8") as supervisor.events:
            supervisor.emit({"type": "start", "engine": spec.engine, "argv": spec.argv,
                             "resume_from": spec.resume_from, "start_step": spec.start_step,
                             "total_steps": spec.total_steps, "versions": spec.versions,
                             "recipe_hash": spec.recipe_hash})
            for warning in spec.warnings:
                supervisor.emit({"type": "warning", "message": warning, "source": "qwenrecipes"})
        status, returncode = supervisor.run()
    except KeyboardInterrupt:  # before the engine started (supervisor.run turns signals into a flag)
        status, returncode = "interrupted", None
        supervisor.kill_reason = "interrupted"
    except OSError as exc:  # a full disk, a vanished folder: the summary says which file
        status, returncode = "failed", None
        supervisor.kill_reason = supervisor.kill_reason or f"could not write the run's files: {exc}"
    except Exception as exc:  # a bug of ours: still a summary, then the traceback
        status, returncode, crash = "failed", None, exc
        supervisor.kill_reason = f"qwenrecipes failed while supervising: {exc!r}"
    ended = time.time()
    with contextlib.suppress(OSError):
        reserve.unlink()
    summary = build_summary(spec, supervisor, status=status, returncode=returncode, started=started, ended=ended,
                            previous=previous)
    with contextlib.suppress(OSError), \
            open(spec.run_dir / EVENTS_FILE, "a", encoding="utf-8") as supervisor.events:
        supervisor.emit({"type": "end", "status": status, "returncode": returncode,
                         "wall_time_s": round(ended - started, 3), "steps": summary.get("steps"),
                         **({"message": summary["error"]["reason"]} if summary.get("error") else {}),
                         **{k: v for k, v in supervisor.metrics.items() if k != "type"}})
    try:
        write_json_atomic(spec.run_dir / SUMMARY_FILE, supervisor.redactor.value(summary))
    except OSError as exc:
        raise EngineError(f"the run ended {status}, but {spec.run_dir / SUMMARY_FILE} could not be written: "
                          f"{exc.strerror or exc}") from exc
    if crash is not None:
        raise crash
    return RunResult(spec.run_dir, status, summary)


def run_recipe(recipe_path: str | Path, engine: str, *, run_dir: Path | None = None, resume: bool = False,
               force: bool = False, target: str | None = None, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
               traceback_timeout: float = DEFAULT_TRACEBACK_TIMEOUT, grace: float = DEFAULT_GRACE,
               on_event: EventCallback | None = None) -> RunResult:
    """`qwenrecipes run`: prepare the run dir, then run the engine under supervision."""
    spec = prepare_run(recipe_path, engine, run_dir=run_dir, resume=resume, force=force, target=target,
                       stall_timeout=stall_timeout, traceback_timeout=traceback_timeout, grace=grace)
    return execute(spec, on_event)
