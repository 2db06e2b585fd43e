"""A sweep's outputs: sweep.md (every point, its held-out loss, the best first), sweep.png (a heatmap over two
swept fields, a line for one) and best.yaml (the recipe of the point with the lowest held-out loss)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenrecipes.evaluate.sweep import absolutize, set_field, write_recipe

if TYPE_CHECKING:
    from qwenrecipes.evaluate.sweep import SweepSpec, SweepState

TABLE_MD = "sweep.md"
HEATMAP_PNG = "sweep.png"
BEST_RECIPE = "best.yaml"


@dataclass(frozen=True)
class Point:
    label: str
    overrides: dict[str, Any]
    status: str
    loss: float | None
    perplexity: float | None
    train_final_loss: float | None
    run_dir: str


@dataclass
class SweepResult:
    folder: Path
    points: list[Point]
    table: str
    best: Point | None
    best_recipe: Path | None
    files: list[Path] = field(default_factory=list)


def _points(state: SweepState) -> list[Point]:
    out = []
    for entry in state.points.values():
        loss = entry.get("loss")
        out.append(Point(entry.get("label", ""), dict(entry.get("overrides") or {}), entry.get("status", "pending"),
                         float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else None,
                         entry.get("perplexity"), entry.get("train_final_loss"), entry.get("run_dir", "")))
    return out


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def table_text(keys: list[str], points: list[Point]) -> str:
    ranked = sorted(points, key=lambda p: (p.loss is None, p.loss if p.loss is not None else 0.0))
    header = [*keys, "held-out loss", "perplexity", "final train loss", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in ranked:
        cells = [str(p.overrides.get(k, "-")) for k in keys]
        cells += [_fmt(p.loss, ".4f"), _fmt(p.perplexity, ".2f"), _fmt(p.train_final_loss, ".4f"), p.status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_heatmap(keys: list[str], points: list[Point], out: Path) -> Path | None:
    """Held-out loss over the two fields with most values (best over any others), or a line over one."""
    scored = [p for p in points if p.loss is not None]
    if not scored or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qwenrecipes.run.runs import save_figure

    values = {k: sorted({p.overrides.get(k) for p in points}, key=lambda v: (str(type(v)), v)) for k in keys}
    axes_keys = sorted(keys, key=lambda k: -len(values[k]))[:2]
    figure, axes = plt.subplots(figsize=(7, 5), dpi=100)
    try:
        if len(axes_keys) == 1:
            key = axes_keys[0]
            best = [min((p.loss for p in scored if p.overrides.get(key) == v and p.loss is not None),
                        default=math.nan) for v in values[key]]
            axes.plot([str(v) for v in values[key]], best, marker="o")
            axes.set_xlabel(key)
            axes.set_ylabel("held-out loss")
        else:
            y_key, x_key = axes_keys
            grid = [[min((p.loss for p in scored if p.overrides.get(x_key) == x and p.overrides.get(y_key) == y
                          and p.loss is not None), default=math.nan) for x in values[x_key]] for y in values[y_key]]
            image = axes.imshow(grid, cmap="viridis_r", aspect="auto")
            figure.colorbar(image, ax=axes, label="held-out loss (lower is better)")
            axes.set_xticks(range(len(values[x_key])), [str(v) for v in values[x_key]])
            axes.set_yticks(range(len(values[y_key])), [str(v) for v in values[y_key]])
            axes.set_xlabel(x_key)
            axes.set_ylabel(y_key)
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    if not math.isnan(value):
                        axes.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
        axes.set_title("held-out loss by sweep point" + (" (best over other fields)" if len(keys) > 2 else ""))
        figure.tight_layout()
        save_figure(figure, out)
    finally:
        plt.close(figure)
    return out


def write_report(spec: SweepSpec, state: SweepState) -> SweepResult:
    from qwenrecipes.recipe.load import load_recipe_document

    keys = [k for k, _ in spec.grid] + [k for k, _ in spec.ranges]
    points = _points(state)
    folder = state.folder
    folder.mkdir(parents=True, exist_ok=True)
    table = table_text(keys, points)
    files = [folder / TABLE_MD, folder / "sweep.json"]
    done = sum(1 for p in points if p.status == "done")
    (folder / TABLE_MD).write_text(f"# Sweep of {spec.recipe} on {spec.engine}\n\n{done} of {len(points)} points "
                                   f"scored (held-out loss, lower is better; best first).\n\n{table}\n"
                                   + (f"\n![held-out loss]({HEATMAP_PNG})\n" if done else ""), encoding="utf-8")
    png = plot_heatmap(keys, points, folder / HEATMAP_PNG)
    if png:
        files.append(png)
    scored = [p for p in points if p.loss is not None]
    best = min(scored, key=lambda p: p.loss if p.loss is not None else math.inf) if scored else None
    best_recipe = None
    if best is not None:
        document = absolutize(load_recipe_document(spec.recipe), spec.recipe)
        for key, value in {**spec.fixed, **best.overrides}.items():
            set_field(document, key, value)
        best_recipe = write_recipe(folder / BEST_RECIPE, document,
                                   f"best point of the sweep in {folder}: {best.label}\n"
                                   f"held-out loss {best.loss:.4f} on {spec.engine} (run: {best.run_dir})")
        files.append(best_recipe)
    return SweepResult(folder, points, table, best, best_recipe, files)
