"""Running a sweep: each point trained by the runner's library entry point and scored by evaluate_runs,
grid order or Optuna trials (optional extra ``qwenrecipes[sweep]``), with sweep.json updated after each step.
See sweep.py for the state and resume rules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.evaluate.sweep import (
    Echo,
    SweepSpec,
    SweepState,
    default_out,
    label,
    point_document,
    point_id,
    write_recipe,
)
from qwenrecipes.evaluate.sweep_report import SweepResult, write_report

POINT_RECIPE = "recipe.yaml"
RUN_DIR = "run"
OPTUNA_DB = "optuna.db"


def _train(spec: SweepSpec, folder: Path, recipe: Path, echo: Echo) -> tuple[str, dict[str, Any]]:
    """Train one point: continue its run from the last checkpoint when it has one, else start it (over)."""
    from qwenrecipes.run.rundir import find_checkpoints, read_marker
    from qwenrecipes.run.runner import run_recipe

    run_dir = folder / RUN_DIR
    marker = read_marker(run_dir) if run_dir.is_dir() else None
    resume = bool(marker) and bool(find_checkpoints(run_dir / "outputs"))
    if resume:
        echo(f"  resuming {run_dir} from its last checkpoint")
    try:
        result = run_recipe(recipe, spec.engine, run_dir=run_dir, resume=resume, force=not resume,
                            target=spec.target)
    except QwenRecipesError as exc:
        if not resume:
            raise
        echo(f"  cannot resume ({exc}); starting the point over")
        result = run_recipe(recipe, spec.engine, run_dir=run_dir, force=True, target=spec.target)
    return result.status, result.summary


def run_point(spec: SweepSpec, state: SweepState, overrides: dict[str, Any], echo: Echo) -> dict[str, Any]:
    """Train (unless trained) and score (unless scored) one point; returns its state entry."""
    from qwenrecipes.evaluate.core import evaluate_runs

    pid = point_id(overrides)
    folder = state.folder / "points" / pid
    entry = state.points.get(pid, {})
    if entry.get("status") == "done":
        return entry
    recipe = write_recipe(folder / POINT_RECIPE, point_document(spec, overrides),
                          f"sweep point {label(overrides)}\n(written by qwenrecipes sweep from {spec.recipe})")
    entry = state.update(pid, overrides=overrides, label=label(overrides), run_dir=str(folder / RUN_DIR),
                         recipe=str(recipe), status=entry.get("status") or "pending")
    if entry["status"] != "trained":
        echo(f"point {label(overrides)}: training ({spec.engine})")
        status, summary = _train(spec, folder, recipe, echo)
        if status == "interrupted":
            state.update(pid, status="interrupted")
            raise KeyboardInterrupt
        if status != "ok":
            reason = (summary.get("error") or {}).get("reason") or f"run {status}"
            echo(f"point {label(overrides)}: FAILED ({reason}); see {folder / RUN_DIR / 'engine.log'}")
            return state.update(pid, status="failed", error=str(reason))
        entry = state.update(pid, status="trained", train_final_loss=summary.get("final_loss"),
                             wall_time_s=summary.get("wall_time_s"))
    echo(f"point {label(overrides)}: scoring on the held-out split")
    try:
        result = evaluate_runs([folder / RUN_DIR], base=False, samples=1)
    except EngineError as exc:
        return state.update(pid, status="failed", error=f"eval: {exc}")
    score = result.runs[0]
    echo(f"point {label(overrides)}: held-out loss {score.loss:.4f}")
    return state.update(pid, status="done", loss=score.loss, perplexity=score.perplexity, error=None)


def _grid(spec: SweepSpec, state: SweepState, echo: Echo) -> None:
    points = spec.points()
    done = sum(1 for o in points if state.points.get(point_id(o), {}).get("status") == "done")
    if done:
        echo(f"resuming: {done} of {len(points)} points already done")
    for overrides in points:
        run_point(spec, state, overrides, echo)


def _optuna(spec: SweepSpec, state: SweepState, echo: Echo) -> None:
    try:
        import optuna
    except ImportError:
        raise QwenRecipesError("--search optuna needs Optuna: pip install 'qwenrecipes[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    state.folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(state.folder / OPTUNA_DB).resolve()}"
    study = optuna.create_study(study_name="qwenrecipes-sweep", storage=storage, load_if_exists=True,
                                direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    # A trial left RUNNING by an interrupted sweep is closed as failed and asked again with the same params,
    # so its point (same params, same folder) resumes instead of being lost.
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(stale.params)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while len(study.get_trials(deepcopy=False, states=finished)) < spec.trials:
        trial = study.ask()
        overrides: dict[str, Any] = {}
        for key, values in spec.grid:
            overrides[key] = trial.suggest_categorical(key, values)
        for key, span in spec.ranges:
            overrides[key] = (trial.suggest_int(key, int(span.low), int(span.high), log=span.log) if span.integer
                              else trial.suggest_float(key, span.low, span.high, log=span.log))
        entry = run_point(spec, state, overrides, echo)
        loss = entry.get("loss")
        if entry.get("status") == "done" and isinstance(loss, float) and math.isfinite(loss):
            study.tell(trial, loss)
        else:
            # A failed point is recorded, not retried forever: it counts towards no trial budget, but
            # Optuna will not ask the same params again by itself.
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def run_sweep(spec: SweepSpec, *, echo: Echo = lambda line: None) -> SweepResult:
    """Run (or resume) the sweep; write the table, heatmap and best recipe; return them."""
    if not spec.recipe.is_file():
        raise QwenRecipesError(f"{spec.recipe}: no such recipe file")
    folder = Path(spec.out) if spec.out else default_out(spec)
    for overrides in spec.points()[:1] or [{}]:
        point_document(spec, overrides)  # a bad field fails now, not after the first run
    state = SweepState(folder, spec.identity())
    echo(f"sweep {spec.recipe} on {spec.engine}: {folder}")
    try:
        if spec.search == "optuna":
            _optuna(spec, state, echo)
        else:
            _grid(spec, state, echo)
    finally:
        result = write_report(spec, state)
    return result
