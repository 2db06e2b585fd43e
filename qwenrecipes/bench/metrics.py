"""Pure measurement: normalized events -> step timing, tokens/s, loss and sanity figures; the physical ceiling
(bf16 matrix rate over the model's training FLOPs per token); and the ok / oom / failed verdict of a row."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import Any

from qwenrecipes.recipe.memory import ModelDims
from qwenrecipes.run.events import Event

# bf16 dense matrix rate measured on the H200 benchmark host (KINDS.md: 769-798 TFLOP/s on random data).
DEFAULT_PEAK_TFLOPS = 790.0
_OOM_RE = re.compile(r"OutOfMemoryError|CUDA out of memory|out of memory", re.IGNORECASE)


def flops_per_token(dims: ModelDims, seq_len: int, method: str, gradient_checkpointing: bool) -> float:
    """Training FLOPs per token: 2 per weight forward, 2 more for activation grads, 2 more for weight grads
    (full fine-tuning only: LoRA's frozen base needs none, its adapters are ~0.5% extra), and one more layer
    forward with checkpointing. Causal attention: QK^T and PV cost 2*2*seq*q_dim/2 per token per layer forward,
    twice that backward. The ceiling this gives is an upper bound: real kernels never reach the matrix rate."""
    layers_fwd = 2.0 * dims.layers * dims.layer_matmul_params
    head_fwd = 2.0 * dims.vocab * dims.hidden
    attn_fwd = 2.0 * seq_len * dims.heads * dims.head_dim * dims.layers
    forward = layers_fwd + head_fwd + attn_fwd
    activation_grads = layers_fwd + head_fwd + 2.0 * attn_fwd  # attention backward: dQ, dK, dV, dP
    weight_grads = layers_fwd + head_fwd if method == "full" else 0.0
    recompute = layers_fwd + attn_fwd if gradient_checkpointing else 0.0
    return forward + activation_grads + weight_grads + recompute


def ceiling_tokens_per_s(dims: ModelDims, seq_len: int, method: str, gradient_checkpointing: bool,
                         peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> float:
    return peak_tflops * 1e12 / flops_per_token(dims, seq_len, method, gradient_checkpointing)


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 10-20 steps it is the honest choice)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def measure(events: list[Event], tokens_per_step: Sequence[int], supervised_per_step: Sequence[int], *,
            warmup: int) -> dict[str, Any]:
    """Pure: normalized events -> timing, loss and sanity figures. Steps are 1-based; the window is steps
    warmup+1..last, timed from the end of step ``warmup`` (its log line) to the end of the last step."""
    train = sorted((e for e in events if e.get("type") == "train" and isinstance(e.get("step"), int)),
                   key=lambda e: e["step"])
    by_step: dict[int, Event] = {}
    for event in train:
        by_step.setdefault(event["step"], event)
    steps = sorted(by_step)
    out: dict[str, Any] = {"steps_logged": len(steps)}
    losses = [by_step[s].get("loss") for s in steps]
    out["loss_curve"] = [[s, by_step[s]["loss"] if finite(by_step[s].get("loss")) else None] for s in steps]
    numeric_losses = [v for v in losses if finite(v)]
    out["loss_first"] = numeric_losses[0] if numeric_losses else None
    out["loss_last"] = numeric_losses[-1] if numeric_losses else None
    out["nan_loss"] = any(v is not None and not finite(v) for v in losses)
    grads = [by_step[s].get("grad_norm") for s in steps if "grad_norm" in by_step[s]]
    out["grad_norm_first"] = grads[0] if grads and finite(grads[0]) else None
    out["grad_norm_zero"] = any(finite(g) and g == 0 for g in grads)
    out["grad_norm_nan"] = any(not finite(g) for g in grads)
    memory = [by_step[s]["memory_gb"] for s in steps if finite(by_step[s].get("memory_gb"))]
    out["engine_logged_memory_gib"] = max(memory) if memory else None
    last = steps[-1] if steps else 0
    window = [s for s in steps if warmup < s <= last]
    out["warmup_steps_excluded"] = warmup
    if warmup in by_step and len(window) >= 2 and last <= len(tokens_per_step):
        span = by_step[last]["t"] - by_step[warmup]["t"]
        # With logging_steps > 1 (no per-step GPU sync for the loss) a logged interval of k steps counts as k steps
        # of its mean duration; the tokens are every step's in the window, logged or not.
        durations = []
        for before, step in zip([warmup, *window[:-1]], window, strict=True):
            durations += [(by_step[step]["t"] - by_step[before]["t"]) / (step - before)] * (step - before)
        tokens = sum(tokens_per_step[warmup:last])
        supervised = sum(supervised_per_step[warmup:last])
        if span <= 0:
            out["timing_error"] = "log lines of the measured steps arrived at the same instant (buffered output?)"
            return out
        out.update({
            "steps_measured": f"{warmup + 1}..{last}",
            "window_s": round(span, 4),
            "tokens_measured": tokens,
            "tokens_per_step": round(tokens / (last - warmup), 1),
            "tokens_per_s": round(tokens / span, 1),
            "supervised_tokens_per_s": round(supervised / span, 1),
            "step_time_p50": round(_percentile(durations, 50), 4),
            "step_time_p95": round(_percentile(durations, 95), 4),
            "step_time_min": round(min(durations), 4),
            "step_time_max": round(max(durations), 4),
            "step_time_stdev": round(statistics.pstdev(durations), 4),
        })
        seen = [(s, by_step[s].get("tokens_seen")) for s in (warmup, last)]
        if all(finite(v) for _, v in seen) and seen[1][1] > seen[0][1]:
            out["engine_counter_tokens_per_s"] = round((seen[1][1] - seen[0][1]) / span, 1)
    else:
        out["timing_error"] = (f"{len(steps)} steps logged; timing needs step {warmup} and at least 2 steps after "
                               "it (lower --warmup or raise --steps)")
    return out


def classify_status(run_status: str, error_text: str, metrics: dict[str, Any], ceiling: float | None,
                    ) -> tuple[str, list[str]]:
    """ok / oom / failed, with the reasons. Sanity failures override an engine that exited 0."""
    reasons: list[str] = []
    if run_status != "ok":
        if _OOM_RE.search(error_text or ""):
            return "oom", ["CUDA out of memory"]
        reasons.append(f"engine run {run_status}: {(error_text or '').strip().splitlines()[-1][:300]}"
                       if (error_text or "").strip() else f"engine run {run_status}")
    if metrics.get("nan_loss"):
        reasons.append("NaN/inf loss")
    if metrics.get("grad_norm_zero"):
        reasons.append("gradient norm 0: nothing is being trained")
    if metrics.get("grad_norm_nan"):
        reasons.append("NaN gradient norm")
    if metrics.get("timing_error"):
        reasons.append(metrics["timing_error"])
    tps = metrics.get("tokens_per_s")
    if ceiling and finite(tps) and tps > ceiling:
        reasons.append(f"{tps:,.0f} tok/s is above the physical ceiling {ceiling:,.0f} tok/s: the timing is wrong")
    return ("failed" if reasons else "ok"), reasons
