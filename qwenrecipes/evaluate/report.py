"""report.md and eval.png of an evaluation: totals, which held-out samples improved or got worse (and by how
much), the standard benchmarks, and greedy generations side by side. matplotlib only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwenrecipes.evaluate.core import EvalResult, ModelScore

UNCHANGED = 1e-3  # |delta loss| below this counts as unchanged (float noise between batchings)
SHOWN_ROWS = 5  # most improved / most worsened samples listed per run


def row_deltas(run: ModelScore, base: ModelScore) -> list[tuple[int, float, float, float]]:
    """(row index, base loss, run loss, run - base) for every row that trains at least one token."""
    out = []
    for index, (b, r) in enumerate(zip(base.row_losses, run.row_losses, strict=True), start=1):
        if b is not None and r is not None:
            out.append((index, b, r, r - b))
    return out


def change_counts(deltas: list[tuple[int, float, float, float]]) -> dict[str, int]:
    return {"improved": sum(1 for *_, d in deltas if d < -UNCHANGED),
            "worse": sum(1 for *_, d in deltas if d > UNCHANGED),
            "unchanged": sum(1 for *_, d in deltas if abs(d) <= UNCHANGED)}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def _totals(result: EvalResult) -> list[str]:
    base = result.base
    lines = ["| model | engine | held-out loss | perplexity | vs base | improved / worse / unchanged |",
             "|---|---|---|---|---|---|"]
    for score in result.scores:
        versus, counts = "-", "-"
        if base is not None and score is not base:
            versus = f"{(score.loss - base.loss) / base.loss:+.1%}"
            c = change_counts(row_deltas(score, base))
            counts = f"{c['improved']} / {c['worse']} / {c['unchanged']}"
        lines.append(f"| {score.spec.name} | {score.spec.engine or '-'} | {score.loss:.4f} | "
                     f"{score.perplexity:.2f} | {versus} | {counts} |")
    return lines


def _changes(result: EvalResult) -> list[str]:
    base, lines = result.base, []
    if base is None:
        return lines
    previews = [r.preview for r in result.heldout.rows]
    for run in result.runs:
        deltas = sorted(row_deltas(run, base), key=lambda d: d[3])
        lines += ["", f"### {run.spec.name}: per-sample change (loss, lower is better)", "",
                  "| row | sample | base | tuned | change |", "|---|---|---|---|---|"]
        shown = deltas[:SHOWN_ROWS] + [d for d in deltas[-SHOWN_ROWS:] if d not in deltas[:SHOWN_ROWS]]
        for index, b, r, d in shown:
            lines.append(f"| {index} | {_cell(previews[index - 1])} | {b:.4f} | {r:.4f} | {d:+.4f} |")
        if len(deltas) > len(shown):
            lines.append(f"\n({len(deltas) - len(shown)} rows in between; every row is in eval.json)")
    return lines


def _benchmarks(result: EvalResult) -> list[str]:
    if not result.benchmarks:
        return []
    models = result.benchmarks.get("models", {})
    rows: list[tuple[str, str]] = sorted({(task, metric) for entry in models.values()
                                          for task, metrics in entry.get("results", {}).items()
                                          for metric, value in metrics.items()
                                          if isinstance(value, (int, float)) and "stderr" not in metric
                                          and metric != "sample_len"})
    lines = ["", "## Benchmarks (lm-evaluation-harness)", "",
             "| task | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task, metric in rows:
        cells = [_fmt(models[m].get("results", {}).get(task, {}).get(metric)) for m in models]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return lines


def _generations(result: EvalResult) -> list[str]:
    if not result.scores or not result.scores[0].generations:
        return []
    lines = ["", "## Greedy generations on held-out prompts", ""]
    for k, first in enumerate(result.scores[0].generations):
        lines += [f"### held-out row {first['row']}", "", "prompt:", "", "```", first["prompt"].rstrip(), "```", "",
                  "| model | answer |", "|---|---|", f"| reference | {_cell(first['reference'])} |"]
        for score in result.scores:
            gen = score.generations[k]
            end = "" if gen["stopped_on_eos"] else " (cut at max tokens)"
            lines.append(f"| {score.spec.name} | {_cell(gen['text'])}{end} |")
        lines.append("")
    return lines


def report_markdown(result: EvalResult, png: Path | None) -> str:
    held = result.heldout
    tokens = sum(r.trained_tokens for r in held.rows)
    lines = [f"# Evaluation on the held-out split ({len(held.rows)} rows, {tokens} trained tokens)", "",
             f"Held-out data: `{held.source}` (sha256 {held.digest[:12]}), train_on `{held.train_on}`, "
             f"chat_template `{held.chat_template}`. Loss is the token-weighted mean cross-entropy on the "
             "tokens the recipe trains (qwenrecipes' own tokenization and mask, the same for every model); "
             "perplexity is exp(loss).", "", *_totals(result)]
    if png is not None:
        lines += ["", f"![per-sample loss]({png.name})"]
    lines += _changes(result) + _benchmarks(result) + _generations(result)
    return "\n".join(lines) + "\n"


def plot_rows(result: EvalResult, out: Path) -> Path | None:
    """Per-sample held-out loss, base (x) vs each tuned model (y): points under the diagonal improved.
    Without the base: each model's per-sample loss by row."""
    if not result.runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qwenrecipes.run.runs import save_figure

    figure, axes = plt.subplots(figsize=(7, 6), dpi=100)
    try:
        base = result.base
        if base is not None:
            low, high = float("inf"), float("-inf")
            for run in result.runs:
                deltas = row_deltas(run, base)
                xs, ys = [d[1] for d in deltas], [d[2] for d in deltas]
                axes.scatter(xs, ys, s=18, alpha=0.75, label=f"{run.spec.name} ({run.loss:.3f})")
                low, high = min([low, *xs, *ys]), max([high, *xs, *ys])
            axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="unchanged")
            axes.set_xlabel(f"base loss per sample (mean {base.loss:.3f})")
            axes.set_ylabel("fine-tuned loss per sample")
            axes.set_title("held-out loss per sample: below the line = improved")
        else:
            for run in result.runs:
                points = [(i, v) for i, v in enumerate(run.row_losses, start=1) if v is not None]
                axes.plot([i for i, _ in points], [v for _, v in points], marker="o", markersize=3,
                          label=f"{run.spec.name} ({run.loss:.3f})")
            axes.set_xlabel("held-out row")
            axes.set_ylabel("loss")
            axes.set_title("held-out loss per sample")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        save_figure(figure, out)
    finally:
        plt.close(figure)
    return out


def summary_lines(result: EvalResult) -> list[tuple[str, Any, Any, Any, str]]:
    """(model, engine, loss, perplexity, vs base) rows for the CLI table."""
    base = result.base
    rows = []
    for score in result.scores:
        versus = f"{(score.loss - base.loss) / base.loss:+.1%}" if base and score is not base else "-"
        rows.append((score.spec.name, score.spec.engine or "-", score.loss, score.perplexity, versus))
    return rows
