"""Memory-aware rendering: the estimator reproduces the measured H200 points, and the per-engine decisions
(checkpointing, Liger, micro-batch) follow the GPU memory the recipe declares or nvidia-smi reports."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe import memory
from qwenrecipes.recipe.load import build_recipe
from qwenrecipes.recipe.memory import KNOWN_DIMS, estimate_peak_gib, fits, known_dims, model_dims
from qwenrecipes.recipe.plan import Plan, make_plan
from qwenrecipes.render.folder import render_plan
from qwenrecipes.render.resolve import resolve_for_engine
from tests.conftest import RECIPES

QWEN3_4B = KNOWN_DIMS["qwen3-4b"]
# (engine, method, seq_len, micro_batch, checkpointing, liger, fused LoRA kernels, measured GiB):
# torch max_memory_allocated on one H200, benchmarks/results/h200-qwen3-4b.json and benchmarks/NOTES.md.
CALIBRATION = [
    ("trl", "lora", 2048, 4, True, False, False, 11.8),
    ("trl", "lora", 2048, 4, False, False, False, 58.0),
    ("trl", "lora", 2048, 4, False, True, False, 45.3),
    ("trl", "qlora", 2048, 4, True, False, False, 6.6),
    ("trl", "lora", 8192, 1, True, False, False, 11.8),
    ("llamafactory", "lora", 2048, 4, True, False, False, 23.3),
    ("llamafactory", "lora", 2048, 4, False, False, False, 69.6),
    ("llamafactory", "qlora", 2048, 4, True, False, False, 18.3),
    ("axolotl", "lora", 2048, 4, True, False, False, 23.3),
    ("axolotl", "lora", 2048, 4, False, False, False, 69.7),
    ("axolotl", "lora", 2048, 4, False, False, True, 52.5),
    ("axolotl", "qlora", 2048, 4, True, False, False, 18.3),
    ("unsloth", "lora", 2048, 4, True, False, False, 9.6),
    ("unsloth", "lora", 2048, 4, False, False, False, 36.0),
    ("unsloth", "qlora", 2048, 4, True, False, False, 4.5),
    ("transformers", "lora", 2048, 4, True, False, False, 25.7),
    ("transformers", "lora", 2048, 4, False, False, False, 86.6),
]


PROFILES = {**{name: ENGINES[name].memory_profile for name in ENGINES}, "transformers": memory.DEFAULT_PROFILE}


@pytest.mark.parametrize("point", CALIBRATION, ids=[f"{p[0]}-{p[1]}-{p[2]}x{p[3]}-gc{int(p[4])}-liger{int(p[5])}"
                                                     f"-kernels{int(p[6])}" for p in CALIBRATION])
def test_estimator_reproduces_the_measured_points(point: tuple[Any, ...]) -> None:
    engine, method, seq_len, micro, checkpointing, liger, kernels, measured = point
    estimate = estimate_peak_gib(PROFILES[engine], QWEN3_4B, method, seq_len, micro, checkpointing, liger, kernels)
    assert abs(estimate - measured) / measured <= 0.10, (estimate, measured)


@pytest.mark.parametrize("engine", sorted(PROFILES))
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_estimate_grows_with_micro_batch_and_sequence(engine: str, method: str, checkpointing: bool) -> None:
    for liger in (False, True):
        by_batch = [estimate_peak_gib(PROFILES[engine], QWEN3_4B, method, 2048, mb, checkpointing, liger)
                    for mb in (1, 2, 4, 8)]
        by_seq = [estimate_peak_gib(PROFILES[engine], QWEN3_4B, method, seq, 2, checkpointing, liger, attn="eager")
                  for seq in (512, 1024, 2048, 4096)]
        assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
        assert by_seq == sorted(by_seq) and len(set(by_seq)) == 4


def test_estimate_parts_follow_the_physics() -> None:
    lora = memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "lora", 2048, 4, True, False)
    assert lora["weights"] == pytest.approx(QWEN3_4B.params * 2 / memory.GIB)  # bf16 weights, ~7.5 GiB
    qlora = memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "qlora", 2048, 4, True, False)
    assert qlora["weights"] < lora["weights"] / 2.5
    full = memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "full", 2048, 4, True, False, optimizer="adamw_torch")
    assert full["trainable_state"] == pytest.approx(QWEN3_4B.params * (2 + 8) / memory.GIB)  # grads + fp32 moments
    eight_bit = memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "full", 2048, 4, True, False,
                                          optimizer="adamw_8bit")
    assert eight_bit["trainable_state"] < full["trainable_state"]
    fused = memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "lora", 2048, 4, True, True)
    assert fused["logits"] == 0 and lora["logits"] > 0
    dropout = memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "lora", 2048, 4, False, False, lora_dropout=0.05)
    assert dropout["activations"] > memory.estimate_breakdown(PROFILES["trl"], QWEN3_4B, "lora", 2048, 4, False, False)[
        "activations"]


def test_fit_rule_converts_gb_to_gib() -> None:
    assert memory.gib_of_gb(24) == pytest.approx(22.35, abs=0.01)
    limit = (memory.gib_of_gb(24) - memory.FIT_HEADROOM_GIB) / memory.FIT_FACTOR
    assert fits(limit - 0.01, 24) and not fits(limit + 0.01, 24)


# ---------------------------------------------------------------------------------------- model dims
def test_known_dims_match_the_hub_ids() -> None:
    assert known_dims("Qwen/Qwen3-4B") == QWEN3_4B
    assert known_dims("Qwen/Qwen3-4B-Instruct-2507") == QWEN3_4B
    assert known_dims("Qwen/Qwen2.5-7B-Instruct") == KNOWN_DIMS["qwen2.5-7b"]
    assert known_dims("Qwen/Qwen3-14B").hidden == 5120 and not known_dims("Qwen/Qwen3-14B").tied
    assert known_dims("someone/llama-7b") is None
    # Qwen3-4B has 4.02 B parameters (3.63 B in the layers' matmuls + the tied 0.39 B embedding).
    assert 4.0e9 < QWEN3_4B.params < 4.05e9


def test_local_and_builtin_models_read_config_json(tmp_path: Path) -> None:
    from qwenrecipes.data.tiny import QWEN3_PRESETS, qwen3_config, resolve_builtin_model

    (tmp_path / "config.json").write_text(json.dumps(qwen3_config(QWEN3_PRESETS["qwen3-8b"], dtype="bfloat16")))
    assert model_dims(str(tmp_path)) == KNOWN_DIMS["qwen3-8b"]
    tiny = model_dims(str(resolve_builtin_model("builtin:tiny-qwen3")))
    assert tiny is not None and tiny.hidden == 64 and tiny.layers == 2
    assert model_dims(str(tmp_path / "absent")) is None


# -------------------------------------------------------------------------------------- nvidia-smi
def _fake_smi(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "args"


def test_detects_the_first_visible_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _fake_smi(tmp_path, "echo 143771", monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert memory.detect_gpu_memory_gb() == pytest.approx(150.76, abs=0.01)  # MiB -> GB
    assert "--query-gpu=memory.total --format=csv,noheader,nounits" in args.read_text()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    memory.detect_gpu_memory_gb()
    assert args.read_text().split()[-2:] == ["-i", "3"]


@pytest.mark.parametrize("body", ["exit 9", "echo 'No devices were found'", "true"])
def test_unreadable_nvidia_smi_means_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    _fake_smi(tmp_path, body, monkeypatch)
    assert memory.detect_gpu_memory_gb() is None


# ----------------------------------------------------------------------------------------- decisions
def bench_plan(target: str = "cuda", **changes: dict[str, Any]) -> Plan:
    """Qwen3-4B LoRA r=16 on all 7 projections, dropout 0, seq 2048, micro-batch 4: the calibration shape."""
    document: dict[str, Any] = {
        "model": {"name_or_path": "Qwen/Qwen3-4B", "chat_template": "qwen3_nothink", "dtype": "bfloat16"},
        "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "data": {"train": {"path": "data/chat.jsonl"}, "max_seq_length": 2048},
        "training": {"max_steps": 10, "warmup_steps": 2, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                     "optimizer": "adamw_torch", "precision": "bf16" if target == "cuda" else "fp32"},
    }
    for section, values in changes.items():
        document.setdefault(section, {}).update(values)
    return make_plan(build_recipe(document, RECIPES / "memory-test.yaml"), target=target)


def training_of(plan: Plan, engine: str) -> dict[str, Any]:
    return resolve_for_engine(plan, engine).recipe.training


def test_h200_turns_checkpointing_off_everywhere_and_liger_on_where_supported() -> None:
    plan = bench_plan(hardware={"gpu_memory_gb": 141})
    for engine in ENGINES:  # every registered engine; liger_kernel: auto follows what its config can switch on
        training = training_of(plan, engine)
        assert training["gradient_checkpointing"] is False, engine
        # unsloth fuses with its own kernels; swift's env lock has no liger-kernel (its notes say so)
        assert training["liger_kernel"] is ENGINES[engine].supports_liger, engine
        assert (training["micro_batch_size"], training["gradient_accumulation_steps"]) == (4, 1)
    trl = yaml.safe_load(render_plan(plan, "trl").files["trl_config.yaml"])
    assert trl["gradient_checkpointing"] is False and trl["use_liger_kernel"] is True and trl["loss_type"] == "nll"
    lf = yaml.safe_load(render_plan(plan, "llamafactory").files["llamafactory.yaml"])
    assert lf["disable_gradient_checkpointing"] is True and lf["enable_liger_kernel"] is True
    axolotl = yaml.safe_load(render_plan(plan, "axolotl").files["axolotl.yaml"])
    assert axolotl["gradient_checkpointing"] is False and axolotl["liger_fused_linear_cross_entropy"] is True
    assert axolotl["lora_mlp_kernel"] is True
    unsloth = render_plan(plan, "unsloth").files["train_unsloth.py"]
    assert "use_gradient_checkpointing=False" in unsloth and "use_gradient_checkpointing=\"unsloth\"" not in unsloth


def test_24_gb_keeps_checkpointing_and_splits_the_micro_batch_where_needed() -> None:
    # Liger off, as in benchmarks/recipes/qwen3-4b-lora-2048.yaml (the measured reference shape).
    plan = bench_plan(hardware={"gpu_memory_gb": 24}, training={"liger_kernel": False})
    chosen = {engine: training_of(plan, engine) for engine in ENGINES}
    assert all(t["gradient_checkpointing"] is True for t in chosen.values())
    # LLaMA-Factory: 23.3 GiB measured at micro-batch 4 (~25 GB) does not fit: split into 2 x 2.
    assert (chosen["llamafactory"]["micro_batch_size"], chosen["llamafactory"]["gradient_accumulation_steps"]) == (2, 2)
    assert (chosen["unsloth"]["micro_batch_size"], chosen["unsloth"]["gradient_accumulation_steps"]) == (4, 1)
    assert (chosen["trl"]["micro_batch_size"], chosen["trl"]["gradient_accumulation_steps"]) == (4, 1)
    for engine in ENGINES:
        resolved = resolve_for_engine(plan, engine)
        assert resolved.effective_batch == plan.effective_batch == 4
        assert resolved.memory is not None and resolved.memory["fits"] is True
    rendered = render_plan(plan, "llamafactory")
    split = [w for w in rendered.warnings if w.startswith("training.micro_batch_size")]
    assert len(split) == 1 and "at 4" in split[0] and "at 2" in split[0] and "24 GB, declared" in split[0]
    lf = yaml.safe_load(rendered.files["llamafactory.yaml"])
    assert (lf["per_device_train_batch_size"], lf["gradient_accumulation_steps"]) == (2, 2)
    summary = yaml.safe_load(rendered.files["recipe.resolved.yaml"])["resolved"]["memory"]
    assert summary["gpu_memory_source"] == "declared" and summary["micro_batch_size"] == 2
    assert "split 4 x 1 into 2 x 2" in summary["why"]["micro_batch_size"]
    assert not [w for w in render_plan(plan, "unsloth").warnings if "micro_batch_size" in w]
    # With Liger left to auto, LLaMA-Factory's 11.5 GiB of fp32 logits are gone and micro-batch 4 fits.
    auto = bench_plan(hardware={"gpu_memory_gb": 24})
    assert (training_of(auto, "llamafactory")["micro_batch_size"], training_of(auto, "llamafactory")[
        "liger_kernel"]) == (4, True)


def test_cpu_turns_checkpointing_and_liger_off() -> None:
    plan = bench_plan(target="cpu", model={"name_or_path": "builtin:tiny-qwen3", "dtype": "auto"})
    for engine in ENGINES:
        training = training_of(plan, engine)
        assert training["gradient_checkpointing"] is False and training["liger_kernel"] is False
        assert training["micro_batch_size"] == 4


def test_qlora_never_gets_liger_by_auto() -> None:
    plan = bench_plan(method={"type": "qlora"}, hardware={"gpu_memory_gb": 141})
    assert all(training_of(plan, engine)["liger_kernel"] is False for engine in ENGINES)


def test_explicit_values_are_kept() -> None:
    plan = bench_plan(hardware={"gpu_memory_gb": 24}, training={"gradient_checkpointing": False, "liger_kernel": False})
    resolved = resolve_for_engine(plan, "trl")
    assert resolved.recipe.training["gradient_checkpointing"] is False
    assert resolved.recipe.training["liger_kernel"] is False
    assert any(w.startswith("training.gradient_checkpointing: false is kept") for w in resolved.warnings)
    on = bench_plan(hardware={"gpu_memory_gb": 141}, training={"gradient_checkpointing": True})
    assert training_of(on, "trl")["gradient_checkpointing"] is True


def test_micro_batch_one_that_does_not_fit_is_a_recipe_problem() -> None:
    plan = bench_plan(model={"name_or_path": "Qwen/Qwen3-14B"}, method={"type": "full"},
                      hardware={"gpu_memory_gb": 24})
    with pytest.raises(RecipeError) as caught:
        render_plan(plan, "trl")
    problem = caught.value.problems[0]
    assert problem.path == "training.micro_batch_size" and problem.file.endswith("memory-test.yaml")
    assert "micro-batch 1 with gradient checkpointing is estimated at" in problem.message
    assert "24 GB, declared" in problem.message


def test_unknown_memory_assumes_24_gb_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "detect_gpu_memory_gb", lambda: None)
    plan = bench_plan()
    assert (plan.gpu_memory_gb, plan.gpu_memory_source) == (24.0, "assumed")
    assert any("assuming 24 GB" in w for w in plan.warnings)
    assert plan.summary()["memory"]["gpu_memory_source"] == "assumed"
    monkeypatch.setattr(memory, "detect_gpu_memory_gb", lambda: 80.0)
    detected = bench_plan()
    assert (detected.gpu_memory_gb, detected.gpu_memory_source) == (80.0, "detected")
    assert not any("GPU memory" in w for w in detected.warnings)
    assert training_of(detected, "unsloth")["gradient_checkpointing"] is False  # 36 GiB fits 80 GB


def test_a_model_without_dims_keeps_checkpointing_on() -> None:
    plan = bench_plan(model={"name_or_path": "someone/custom-model"}, hardware={"gpu_memory_gb": 141})
    resolved = resolve_for_engine(plan, "trl")
    assert resolved.recipe.training["gradient_checkpointing"] is True
    assert any("no memory estimate" in w for w in resolved.warnings)


def test_liger_true_on_cpu_is_refused() -> None:
    with pytest.raises(RecipeError) as caught:
        bench_plan(target="cpu", model={"name_or_path": "builtin:tiny-qwen3", "dtype": "auto"},
                   training={"liger_kernel": True})
    assert [p.path for p in caught.value.problems] == ["training.liger_kernel"]


def test_resolution_is_idempotent_and_per_engine() -> None:
    plan = bench_plan(hardware={"gpu_memory_gb": 24})
    resolved = resolve_for_engine(plan, "llamafactory")
    assert resolve_for_engine(resolved, "llamafactory") is resolved
    assert render_plan(resolved, "llamafactory").files == render_plan(plan, "llamafactory").files
    assert plan.recipe.training["gradient_checkpointing"] == "auto"  # the original plan is untouched
