"""`qwenrecipes compare`: several runs side by side, from their normalized events (events.jsonl) and summaries.

Numbers come from the events rather than each summary where they can, so a run that is still going (or was
interrupted before its summary was written) compares too. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.run.quality import Quality, parity_problems, read_quality
from qwenrecipes.run.runs import RunInfo, load_run, loss_curves, save_figure

DEFAULT_PLOT = "compare.png"


@dataclass(frozen=True)
class CompareRow:
    """One run in the comparison table."""

    run: str  # the run dir as given
    engine: str
    status: str
    steps: int | None
    first_loss: float | None
    final_loss: float | None
    min_loss: float | None
    wall_time_s: float | None
    tokens_per_s: float | None
    curve: list[tuple[int, float]]
    quality: Quality | None = None  # held-out loss/perplexity, when `qwenrecipes eval` scored the run

    @property
    def heldout_loss(self) -> float | None:
        return self.quality.loss if self.quality else None

    @property
    def perplexity(self) -> float | None:
        return self.quality.perplexity if self.quality else None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "engine": self.engine, "status": self.status, "steps": self.steps,
                "first_loss": self.first_loss, "final_loss": self.final_loss, "min_loss": self.min_loss,
                "wall_time_s": self.wall_time_s, "tokens_per_s": self.tokens_per_s,
                **(self.quality.to_json() if self.quality else {"heldout_loss": None, "perplexity": None})}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare_row(path: Path) -> CompareRow:
    """Read one run dir. Raises QwenRecipesError when it is not a qwenrecipes run."""
    try:
        run: RunInfo = load_run(path)
    except QwenRecipesError:
        raise
    except (OSError, ValueError) as exc:
        raise QwenRecipesError(f"{path}: not a readable qwenrecipes run ({exc})") from None
    curve, _evals = loss_curves(run.events())
    summary = run.summary or {}
    losses = [loss for _, loss in curve]
    steps = curve[-1][0] if curve else (int(summary["steps"]) if isinstance(summary.get("steps"), int) else None)
    return CompareRow(
        run=str(path), engine=run.engine, status=run.status, steps=steps,
        first_loss=losses[0] if losses else _number(summary.get("first_loss")),
        final_loss=losses[-1] if losses else _number(summary.get("final_loss")),
        min_loss=min(losses) if losses else _number(summary.get("min_loss")),
        wall_time_s=_number(summary.get("total_wall_time_s")) or _number(summary.get("wall_time_s")),
        tokens_per_s=_number(summary.get("tokens_per_s")), curve=curve, quality=read_quality(path))


def compare_runs(paths: Sequence[Path]) -> list[CompareRow]:
    if not paths:
        raise QwenRecipesError("compare needs at least one run dir")
    return [compare_row(p) for p in paths]


def relative_spread(values: Sequence[float | None]) -> float | None:
    """max |a - b| / min |value| over the runs that have a value: the tolerance parity tests assert on."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    return (max(present) - min(present)) / min(abs(v) for v in present)


def quality_problems(rows: Sequence[CompareRow]) -> list[str]:
    """The same recipe on different engines should reach the same held-out loss: why these rows do not."""
    return parity_problems([(f"{r.engine} ({Path(r.run).name})", r.quality) for r in rows])


def plot_comparison(rows: Sequence[CompareRow], out: Path, *, title: str | None = None) -> Path:
    """Overlaid train-loss curves, one line per run, written to `out` (PNG)."""
    drawable = [r for r in rows if r.curve]
    if not drawable:
        raise QwenRecipesError("none of the runs has loss values yet: nothing to plot")
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5), dpi=100)
    try:
        # Two runs of the same engine get their run dir in the label, or the legend would be ambiguous.
        engines = [r.engine for r in drawable]
        for row in drawable:
            label = row.engine if engines.count(row.engine) == 1 else f"{row.engine} ({Path(row.run).name})"
            axes.plot([s for s, _ in row.curve], [v for _, v in row.curve], label=label, linewidth=1.4,
                      marker="o" if len(row.curve) <= 40 else None, markersize=3)
        axes.set_xlabel("step")
        axes.set_ylabel("train loss")
        axes.set_title(title or "train loss by engine")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        save_figure(figure, out)
    finally:
        plt.close(figure)
    return out
