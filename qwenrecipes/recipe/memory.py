"""Peak GPU memory of a training step, per engine: the estimate behind the memory-aware settings.

``estimate_peak_gib`` is a small physical model, in GiB of torch's ``max_memory_allocated`` (what the
bench reports), of one optimizer step at the worst case (every row of the micro-batch as long as
``max_seq_length``):

- frozen weights: every parameter in the model dtype (LoRA); layer matmuls in 4-bit + block constants,
  embeddings/lm_head in the compute dtype (QLoRA);
- trainable state: LoRA adapters in fp32 (weight + grad + optimizer state); ``modules_to_save`` copies;
  full fine-tuning: weights and grads in the model dtype + AdamW moments in fp32 (8 bytes/param, 2 for
  the 8-bit optimizers) -- an assumption: torch's AdamW on bf16 weights keeps bf16 moments (less), mixed
  precision with fp32 master weights keeps 4 bytes more per parameter (more);
- activations per token per layer, counted from what autograd keeps in a Qwen3 decoder layer (fp32
  RMSNorm inputs, q/k norms, RoPE, sdpa's q/k/v/out, the SwiGLU tensors, LoRA dropout copies), times an
  engine coefficient; with checkpointing, only each layer's input plus one layer being recomputed;
- logits per token: the engines that upcast the full 151,936-wide logits to fp32 pay ~10 bytes per
  vocab entry, a chunked loss ~0.5, a fused linear cross-entropy (Liger's or the engine's own) nothing;
- a fixed allowance per engine.

The engine coefficients (``EngineProfile``, each engine's ``memory_profile``) are calibrated on measured H200
points; the fit rule is
``FIT_FACTOR`` x estimate + ``FIT_HEADROOM_GIB`` <= the GPU's memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
GB = 1000**3
MIB = 1024**2
# Fit rule: the estimate times FIT_FACTOR plus FIT_HEADROOM_GIB (CUDA context, allocator fragmentation, the
# caching allocator's reserve above max_allocated) must not exceed the GPU's memory.
FIT_FACTOR = 1.10
FIT_HEADROOM_GIB = 1.5
# When neither the recipe nor nvidia-smi says how much memory the GPU has: the common consumer card.
ASSUMED_GPU_MEMORY_GB = 24.0
NVIDIA_SMI_TIMEOUT_S = 5.0

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Optimizer state bytes per trainable parameter (the AdamW family: two moments).
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8.0, "adamw_torch_fused": 8.0, "paged_adamw_32bit": 8.0, "adamw_8bit": 2.0,
                         "paged_adamw_8bit": 2.0, "sgd": 0.0, "adafactor": 0.0}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# --------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelDims:
    """A Qwen decoder's shape, read from its config.json (or KNOWN_DIMS for hub ids)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelDims:
        heads = int(config["num_attention_heads"])
        return cls(hidden=int(config["hidden_size"]), intermediate=int(config["intermediate_size"]),
                   layers=int(config["num_hidden_layers"]), heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
                   vocab=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", False)))

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_matmul_params(self) -> int:
        attention = self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden
        return attention + 3 * self.hidden * self.intermediate

    @property
    def matmul_params(self) -> int:
        # lm_head is a matmul whether or not it is tied to the embedding; the embedding lookup is not.
        return self.layers * self.layer_matmul_params + self.vocab * self.hidden

    @property
    def embedding_params(self) -> int:
        """embed_tokens, plus lm_head when it is not tied to it."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = self.layers * (2 * self.hidden + 2 * self.head_dim) + self.hidden
        return self.layers * self.layer_matmul_params + self.embedding_params + norms

    def module_shape(self, name: str) -> tuple[int, int] | None:
        """(in_features, out_features) of a decoder projection, None for a name that is not one."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}.get(name)


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tied: bool) -> ModelDims:
    return ModelDims(hidden, intermediate, layers, heads, kv_heads, 128, 151936, tied)


# Hub ids whose config.json is not on this machine: the values of their public config.json files.
KNOWN_DIMS: dict[str, ModelDims] = {
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, 8, tied=True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, 8, tied=True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, 8, tied=True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, 8, tied=False),
    "qwen3-14b": _qwen3(5120, 17408, 40, 40, 8, tied=False),
    "qwen2.5-0.5b": ModelDims(896, 4864, 24, 14, 2, 64, 151936, tied=True),
    "qwen2.5-1.5b": ModelDims(1536, 8960, 28, 12, 2, 128, 151936, tied=True),
    "qwen2.5-3b": ModelDims(2048, 11008, 36, 16, 2, 128, 151936, tied=True),
    "qwen2.5-7b": ModelDims(3584, 18944, 28, 28, 4, 128, 152064, tied=False),
}


def read_model_config(model_path: str) -> dict[str, Any] | None:
    """A local model folder's config.json, or None (hub id, missing or unreadable file)."""
    try:
        path = Path(model_path).expanduser() / "config.json"
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError):  # RuntimeError: `~someone` for a user this machine does not know
        return None
    return value if isinstance(value, dict) else None


def known_dims(name: str) -> ModelDims | None:
    """Dims of a known hub id: ``Qwen/Qwen3-4B``, ``Qwen/Qwen3-4B-Base``, ``Qwen/Qwen2.5-7B-Instruct``..."""
    stem = name.rstrip("/").rsplit("/", 1)[-1].lower()
    matches = [key for key in KNOWN_DIMS if stem == key or stem.startswith(f"{key}-")]
    return KNOWN_DIMS[max(matches, key=len)] if matches else None


def model_dims(model_path: str) -> ModelDims | None:
    """A local folder's config.json (builtin models are resolved to one), else the known hub table."""
    config = read_model_config(model_path)
    if config is not None:
        try:
            return ModelDims.from_config(config)
        except (KeyError, TypeError, ValueError):
            return None
    return known_dims(model_path)


# -------------------------------------------------------------------------------------- GPU memory
def detect_gpu_memory_gb() -> float | None:
    """Total memory of the first visible GPU in GB, from nvidia-smi (cheap: no torch import); None when unknown."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    argv = [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible:
        argv += ["-i", visible]  # nvidia-smi ignores CUDA_VISIBLE_DEVICES; it takes an index or a UUID
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return None
    try:
        mib = float(lines[0].strip())
    except ValueError:
        return None
    return round(mib * MIB / GB, 2) if mib > 0 else None


def gib_of_gb(gb: float) -> float:
    return gb * GB / GIB


def fits(estimate_gib: float, memory_gb: float) -> bool:
    """The fit rule: estimate x FIT_FACTOR + FIT_HEADROOM_GIB <= the GPU's memory."""
    return estimate_gib * FIT_FACTOR + FIT_HEADROOM_GIB <= gib_of_gb(memory_gb)


# -------------------------------------------------------------------------------------- estimator
@dataclass(frozen=True)
class EngineProfile:
    """Per-engine coefficients of the estimate (each engine's ``memory_profile``)."""

    fixed_gib: float  # allowance the step always holds (cuBLAS/attention workspaces, buffers)
    activations: float  # x the counted activations kept per layer (no checkpointing)
    checkpoints: float  # x the layer inputs kept with checkpointing (an engine may offload some to CPU)
    logits_bytes: float  # bytes per token per vocab entry for the loss when it is not fused
    liger: float  # activation factor with Liger's fused RMSNorm / SwiGLU / RoPE
    lora_kernels: float  # activation factor with fused LoRA kernels (Engine.lora_kernels)
    fused_loss: bool = False  # the loss never materialises the logits (the engine's own fused cross-entropy)


# Calibrated on torch max_memory_allocated (GiB) measured on one H200 (benchmarks/results/h200-qwen3-4b.json,
# benchmarks/NOTES.md): random-init Qwen3-4B, seq 2048 x micro-batch 4, LoRA r=16 on the 7 projections,
# dropout 0, bf16, adamw_torch. Each engine's profile and its row of the measurements live with the engine
# (``Engine.memory_profile`` in engines/<name>/). The counted activations (48.9 GiB at 8192 tokens) match
# the plainest Trainer setups without checkpointing (activations 1.0).
# The plain transformers+peft script (25.7 GiB ckpt on, 86.6 off) keeps 1.3x the counted activations and
# fp32 logits: the conservative default for an engine that brings no profile of its own.
DEFAULT_PROFILE = EngineProfile(fixed_gib=0.5, activations=1.31, checkpoints=1.0, logits_bytes=12.1, liger=0.753,
                                lora_kernels=1.0)


def layer_activation_bytes(dims: ModelDims, *, dtype_bytes: int, lora_dropout: float = 0.0,
                           target_modules: tuple[str, ...] = ALL_LINEAR, seq_len: int = 0,
                           attn: str = "sdpa") -> float:
    """Bytes autograd keeps per token in one decoder layer (no checkpointing), counted tensor by tensor."""
    b = dtype_bytes
    h, q, kv, i = dims.hidden, dims.q_dim, dims.kv_dim, dims.intermediate
    norms = 2 * h * (4 + b)  # input/post-attention RMSNorm: the fp32 upcast input + the normalised output
    qk_norms = (q + kv) * (4 + b)  # Qwen3's q_norm / k_norm, same pattern on the head dims
    rope = (q + kv) * b  # rotate_half(q), rotate_half(k)
    attention = (2 * q + 2 * kv) * b  # sdpa keeps q, k, v and its output
    o_input = q * b  # the transposed attention output, copied contiguous for o_proj
    mlp = 4 * i * b  # gate, up, silu(gate), silu(gate) * up
    total = float(norms + qk_norms + rope + attention + o_input + mlp)
    if lora_dropout > 0:  # each LoRA path keeps its dropped input and the mask
        total += sum((dims.module_shape(m) or (0, 0))[0] * (b + 1) for m in target_modules)
    if attn == "eager":  # the fp32 softmax and its bf16 copy: heads x seq per token
        total += dims.heads * seq_len * (4 + b)
    return total


def estimate_breakdown(profile: EngineProfile, dims: ModelDims, method: str, seq_len: int, micro_batch: int,
                       gradient_checkpointing: bool, liger: bool, fused_lora_kernels: bool = False, *,
                       lora_r: int = 16, target_modules: tuple[str, ...] = ALL_LINEAR, lora_dropout: float = 0.0,
                       modules_to_save: tuple[str, ...] = (), dtype_bytes: int = 2, optimizer: str = "adamw_torch",
                       double_quant: bool = True, attn: str = "sdpa", gpus: int = 1, strategy: str = "none",
                       zero_offload: bool = False) -> dict[str, float]:
    """The estimate's parts in GiB: weights, trainable state, activations, logits, fixed."""
    tokens = seq_len * micro_batch
    opt = 0.0 if zero_offload else OPTIMIZER_STATE_BYTES.get(optimizer, 8.0)
    shard_state = gpus if strategy in ("deepspeed_zero2", "deepspeed_zero3", "fsdp") else 1
    shard_weights = gpus if strategy in ("deepspeed_zero3", "fsdp") else 1

    if method == "qlora":
        block_constants = 1 / 64 if double_quant else 4 / 64  # one absmax per 64 weights: fp8 or fp32
        weights = dims.layers * dims.layer_matmul_params * (0.5 + block_constants) + (
            dims.params - dims.layers * dims.layer_matmul_params) * dtype_bytes
    else:
        weights = dims.params * dtype_bytes
    if method == "full":
        state = dims.params * (dtype_bytes + opt)  # grads in the model dtype + the optimizer's moments
    else:
        adapters = sum(lora_r * sum(dims.module_shape(m) or (0, 0)) for m in target_modules) * dims.layers
        state = adapters * (4 + 4 + opt)  # fp32 adapter weights and grads
        state += dims.vocab * dims.hidden * len(modules_to_save) * (2 * dtype_bytes + opt)

    per_layer = layer_activation_bytes(dims, dtype_bytes=dtype_bytes, lora_dropout=lora_dropout,
                                       target_modules=target_modules, seq_len=seq_len, attn=attn)
    per_layer *= profile.activations * (profile.liger if liger else 1.0)
    per_layer *= profile.lora_kernels if fused_lora_kernels and method != "full" else 1.0
    if gradient_checkpointing:
        # Each layer's input stays; during the backward one layer at a time is recomputed in full.
        kept = dims.layers * dims.hidden * dtype_bytes * profile.checkpoints + per_layer
    else:
        kept = dims.layers * per_layer
    fused = liger or profile.fused_loss
    logits = 0.0 if fused else dims.vocab * profile.logits_bytes * (dtype_bytes / 2)
    return {
        "weights": weights / shard_weights / GIB,
        "trainable_state": state / shard_state / GIB,
        "activations": kept * tokens / GIB,
        "logits": logits * tokens / GIB,
        "fixed": profile.fixed_gib,
    }


def estimate_peak_gib(profile: EngineProfile, dims: ModelDims, method: str, seq_len: int, micro_batch: int,
                      gradient_checkpointing: bool, liger: bool, fused_lora_kernels: bool = False,
                      **options: Any) -> float:
    """Estimated torch peak allocation (GiB) of one training step on one GPU; options as estimate_breakdown."""
    parts = estimate_breakdown(profile, dims, method, seq_len, micro_batch, gradient_checkpointing, liger,
                               fused_lora_kernels, **options)
    return sum(parts.values())
