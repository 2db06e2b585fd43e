"""summary.json: what one invocation of a run did (status, steps, losses, speed, memory, artifacts, the error and
its diagnosis), built from events.jsonl and the supervisor; and its reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenrecipes.run import doctor
from qwenrecipes.run.events import Event, read_events
from qwenrecipes.run.rundir import EVENTS_FILE, SUMMARY_FILE, find_artifacts, read_json_file
from qwenrecipes.run.spec import RunSpec
from qwenrecipes.run.supervisor import Supervisor

# Keys the readers (show, runs, resume, ui) use as objects or strings; a damaged value is dropped, not trusted.
_OBJECT_KEYS = ("error", "artifacts", "versions")
_TEXT_KEYS = ("status", "engine", "recipe", "recipe_hash")


def read_summary(run_dir: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """A run's summary.json, or None while it runs (or when it was killed before writing one). A damaged one
    is None (or loses its damaged keys), described by file and line in `problems`."""
    path = run_dir / SUMMARY_FILE
    value = read_json_file(path, problems)
    if value is None:
        return None
    if not isinstance(value, dict):
        if problems is not None:
            problems.append(f"{path}: not a JSON object; ignored")
        return None
    for key in _OBJECT_KEYS:
        if value.get(key) is not None and not isinstance(value[key], dict):
            if problems is not None:
                problems.append(f"{path}: {key!r} is not an object; ignored")
            value[key] = None
    for key in _TEXT_KEYS:
        if value.get(key) is not None and not isinstance(value[key], str):
            if problems is not None:
                problems.append(f"{path}: {key!r} is not text; ignored")
            value[key] = None
    for key in ("wall_time_s", "total_wall_time_s"):
        if value.get(key) is not None and (isinstance(value[key], bool) or not isinstance(value[key], (int, float))):
            value[key] = None
    return value


def _numbers(events: list[Event], key: str) -> list[float]:
    return [e[key] for e in events if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)]


def build_summary(spec: RunSpec, supervisor: Supervisor, *, status: str, returncode: int | None, started: float,
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
        summary["error"] = error_info(supervisor, returncode)
    elif status == "interrupted":
        how = ("continue with --resume" if summary["artifacts"]["checkpoints"] else
               "no checkpoint was saved yet: start over with --force")
        summary["error"] = {"reason": f"interrupted (Ctrl-C or SIGTERM); {how}"}
    return summary


def error_info(supervisor: Supervisor, returncode: int | None) -> dict[str, Any]:
    traceback = supervisor.normalizer.last_traceback
    failed_rank = supervisor.ranks.traceback()  # multi-process: the failing rank's own traceback comes first
    if failed_rank is not None:
        traceback = f"rank {failed_rank[0]}:\n{failed_rank[1]}"
    tail = "\n".join(supervisor.log_tail[-20:])
    text = traceback or tail
    diagnosis = doctor.classify(f"{traceback or ''}\n{tail}")
    reason = supervisor.kill_reason or f"engine exited with code {returncode}"
    return {"reason": reason, "text": text, "rank": failed_rank[0] if failed_rank else None,
            "class": diagnosis.name if diagnosis else None,
            "fix": diagnosis.fix if diagnosis else None}
