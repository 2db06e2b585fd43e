"""The engine-side probe: a ``sitecustomize`` put first on the engine's PYTHONPATH that reports torch's peak CUDA
memory at exit (optionally capping the allocator), can reorder torch's SDPA backends and can trace a few steps with
torch.profiler; and the readers of the lines it prints (they arrive as ``raw`` events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwenrecipes.run.events import Event

MEMORY_MARK = "QWENRECIPES_BENCH_MEMORY "
PROFILE_MARK = "QWENRECIPES_BENCH_PROFILE "
SHIM_DIR = ".bench-shim"

_SHIM = r'''"""qwenrecipes bench probe: report torch's peak CUDA memory when the engine process exits. Optional
QWENRECIPES_BENCH_MEMORY_CAP_GB caps the process's CUDA allocator (shows a recipe fits a smaller card)."""
import atexit
import json
import os
import sys

_CAP = os.environ.get("QWENRECIPES_BENCH_MEMORY_CAP_GB")
if _CAP:
    try:
        import torch as _torch

        if _torch.cuda.is_available():
            _total = _torch.cuda.get_device_properties(0).total_memory
            _torch.cuda.set_per_process_memory_fraction(min(1.0, float(_CAP) * 1024**3 / _total), 0)
    except Exception as _exc:  # never break the engine over the probe
        print("QWENRECIPES_BENCH_CAP_FAILED " + repr(_exc), file=sys.stderr, flush=True)


def _qwenrecipes_bench_report():
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        info = {"max_allocated_gib": torch.cuda.max_memory_allocated() / 1024**3,
                "max_reserved_gib": torch.cuda.max_memory_reserved() / 1024**3,
                "device": torch.cuda.get_device_name(0), "cap_gb": float(_CAP) if _CAP else None}
        sys.stderr.write("QWENRECIPES_BENCH_MEMORY " + json.dumps(info) + "\n")
        sys.stderr.flush()
    except Exception:
        pass


atexit.register(_qwenrecipes_bench_report)

# QWENRECIPES_BENCH_SDPA_PRIORITY=cudnn,flash,efficient,math: torch's scaled_dot_product_attention backend order
# for the whole process (an experiment knob: engines only choose "sdpa", torch picks the kernel behind it).
_SDPA = os.environ.get("QWENRECIPES_BENCH_SDPA_PRIORITY")
if _SDPA:
    try:
        import torch as _torch
        from torch.nn.attention import SDPBackend as _B

        _names = {"cudnn": _B.CUDNN_ATTENTION, "flash": _B.FLASH_ATTENTION, "efficient": _B.EFFICIENT_ATTENTION,
                  "math": _B.MATH}
        _order = [_names[n.strip()] for n in _SDPA.split(",") if n.strip()]
        _torch._C._set_sdp_priority_order([int(b) for b in _order])
        print("QWENRECIPES_BENCH_SDPA " + ",".join(b.name for b in _order), file=sys.stderr, flush=True)
    except Exception as _exc:
        print("QWENRECIPES_BENCH_SDPA_FAILED " + repr(_exc), file=sys.stderr, flush=True)

# QWENRECIPES_BENCH_PROFILE=FIRST:COUNT traces optimizer steps FIRST..FIRST+COUNT-1 with torch.profiler (any engine:
# the trigger is a global optimizer-step hook) and prints GPU kernel time per step by kind: where a step goes.
_PROFILE = os.environ.get("QWENRECIPES_BENCH_PROFILE")
if _PROFILE:
    try:
        import re as _re
        import time as _time

        import torch as _torch
        from torch.optim.optimizer import register_optimizer_step_post_hook as _post_hook

        _first, _count = (int(x) for x in _PROFILE.split(":"))
        _kinds = [("attention", r"flash|fmha|attention|sdpa|cudnn"),
                  ("gemm", r"gemm|nvjet|cutlass|xmma|cublas|matmul|splitK|Kernel2"),
                  ("optimizer", r"multi_tensor|adam|foreach"),
                  ("triton", r"^triton|_kernel$|_fwd|_bwd|_forward|_backward"),
                  ("elementwise", r"elementwise|vectorized|reduce|copy|fill|Cat|index|where|softmax|log_softmax")]
        _prof = {"step": 0, "p": None, "t0": 0.0}

        def _summarize(prof, wall):
            total, kinds, top = 0.0, {}, []
            for evt in prof.key_averages():
                # record_function ranges (e.g. "Optimizer.step#AdamW.step") also appear on the GPU timeline as
                # user annotations spanning their kernels: counting them would count those kernels twice.
                annotation = (getattr(evt, "is_user_annotation", False)
                              or evt.key.startswith(("Optimizer.", "ProfilerStep")))
                if str(getattr(evt, "device_type", "")).endswith("CUDA") and not annotation:
                    us = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
                    total += us
                    kind = next((k for k, rx in _kinds if _re.search(rx, evt.key, _re.I)), "other")
                    kinds[kind] = kinds.get(kind, 0.0) + us
                    top.append((us, evt.key[:90], evt.count))
            top.sort(reverse=True)
            ms = 1000.0 * _count
            return {"steps": _count, "wall_ms_per_step": round(wall * 1000 / _count, 2),
                    "kernel_ms_per_step": round(total / ms, 2),
                    "by_kind_ms_per_step": {k: round(v / ms, 2) for k, v in sorted(kinds.items(), key=lambda x: -x[1])},
                    "top_kernels": [[name, round(us / ms, 3), round(n / _count, 1)] for us, name, n in top[:20]]}

        def _sync():
            if _torch.cuda.is_available():
                _torch.cuda.synchronize()

        def _on_step(optimizer, args, kwargs):
            _prof["step"] += 1
            if _prof["step"] == _first - 1:
                _sync()
                p = _torch.profiler.profile(activities=[_torch.profiler.ProfilerActivity.CPU,
                                                        _torch.profiler.ProfilerActivity.CUDA])
                p.__enter__()
                _prof["p"], _prof["t0"] = p, _time.perf_counter()
            elif _prof["step"] == _first - 1 + _count and _prof["p"] is not None:
                _sync()
                wall = _time.perf_counter() - _prof["t0"]
                p, _prof["p"] = _prof["p"], None
                p.__exit__(None, None, None)
                print("QWENRECIPES_BENCH_PROFILE " + json.dumps(_summarize(p, wall)), file=sys.stderr, flush=True)

        _post_hook(_on_step)
    except Exception as _exc:
        print("QWENRECIPES_BENCH_PROFILE_FAILED " + repr(_exc), file=sys.stderr, flush=True)
'''


def write_shim(out_dir: Path) -> Path:
    folder = out_dir / SHIM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SHIM, encoding="utf-8")
    return folder


def memory_probe(events: list[Event]) -> dict[str, Any] | None:
    """The shim's exit line (a `raw` event): torch max_allocated / max_reserved inside the engine."""
    return shim_line(events, MEMORY_MARK)


def shim_line(events: list[Event], mark: str) -> dict[str, Any] | None:
    """The JSON payload of the shim's last line starting with ``mark`` (memory at exit, kernel profile)."""
    for event in reversed(events):
        message = event.get("message")
        if isinstance(message, str) and message.startswith(mark):
            try:
                value = json.loads(message[len(mark):])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None
