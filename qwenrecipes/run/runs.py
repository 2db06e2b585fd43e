"""Read finished (or unfinished) run dirs: list them, load one, plot its loss curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.run.events import Event, read_events
from qwenrecipes.run.rundir import EVENTS_FILE, MARKER_FILE, has_marker_file, read_marker
from qwenrecipes.run.summary import read_summary

LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class RunInfo:
    path: Path
    marker: dict[str, Any]  # {} when the marker is damaged (see problems)
    summary: dict[str, Any] | None  # None: still running, or killed before it could write one
    # Damaged run files, each named with its line and what is wrong; readers go on without the damaged part.
    problems: list[str] = field(default_factory=list)

    @property
    def engine(self) -> str:
        return str(self.marker.get("engine") or "?")

    @property
    def status(self) -> str:
        if self.summary and self.summary.get("status"):
            return str(self.summary["status"])
        return "damaged" if not self.marker else "unfinished"

    @property
    def created(self) -> float:
        created = self.marker.get("created")
        return float(created) if isinstance(created, (int, float)) else 0.0

    def events(self, problems: list[str] | None = None) -> list[Event]:
        return read_events(self.path / EVENTS_FILE, problems)


def _info(path: Path) -> RunInfo | None:
    problems: list[str] = []
    marker = read_marker(path, problems)
    if marker is None and not (problems and has_marker_file(path)):
        return None
    return RunInfo(path, marker or {}, read_summary(path, problems), problems)


def load_run(path: Path) -> RunInfo:
    run = _info(path) if path.is_dir() else None
    if run is None:
        raise QwenRecipesError(f"{path} is not a qwenrecipes run dir (no {MARKER_FILE}): "
                               "list runs with `qwenrecipes runs`")
    return run


def list_runs(root: Path) -> list[RunInfo]:
    """Run dirs at `root` itself or one level below it (runs/<recipe>-<engine>), newest first; damaged ones
    are listed too (status "damaged", their problems named)."""
    if not root.is_dir():
        raise QwenRecipesError(f"{root} is not a folder: pass the folder that holds your run dirs (default runs/)")
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]
    found = [run for p in candidates if (run := _info(p)) is not None]
    return sorted(found, key=lambda r: r.created, reverse=True)


def loss_curves(events: list[Event]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) of train events and (step, eval_loss) of eval events, by step, last value per step."""
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for event in events:
        step = event.get("step")
        if not isinstance(step, int):
            continue
        if event.get("type") == "train" and isinstance(event.get("loss"), (int, float)):
            train[step] = float(event["loss"])
        elif event.get("type") == "eval" and isinstance(event.get("eval_loss"), (int, float)):
            evals[step] = float(event["eval_loss"])
    return sorted(train.items()), sorted(evals.items())


def plot_loss(run: RunInfo) -> Path:
    """Write loss.png into the run dir. matplotlib is imported here, with the Agg backend, so listing runs
    never pays its import time and no display is needed."""
    train, evals = loss_curves(run.events())
    if not train and not evals:
        raise QwenRecipesError(f"{run.path} has no loss values yet: nothing to plot (see {run.path / 'engine.log'})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if train:
            axes.plot([s for s, _ in train], [v for _, v in train], label="train loss", linewidth=1.5)
        if evals:
            axes.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="eval loss")
        resumed = [e.get("start_step") for e in run.events() if e.get("type") == "start" and e.get("start_step")]
        for step in resumed:
            axes.axvline(step, color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        summary = run.summary or {}
        axes.set_title(f"{summary.get('recipe') or run.marker.get('recipe')} on {run.engine} ({run.status})")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        save_figure(figure, run.path / LOSS_PLOT)
    finally:
        plt.close(figure)
    return run.path / LOSS_PLOT


def save_figure(figure: Any, target: Path) -> None:
    """Write a matplotlib figure as PNG atomically: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp.png")
    figure.savefig(temporary)
    temporary.replace(target)
