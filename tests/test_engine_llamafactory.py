"""LLaMA-Factory render: YAML, CLI-args and dataset_info agree, every knob explicit, effective() reads back."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
import yaml

from qwenrecipes.engines.llamafactory.engine import ENGINE, LOSS_MASK_LF
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.concepts import CONCEPTS, LOSS_MASK_ALL, THINK_INLINE, TRUNCATION_NONE
from qwenrecipes.recipe.load import ALL_LINEAR
from qwenrecipes.recipe.plan import Plan
from tests.conftest import render_resolved, tiny_plan


@pytest.fixture(scope="module")
def cpu_plan() -> Plan:
    return tiny_plan({}, target="cpu")  # the text handoff (conftest)


@pytest.fixture(scope="module")
def qlora_plan() -> Plan:
    return tiny_plan({
        "method": {"type": "qlora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                             "target_modules": ["q_proj", "v_proj"],
                                             "use_dora": True, "modules_to_save": ["embed_tokens", "lm_head"]},
                   "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                    "compute_dtype": "bfloat16"}},
        "training": {"precision": "bf16", "optimizer": "paged_adamw_8bit", "gradient_checkpointing": True,
                     "save_steps": None, "eval_steps": 5},
        "data": {"val_fraction": 0.1},  # packed bins are refused (test_packed_bins_refused_with_reason)
        "distributed": {"gpus": 2, "strategy": "deepspeed_zero2"},
    })


def _cfg(plan: Plan) -> dict[str, Any]:
    return yaml.safe_load(render_resolved(ENGINE, plan)["llamafactory.yaml"])


def test_cpu_lora_every_knob_explicit(cpu_plan: Plan) -> None:
    cfg = _cfg(cpu_plan)
    assert cfg["model_name_or_path"] == cpu_plan.model_path
    assert cfg["stage"] == "sft" and cfg["do_train"] is True and cfg["finetuning_type"] == "lora"
    assert (cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_dropout"]) == (8, 16, 0.0)
    assert cfg["lora_target"] == ",".join(ALL_LINEAR) and cfg["additional_target"] is None
    assert cfg["use_dora"] is False and cfg["use_rslora"] is False
    assert cfg["template"] == "qwen3_nothink" and cfg["enable_thinking"] is False
    assert cfg["cutoff_len"] == 512 and cfg["packing"] is False and cfg["neat_packing"] is False
    assert cfg["train_on_prompt"] is False and cfg["mask_history"] is False
    assert cfg["val_size"] == 0.0 and "eval_dataset" not in cfg
    assert cfg["overwrite_output_dir"] is True and cfg["resume_from_checkpoint"] is None
    assert cfg["learning_rate"] == 0.001 and cfg["lr_scheduler_type"] == "cosine"
    assert cfg["warmup_steps"] == cpu_plan.warmup_steps == 3
    assert cfg["max_steps"] == cpu_plan.max_steps == 30
    assert cfg["optim"] == "adamw_torch" and cfg["weight_decay"] == 0.0 and cfg["max_grad_norm"] == 1.0
    assert (cfg["bf16"], cfg["fp16"], cfg["tf32"], cfg["pure_bf16"]) == (False, False, False, False)
    assert cfg["seed"] == 42 and cfg["disable_shuffling"] is True
    assert cfg["disable_gradient_checkpointing"] is True
    assert cfg["flash_attn"] == "sdpa" and cfg["enable_liger_kernel"] is False
    assert cfg["per_device_train_batch_size"] == 4 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["logging_steps"] == 1 and cfg["save_steps"] == 10 and cfg["save_total_limit"] == 2
    assert cfg["eval_strategy"] == "no" and cfg["report_to"] == "none" and cfg["plot_loss"] is False
    assert cfg["output_dir"] == "outputs" and cfg["dataset_dir"] == "data"
    assert "quantization_bit" not in cfg and "deepspeed" not in cfg


def test_dataset_info(cpu_plan: Plan) -> None:
    files = render_resolved(ENGINE, cpu_plan)
    cfg = yaml.safe_load(files["llamafactory.yaml"])
    info = json.loads(files["data/dataset_info.json"])
    entry = info[cfg["dataset"]]
    assert f"{cfg['dataset_dir']}/{entry['file_name']}" == cpu_plan.train_file
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages"}
    assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant", "system_tag": "system"}


@pytest.mark.parametrize("which", ["cpu", "qlora"])
def test_args_round_trip(which: str, cpu_plan: Plan, qlora_plan: Plan) -> None:
    """llamafactory.args is the YAML as `--key=value` lines; shlex.split gives back the exact values."""
    plan = cpu_plan if which == "cpu" else qlora_plan
    files = render_resolved(ENGINE, plan)
    cfg = yaml.safe_load(files["llamafactory.yaml"])
    tokens = [shlex.split(line) for line in files["llamafactory.args"].splitlines() if line.strip()]
    assert all(len(token) == 1 and token[0].startswith("--") and "=" in token[0] for token in tokens)
    from_args = dict(token[0][2:].split("=", 1) for token in tokens)
    expected = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in cfg.items()
                if v is not None}
    assert from_args == expected


def test_qlora_cuda(qlora_plan: Plan) -> None:
    files = render_resolved(ENGINE, qlora_plan)
    cfg = yaml.safe_load(files["llamafactory.yaml"])
    assert cfg["quantization_bit"] == 4 and cfg["quantization_method"] == "bnb"
    assert cfg["quantization_type"] == "nf4" and cfg["double_quantization"] is True
    assert cfg["finetuning_type"] == "lora" and cfg["lora_target"] == "q_proj,v_proj"
    assert cfg["additional_target"] == "embed_tokens,lm_head" and cfg["use_dora"] is True
    assert (cfg["bf16"], cfg["fp16"]) == (True, False)
    assert cfg["packing"] is False and cfg["neat_packing"] is False
    assert cfg["cutoff_len"] == 512
    assert cfg["eval_dataset"] == "qwenrecipes_eval" and cfg["eval_steps"] == 5
    assert json.loads(files["data/dataset_info.json"])["qwenrecipes_eval"]["file_name"] == "eval.jsonl"
    assert cfg["save_strategy"] == "no" and "save_steps" not in cfg
    assert cfg["deepspeed"] == "deepspeed.json"
    assert json.loads(files["deepspeed.json"])["zero_optimization"]["stage"] == 2
    assert cfg["disable_gradient_checkpointing"] is False
    env = ENGINE.environment(qlora_plan)
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "2"
    assert env["DISABLE_VERSION_CHECK"] == "1" and env["WANDB_MODE"] == "disabled"


def test_packed_bins_refused_with_reason() -> None:
    """qwenrecipes' bins (data.packing, token handoff) are refused, never re-binned by LLaMA-Factory's own packer:
    the promise is the same bins on every engine."""
    plan = tiny_plan({"data": {"packing": True}})
    with pytest.raises(RecipeError, match=r"data\.packing: llamafactory: .*position_ids.*set packing: false"):
        render_resolved(ENGINE, plan)


def test_effective_matches_plan(cpu_plan: Plan) -> None:
    effective = ENGINE.effective(render_resolved(ENGINE, cpu_plan))
    assert set(effective) == set(CONCEPTS)
    assert effective["model"] == cpu_plan.model_path
    assert effective["model_dtype"] == "float32" and effective["precision"] == "fp32"
    assert effective["method"] == "lora" and effective["quantization"] is None
    assert (effective["lora_r"], effective["lora_alpha"]) == (8, 16)
    assert effective["lora_targets"] == ALL_LINEAR
    assert effective["think_handling"] == THINK_INLINE
    assert effective["loss_mask"] == LOSS_MASK_LF  # the trained trailing newline is reported
    assert effective["truncation"] == TRUNCATION_NONE
    assert effective["train_file"] == cpu_plan.train_file and effective["eval_file"] is None
    assert effective["max_seq_length"] == 512 and effective["packing"] is False
    assert effective["max_steps"] == 30 and effective["warmup_steps"] == 3
    assert effective["effective_batch"] == cpu_plan.effective_batch
    assert effective["gradient_checkpointing"] is False and effective["seed"] == 42
    assert effective["save_steps"] == 10 and effective["distributed"] == "none"
    json.dumps(effective)


def test_effective_qlora_distributed(qlora_plan: Plan) -> None:
    files = render_resolved(ENGINE, qlora_plan)
    env = " ".join(f"{k}={v}" for k, v in ENGINE.environment(qlora_plan).items())
    effective = ENGINE.effective({**files, "COMMAND": f"{env} {shlex.join(ENGINE.command(qlora_plan))}"})
    assert effective["method"] == "qlora"
    assert effective["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                         "compute_dtype": "bfloat16"}
    assert effective["gpus"] == 2 and effective["effective_batch"] == qlora_plan.effective_batch
    assert effective["distributed"] == "deepspeed_zero2"
    assert effective["max_seq_length"] == 512 and effective["packing"] is False
    assert effective["eval_file"] == "data/eval.jsonl" and effective["eval_steps"] == 5
    assert effective["modules_to_save"] == ["embed_tokens", "lm_head"]


def test_effective_applies_lf_defaults() -> None:
    files = {"llamafactory.yaml": yaml.safe_dump({"model_name_or_path": "m", "lora_rank": 4, "packing": True,
                                                  "train_on_prompt": True})}
    effective = ENGINE.effective(files)
    assert effective["method"] == "lora"  # LF's finetuning_type default
    assert effective["lora_alpha"] == 8  # None -> 2 * rank
    assert effective["lora_targets"] == "all linear layers except lm_head"
    assert effective["learning_rate"] == 5e-5 and effective["scheduler"] == "linear"
    assert effective["gradient_checkpointing"] is True
    assert effective["loss_mask"] == LOSS_MASK_ALL
    assert "attend to each other" in effective["packing"]
    assert effective["save_steps"] == 500


def test_full_finetune_train_on_all() -> None:
    plan = tiny_plan({"method": {"type": "full"}, "data": {"train_on": "all"}}, target="cpu")
    cfg = _cfg(plan)
    assert cfg["finetuning_type"] == "full" and "lora_rank" not in cfg
    assert cfg["train_on_prompt"] is True
    effective = ENGINE.effective(render_resolved(ENGINE, plan))
    assert effective["method"] == "full" and effective["lora_r"] is None
    assert effective["loss_mask"] == LOSS_MASK_ALL
