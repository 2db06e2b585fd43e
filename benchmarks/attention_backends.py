"""Which kernel behind torch's scaled_dot_product_attention is fastest for Qwen3-4B training shapes on this GPU.

Engines only choose `attn_implementation: sdpa`; torch then picks a backend (flash, memory-efficient, cuDNN, math)
by its priority order. This times forward + backward of one attention call at the bench shape (micro-batch 4,
seq 2048, 32 query heads, 8 KV heads, head_dim 128, causal, bf16) per backend, both as HF calls it (K/V expanded
to 32 heads, or `enable_gqa`), and reports ms per call, TFLOP/s, and ms per training step (36 layers).
Usage (GPU host): python3 benchmarks/attention_backends.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 4, 2048, 32, 8, 128, 36
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}


def causal_flops() -> float:
    """Forward + backward matmul FLOPs of one causal attention call (backward = 2.5x forward, as FA papers count)."""
    forward = 4 * BATCH * HEADS * SEQ * SEQ * HEAD_DIM / 2
    return forward * 3.5


def time_backend(backend: SDPBackend, gqa: bool, repeats: int = 20) -> float:
    q = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kv_heads = KV_HEADS if gqa else HEADS
    k = torch.randn(BATCH, kv_heads, SEQ, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    grad = torch.randn_like(q)
    with sdpa_kernel([backend]):
        for i in range(repeats + 5):
            if i == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            out = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            out.backward(grad)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="attention_backends.json")
    args = parser.parse_args()
    rows = []
    for name, backend in BACKENDS.items():
        for gqa in (False, True):
            row = {"backend": name, "kv": "enable_gqa (8 heads)" if gqa else "expanded to 32 heads"}
            try:
                seconds = time_backend(backend, gqa)
                row.update({"ms_per_call": round(seconds * 1000, 3),
                            "tflops": round(causal_flops() / seconds / 1e12, 1),
                            "ms_per_step_36_layers": round(seconds * 1000 * LAYERS, 1)})
            except Exception as exc:  # a backend that does not support the shape says so; the others still run
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "shape": {"batch": BATCH, "seq": SEQ, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM},
              "rows": rows}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
