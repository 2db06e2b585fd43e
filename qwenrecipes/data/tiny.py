"""Tiny random-init Qwen3 checkpoints, built with numpy + safetensors only (no torch).

The tiny model lets every engine run a real fine-tune on CPU in seconds: it has the exact Qwen3
architecture, parameter names and tokenizer, only with toy dimensions. The real-size presets are
for benchmarks: we write only their config and tokenizer, and the GPU-side loader initialises the
weights with ``from_config`` so no multi-GB file is ever written or shipped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES, qwen3_tokenizer_dir
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.paths import qwenrecipes_home

TINY_QWEN3_REF = "builtin:tiny-qwen3"
BUILTIN_PREFIX = "builtin:"

# Token ids of the real Qwen3 tokenizer: <|endoftext|> and <|im_end|>.
ENDOFTEXT_ID = 151643
IM_END_ID = 151645

# Marker key in config.json of a weightless preset directory (see build_random_qwen3).
RANDOM_INIT_KEY = "qwenrecipes_random_init"

INIT_STD = 0.02


@dataclass(frozen=True)
class Qwen3Dims:
    """The architecture numbers that differ between Qwen3 dense sizes."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 40960
    vocab_size: int = 151936
    rope_theta: float = 1000000.0


# Dimensions copied from the official Qwen/Qwen3-*/config.json files. Only 8B unties lm_head.
QWEN3_PRESETS: dict[str, Qwen3Dims] = {
    "tiny-qwen3": Qwen3Dims(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                            max_position_embeddings=4096),
    "qwen3-0.6b": Qwen3Dims(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "qwen3-1.7b": Qwen3Dims(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "qwen3-4b": Qwen3Dims(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=True),
    "qwen3-8b": Qwen3Dims(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=False),
}


def qwen3_config(dims: Qwen3Dims, *, dtype: str) -> dict[str, Any]:
    """A Qwen3ForCausalLM config.json, keyed like the official one so every engine's transformers reads it.

    Both ``torch_dtype`` (transformers 4.x) and ``dtype`` (5.x) are written because the engines pin
    different transformers majors. ``rope_theta``/``rope_scaling`` stay in the legacy flat form that the
    real checkpoints ship; transformers 5 converts it to ``rope_parameters`` itself.
    """
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "head_dim": dims.head_dim,
        "hidden_act": "silu",
        "hidden_size": dims.hidden_size,
        "initializer_range": INIT_STD,
        "intermediate_size": dims.intermediate_size,
        "layer_types": ["full_attention"] * dims.num_hidden_layers,
        "max_position_embeddings": dims.max_position_embeddings,
        "max_window_layers": dims.num_hidden_layers,
        "num_attention_heads": dims.num_attention_heads,
        "num_hidden_layers": dims.num_hidden_layers,
        "num_key_value_heads": dims.num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": dims.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": dims.tie_word_embeddings,
        "torch_dtype": dtype,
        "dtype": dtype,
        # As in the official files. Without it, transformers 5 cannot rule out a Mistral tokenizer and
        # warns about an "incorrect regex pattern" on every local load.
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": dims.vocab_size,
    }


def qwen3_generation_config() -> dict[str, Any]:
    """The generation_config.json Qwen3 ships: stop on <|im_end|> or <|endoftext|>, thinking-mode sampling."""
    return {
        "bos_token_id": ENDOFTEXT_ID,
        "do_sample": True,
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
        "pad_token_id": ENDOFTEXT_ID,
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
    }


def qwen3_tensor_shapes(dims: Qwen3Dims) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every parameter of Qwen3ForCausalLM with its shape, in a fixed order (the RNG draws in this order)."""
    h, inter = dims.hidden_size, dims.intermediate_size
    q_out = dims.num_attention_heads * dims.head_dim
    kv_out = dims.num_key_value_heads * dims.head_dim
    yield "model.embed_tokens.weight", (dims.vocab_size, h)
    for i in range(dims.num_hidden_layers):
        p = f"model.layers.{i}"
        yield f"{p}.self_attn.q_proj.weight", (q_out, h)
        yield f"{p}.self_attn.k_proj.weight", (kv_out, h)
        yield f"{p}.self_attn.v_proj.weight", (kv_out, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q_out)
        # Qwen3's QK-norm is per head, shared across heads: one head_dim vector each.
        yield f"{p}.self_attn.q_norm.weight", (dims.head_dim,)
        yield f"{p}.self_attn.k_norm.weight", (dims.head_dim,)
        yield f"{p}.mlp.gate_proj.weight", (inter, h)
        yield f"{p}.mlp.up_proj.weight", (inter, h)
        yield f"{p}.mlp.down_proj.weight", (h, inter)
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    if not dims.tie_word_embeddings:
        yield "lm_head.weight", (dims.vocab_size, h)


def _random_weights(dims: Qwen3Dims, seed: int) -> dict[str, np.ndarray]:
    """float32 weights: normal(0, 0.02) matrices, ones for RMSNorm (what from_config would give)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name, shape in qwen3_tensor_shapes(dims):
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            # Drawing directly in float32 halves memory for the 151936-row embedding.
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
    return tensors


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _copy_tokenizer(dest: Path) -> None:
    source = qwen3_tokenizer_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, dest / name)


def _atomic_build(out_dir: Path, fill: Any) -> Path:
    """Let ``fill(tmp_dir)`` write a complete checkpoint, then rename it to ``out_dir`` in one step.

    Readers therefore never see a half-written model: the directory either does not exist or is whole.
    The temp dir sits next to ``out_dir`` so the rename stays on one filesystem.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise QwenRecipesError(f"{out_dir} already exists and is not an empty directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        fill(tmp)
        # os.rename replaces an empty directory atomically on POSIX and fails on a non-empty one,
        # which is what makes concurrent builders safe (see tiny_model_path).
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def build_tiny_qwen3(
    out_dir: Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    max_position_embeddings: int = 4096,
) -> Path:
    """Write a tiny random-init Qwen3ForCausalLM checkpoint (float32, tied embeddings) to ``out_dir``.

    The same arguments always give a byte-identical model.safetensors. Returns ``out_dir``.
    """
    from safetensors.numpy import save_file

    if num_attention_heads % num_key_value_heads:
        raise QwenRecipesError(f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                               f"num_key_value_heads ({num_key_value_heads})")
    dims = replace(QWEN3_PRESETS["tiny-qwen3"], num_hidden_layers=num_layers, hidden_size=hidden_size,
                   intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
                   num_key_value_heads=num_key_value_heads, head_dim=head_dim,
                   max_position_embeddings=max_position_embeddings)

    def fill(tmp: Path) -> None:
        _write_json(tmp / "config.json", qwen3_config(dims, dtype="float32"))
        _write_json(tmp / "generation_config.json", qwen3_generation_config())
        # transformers refuses safetensors files whose metadata lacks format=pt.
        save_file(_random_weights(dims, seed), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _copy_tokenizer(tmp)

    return _atomic_build(Path(out_dir), fill)


def build_random_qwen3(out_dir: Path, preset: str = "qwen3-4b", seed: int = 0) -> Path:
    """Write config.json, generation_config.json and the tokenizer of a real-size Qwen3 preset, no weights.

    The GPU-side loader builds the model with ``from_config`` (random init, bfloat16). The preset and
    seed it should use are recorded under ``config.json[RANDOM_INIT_KEY]``; that key also tells a
    loader the directory is weightless, since ``from_pretrained`` on it would fail.
    """
    if preset not in QWEN3_PRESETS:
        raise QwenRecipesError(f"unknown Qwen3 preset {preset!r}; known: {', '.join(QWEN3_PRESETS)}")
    dims = QWEN3_PRESETS[preset]

    def fill(tmp: Path) -> None:
        config = qwen3_config(dims, dtype="bfloat16")
        config[RANDOM_INIT_KEY] = {"preset": preset, "seed": seed}
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", qwen3_generation_config())
        _copy_tokenizer(tmp)

    return _atomic_build(Path(out_dir), fill)


def tiny_model_path(seed: int = 0) -> Path:
    """The cached tiny model for ``seed`` under ``qwenrecipes_home()/models``, built on first use."""
    path = qwenrecipes_home() / "models" / f"tiny-qwen3-s{seed}"
    if (path / "model.safetensors").is_file():
        return path
    try:
        build_tiny_qwen3(path, seed=seed)
    except (QwenRecipesError, OSError):
        # Another process may have won the race to build it; its result is identical, so use it.
        if (path / "model.safetensors").is_file():
            return path
        raise
    return path


def is_builtin_model(ref: str) -> bool:
    """Whether ``ref`` names a model qwenrecipes builds itself rather than a path or hub id."""
    return ref.startswith(BUILTIN_PREFIX)


def resolve_builtin_model(ref: str) -> Path:
    """The local directory for a ``builtin:`` model reference (building it if needed)."""
    if ref == TINY_QWEN3_REF:
        return tiny_model_path(0)
    raise QwenRecipesError(f"unknown built-in model {ref!r}; the only one is {TINY_QWEN3_REF!r}")
