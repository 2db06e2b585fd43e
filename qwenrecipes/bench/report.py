"""The bench's results: results.json (rows merged across runs by engine and label), report.md (table, winners,
how it was measured) and the PNG plots (throughput, memory, loss)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qwenrecipes.bench.engine_specific import BASELINE_ENGINE
from qwenrecipes.bench.metrics import finite
from qwenrecipes.bench.prepare import FAIRNESS_COMMON

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
ROW_FIELDS = ("engine", "engine_version", "gpu", "model", "method", "seq_len", "micro_batch", "grad_accum",
              "gradient_checkpointing", "tokens_per_s", "step_time_p50", "step_time_p95", "peak_vram_gb",
              "loss_first", "loss_last", "status", "command", "fairness")


def load_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RESULTS_FILE
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    rows = value.get("rows") if isinstance(value, dict) else value
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A re-run of the same engine and label replaces its row; everything else is kept, in order."""
    keys = {(r.get("engine"), r.get("label")) for r in new}
    return [r for r in old if (r.get("engine"), r.get("label")) not in keys] + list(new)


def write_results(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path = out_dir / RESULTS_FILE
    document = {"schema": 1, "fields": list(ROW_FIELDS), "rows": rows,
                "notes": "loss values of a random-init model are not meaningful (speed and memory are); "
                         "peak_vram_gb is torch max_allocated where the engine process reported it"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _baseline_for(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The BASELINE_ENGINE row with the same method, sequence length and checkpointing (the vanilla baseline)."""
    for candidate in rows:
        if (candidate.get("engine") == BASELINE_ENGINE and candidate.get("status") == "ok"
                and all(candidate.get(k) == row.get(k) for k in ("method", "seq_len", "gradient_checkpointing"))):
            return candidate
    return None


def add_quality(rows: list[dict[str, Any]]) -> None:
    """Held-out loss and perplexity of each row's run, where `qwenrecipes eval` scored it (its eval.json)."""
    from qwenrecipes.run.quality import read_quality

    for row in rows:
        quality = read_quality(Path(row["run_dir"])) if row.get("run_dir") else None
        if quality is not None:
            row.update(heldout_loss=quality.loss, perplexity=quality.perplexity,
                       heldout_sha256=quality.heldout_sha256)


def quality_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Same recipe, different engines: the held-out losses should agree within 3%; say where they do not."""
    from qwenrecipes.run.quality import Quality, parity_problems

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "ok" and finite(r.get("heldout_loss")):
            groups.setdefault((r.get("method"), r.get("seq_len"), r.get("label")), []).append(r)
    lines = []
    for (method, seq, label), group in groups.items():
        named = [(str(r.get("engine")), Quality(r["heldout_loss"], r.get("perplexity") or 0.0, 0,
                                                str(r.get("heldout_sha256") or ""))) for r in group]
        for problem in parity_problems(named):
            lines.append(f"- **{method}, seq {seq}, {label}**: {problem}")
        if len(group) > 1 and not parity_problems(named):
            lines.append(f"- {method}, seq {seq}, {label}: held-out losses agree within 3% across "
                         f"{', '.join(n for n, _ in named)}")
    return lines


def report_markdown(rows: list[dict[str, Any]], plots: list[str]) -> str:
    lines = ["# qwenrecipes bench", ""]
    gpus = sorted({str(r.get("gpu")) for r in rows})
    models = sorted({str(r.get("model")) for r in rows})
    lines.append(f"GPU: {', '.join(gpus)}. Model: {', '.join(models)}.")
    if any(r.get("loss_meaningful") is False for r in rows):
        lines.append("The model is random-init with the real architecture and tokenizer: speed and memory are the "
                     "real model's, **loss values are not meaningful**.")
    lines += ["", "| engine | setting | method | seq | mb×ga | ckpt | tokens/s | supervised tok/s | padding | vs TRL | "
              "step p50 s | step p95 s | peak GiB (torch) | peak GiB (NVML) | loss first→last | held-out loss | "
              "status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = _baseline_for(r, rows)
        ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and finite(r.get("tokens_per_s"))
                 and r.get("status") == "ok" else "—")
        status = str(r.get("status", "?"))
        if status != "ok":
            reasons = r.get("status_reasons") or [(r.get("error") or "").strip().splitlines()[-1:] or [""]][0]
            reason = "; ".join(str(x) for x in reasons if x)
            status = f"{status}: {reason[:120]}" if reason else status
        lines.append(
            f"| {r.get('engine')} {_fmt(r.get('engine_version'))} | {r.get('label')} | {r.get('method')} | "
            f"{r.get('seq_len')} | {r.get('micro_batch')}×{r.get('grad_accum')} | "
            f"{_fmt(r.get('gradient_checkpointing'))} | {_fmt(r.get('tokens_per_s'))} | "
            f"{_fmt(r.get('supervised_tokens_per_s'))} | {_padding(r)} | {ratio} | "
            f"{_fmt(r.get('step_time_p50'), 3)} | {_fmt(r.get('step_time_p95'), 3)} | "
            f"{_fmt(r.get('peak_vram_torch_allocated_gib') or r.get('peak_vram_gb'), 1)} | "
            f"{_fmt(r.get('peak_vram_nvml_gib'), 1)} | {_fmt(r.get('loss_first'), 3)}→{_fmt(r.get('loss_last'), 3)} | "
            f"{_fmt(r.get('heldout_loss'), 4)} | {status.replace('|', '/')} |")
    quality = quality_lines(rows)
    if quality:
        lines += ["", "## Held-out loss across engines (`qwenrecipes eval`)", "", *quality]
    ok = [r for r in rows if r.get("status") == "ok"]
    lines += ["", "## Winners (ok rows)", ""]
    if ok:
        groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
        for r in ok:
            groups.setdefault((r.get("method"), r.get("seq_len")), []).append(r)
        for (method, seq), group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
            fastest = max(group, key=lambda r: r.get("tokens_per_s") or 0)
            # On CPU there is no GPU memory to measure (0 or missing): no "least memory" winner at 0.0 GiB.
            measured = [r for r in group if _gpu_memory(r)]
            lowest = min(measured, key=_gpu_memory) if measured else None
            memory = (f"least memory **{lowest['engine']}/{lowest['label']}** ({_fmt(_gpu_memory(lowest), 1)} GiB)"
                      if lowest else "GPU memory not measured (CPU run)")
            steadiest = min(group, key=lambda r: r.get("step_time_p95") or float("inf"))
            lines.append(f"- {method}, seq {seq}: fastest **{fastest['engine']}/{fastest['label']}** "
                         f"({_fmt(fastest.get('tokens_per_s'))} tok/s); {memory}; lowest p95 step "
                         f"**{steadiest['engine']}/{steadiest['label']}** "
                         f"({_fmt(steadiest.get('step_time_p95'), 3)} s)")
    else:
        lines.append("- no row finished ok")
    lines += ["", "## How it was measured", ""]
    lines += [f"- {note}" for note in FAIRNESS_COMMON]
    lines.append("- peak GiB (torch) = torch.cuda.max_memory_allocated in the engine process (exit hook); "
                 "peak GiB (NVML) = whole-GPU memory in use, sampled from outside (CUDA context and allocator "
                 "cache included)")
    lines.append("- tokens/s above the physical ceiling, a gradient norm of 0 or a NaN loss mark a row failed")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _padding(row: dict[str, Any]) -> str:
    """Padding share of the positions computed; packed rows also show how full qwenrecipes' bins are."""
    value = row.get("padding_fraction")
    text = f"{100 * value:.1f}%" if finite(value) else "—"
    return f"{text} (bins {row['bin_fill_pct']:.0f}% full)" if finite(row.get("bin_fill_pct")) else text


def _gpu_memory(row: dict[str, Any]) -> float:
    """Peak GPU memory of a row in GiB; 0.0 when none was measured (a CPU run reports 0 or nothing)."""
    value = row.get("peak_vram_gb") or row.get("peak_vram_torch_allocated_gib") or row.get("peak_vram_nvml_gib")
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def write_plots(out_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """throughput.png, memory.png (only when a row measured GPU memory: a CPU run has none, and an empty
    plot says nothing), loss.png. matplotlib is imported here, with the Agg backend, so nothing else in
    qwenrecipes pays for it and no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r.get('engine')}\n{r.get('label')}" for r in rows]
    colors = ["tab:green" if r.get("status") == "ok" else "tab:red" for r in rows]
    written: list[str] = []
    width = max(6.0, 1.1 * len(rows) + 2)

    fig, ax = plt.subplots(figsize=(width, 4.2))
    ax.bar(names, [r.get("tokens_per_s") or 0 for r in rows], color=colors)
    ax.set_ylabel("tokens/s (qwenrecipes count, warm-up excluded)")
    ax.set_title("Throughput (red: not ok)")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    if any(_gpu_memory(r) for r in rows):
        written.append(_memory_plot(plt, out_dir, rows, names, width))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        curve = [(s, v) for s, v in (r.get("loss_curve") or []) if v is not None]
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".",
                    label=f"{r.get('engine')}/{r.get('label')}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    title = "Loss curves"
    if any(r.get("loss_meaningful") is False for r in rows):
        title += " (random-init model: values not meaningful)"
    ax.set_title(title, fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
    return written


def _memory_plot(plt: Any, out_dir: Path, rows: list[dict[str, Any]], names: list[str], width: float) -> str:
    fig, ax = plt.subplots(figsize=(width, 4.2))
    torch_mem = [r.get("peak_vram_torch_allocated_gib") or r.get("peak_vram_gb") or 0 for r in rows]
    nvml_mem = [r.get("peak_vram_nvml_gib") or 0 for r in rows]
    xs = list(range(len(rows)))
    ax.bar([x - 0.2 for x in xs], torch_mem, width=0.4, label="torch max_allocated")
    ax.bar([x + 0.2 for x in xs], nvml_mem, width=0.4, label="NVML whole GPU")
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("GiB")
    ax.set_title("Peak GPU memory")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_report(out_dir: Path, rows: list[dict[str, Any]], *, plots: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    add_quality(rows)
    results = write_results(out_dir, rows)
    plot_files = write_plots(out_dir, rows) if plots and rows else []
    report = out_dir / REPORT_FILE
    report.write_text(report_markdown(rows, plot_files), encoding="utf-8")
    return {"results": results, "report": report, **{Path(p).stem: Path(p) for p in plot_files}}
