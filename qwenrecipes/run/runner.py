"""Run one recipe on one engine: render into a run dir (fresh, resumed from its last checkpoint, or replacing a
previous run), supervise the engine process, normalize its output into events.jsonl, and leave a summary.json
whatever happens (ok, failed, interrupted). The run dir's layout is in ``rundir``.

Library code: no printing, no sys.exit. Progress reaches the caller through ``on_event``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.run.events import read_events
from qwenrecipes.run.rundir import (
    EVENTS_FILE,
    MARKER_FILE,
    SUMMARY_FILE,
    SUPERSEDED_FILE,
    default_run_dir,
    find_checkpoints,
    is_run_dir,
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


def execute(spec: RunSpec, on_event: EventCallback | None = None) -> RunResult:
    """Run the engine command in the run dir, supervised; always writes summary.json."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(spec, on_event)
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


def run_recipe(recipe_path: str | Path, engine: str, *, run_dir: Path | None = None, resume: bool = False,
               force: bool = False, target: str | None = None, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
               traceback_timeout: float = DEFAULT_TRACEBACK_TIMEOUT, grace: float = DEFAULT_GRACE,
               on_event: EventCallback | None = None) -> RunResult:
    """`qwenrecipes run`: prepare the run dir, then run the engine under supervision."""
    spec = prepare_run(recipe_path, engine, run_dir=run_dir, resume=resume, force=force, target=target,
                       stall_timeout=stall_timeout, traceback_timeout=traceback_timeout, grace=grace)
    return execute(spec, on_event)
