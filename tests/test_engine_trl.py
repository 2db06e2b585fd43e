"""TRL engine: render plans, read the YAML back, and check real values (no torch, no TRL import)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.engines.base import CHATML_TEMPLATE
from qwenrecipes.engines.trl import ENGINE
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.concepts import (
    CONCEPTS,
    LOSS_MASK_ALL,
    LOSS_MASK_ASSISTANT,
    LOSS_MASK_TOKENS,
    PACKING_BINS,
    THINK_INLINE,
    TRUNCATION_NONE,
)
from qwenrecipes.recipe.plan import Plan
from tests.conftest import cuda_plan, render_resolved, tiny_plan

# The TrlParser dataclass fields of trl 1.9.0 we may write (ScriptArguments, SFTConfig/TrainingArguments,
# ModelConfig, DatasetMixtureConfig). A key outside this set would make TrlParser fail.
KNOWN_KEYS = {
    "model_name_or_path", "model_revision", "dtype", "attn_implementation", "trust_remote_code", "use_peft",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "use_dora",
    "use_rslora", "lora_task_type", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant",
    "datasets", "dataset_train_split", "dataset_test_split", "max_length", "truncation_mode", "packing",
    "packing_strategy", "padding_free", "eval_packing", "shuffle_dataset", "train_sampling_strategy",
    "chat_template_path", "assistant_only_loss", "completion_only_loss", "eos_token", "pad_token",
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_steps",
    "num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps", "optim", "weight_decay",
    "max_grad_norm", "bf16", "fp16", "gradient_checkpointing", "gradient_checkpointing_kwargs", "seed",
    "data_seed", "use_liger_kernel", "loss_type", "output_dir", "logging_strategy", "logging_steps",
    "logging_first_step", "save_strategy", "save_steps", "save_total_limit", "eval_strategy", "eval_steps",
    "report_to", "use_cpu", "dataset_num_proc", "dataloader_num_workers", "push_to_hub",
}



@pytest.fixture(scope="module")
def cpu_plan() -> Plan:
    return tiny_plan({}, target="cpu")  # the text handoff (conftest)


def config_of(plan: Plan) -> dict[str, Any]:
    return yaml.safe_load(render_resolved(ENGINE, plan)["trl_config.yaml"])


def test_cpu_render_values(cpu_plan: Plan) -> None:
    files = render_resolved(ENGINE, cpu_plan)
    assert set(files) == {"trl_config.yaml", "train_trl.py", "chat_template.jinja"}
    c = yaml.safe_load(files["trl_config.yaml"])
    assert set(c) <= KNOWN_KEYS
    assert c["model_name_or_path"] == cpu_plan.model_path
    assert c["dtype"] == "float32" and c["bf16"] is False and c["fp16"] is False and c["use_cpu"] is True
    assert c["use_peft"] is True and c["load_in_4bit"] is False
    assert (c["lora_r"], c["lora_alpha"], c["lora_dropout"]) == (8, 16, 0.0)
    assert c["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert c["datasets"] == [{"path": "json", "data_files": {"train": "data/train.jsonl"}, "split": "train"}]
    assert c["chat_template_path"] == "chat_template.jinja" and c["assistant_only_loss"] is True
    assert files["chat_template.jinja"] == CHATML_TEMPLATE
    assert (c["eos_token"], c["pad_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert c["max_length"] == 512 and c["packing"] is False and c["padding_free"] is False
    assert c["max_steps"] == 30 and isinstance(c["warmup_steps"], int) and c["warmup_steps"] == 3
    assert c["learning_rate"] == 0.001 and c["lr_scheduler_type"] == "cosine" and c["optim"] == "adamw_torch"
    assert c["per_device_train_batch_size"] == 4 and c["gradient_accumulation_steps"] == 1
    assert c["seed"] == 42 and c["data_seed"] == 42 and c["gradient_checkpointing"] is False
    assert c["save_strategy"] == "steps" and c["save_steps"] == 10 and c["save_total_limit"] == 2
    assert c["eval_strategy"] == "no" and c["report_to"] == "none" and c["output_dir"] == "outputs"
    assert c["shuffle_dataset"] is False and c["train_sampling_strategy"] == "sequential"
    assert c["loss_type"] == "chunked_nll"


def test_launcher_has_no_recipe_values(cpu_plan: Plan) -> None:
    launcher = render_resolved(ENGINE, cpu_plan)["train_trl.py"]
    compile(launcher, "train_trl.py", "exec")
    assert cpu_plan.model_path not in launcher
    assert "resume_from_checkpoint=options.resume" in launcher
    other = render_resolved(ENGINE, cuda_plan(method={"type": "qlora"}))["train_trl.py"]
    assert launcher.splitlines()[1:] == other.splitlines()[1:]  # only the header line names the recipe


def test_command_and_environment(cpu_plan: Plan) -> None:
    assert ENGINE.command(cpu_plan) == ["python", "train_trl.py", "--config", "trl_config.yaml"]
    env = ENGINE.environment(cpu_plan)
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "disabled"
    assert env["TOKENIZERS_PARALLELISM"] == "false"


def test_effective_cpu(cpu_plan: Plan) -> None:
    eff = ENGINE.effective(render_resolved(ENGINE, cpu_plan))
    assert set(eff) == set(CONCEPTS)
    assert eff["loss_mask"] == LOSS_MASK_ASSISTANT and eff["think_handling"] == THINK_INLINE
    assert eff["truncation"] == TRUNCATION_NONE
    assert eff["method"] == "lora" and eff["quantization"] is None and eff["precision"] == "fp32"
    assert eff["effective_batch"] == cpu_plan.effective_batch and eff["max_steps"] == 30
    assert eff["warmup_steps"] == 3 and eff["save_steps"] == 10 and eff["eval_steps"] is None


def test_lora_cuda() -> None:
    plan = cuda_plan(training={"gradient_checkpointing": True, "liger_kernel": True})
    c = config_of(plan)
    assert c["dtype"] == "bfloat16" and c["bf16"] is True and c["use_cpu"] is False
    assert c["optim"] == "adamw_8bit" and c["gradient_checkpointing"] is True
    assert c["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert c["use_liger_kernel"] is True and c["loss_type"] == "nll"  # chunked_nll refuses Liger
    eff = ENGINE.effective(render_resolved(ENGINE, plan))
    assert eff["precision"] == "bf16" and eff["liger_kernel"] is True


def test_qlora_cuda() -> None:
    plan = cuda_plan(method={"type": "qlora", "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                                               "compute_dtype": "bfloat16"}})
    c = config_of(plan)
    assert c["load_in_4bit"] is True and c["bnb_4bit_quant_type"] == "nf4"
    assert c["use_bnb_nested_quant"] is True  # TRL's default is False
    eff = ENGINE.effective(render_resolved(ENGINE, plan))
    assert eff["method"] == "qlora"
    assert eff["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                    "compute_dtype": "bfloat16"}


def test_train_on_all_and_packing_and_eval() -> None:
    plan = cuda_plan(data={"train_on": "all", "packing": True, "val_fraction": 0.1},
                     training={"eval_steps": 5, "max_steps": None, "warmup_steps": 0, "epochs": 2})
    c = config_of(plan)
    # qwenrecipes' bins (data/packing.py): TRL's packer off, its padding-free collator reads seq_lengths.
    assert c["assistant_only_loss"] is False and c["packing"] is False and c["padding_free"] is True
    assert c["eval_packing"] is False and c["max_length"] is None  # TRL refuses max_length with padding_free alone
    assert c["datasets"][0]["data_files"] == {"train": "data/train.tokens.jsonl", "test": "data/eval.tokens.jsonl"}
    assert c["eval_strategy"] == "steps" and c["eval_steps"] == 5
    assert plan.packing is not None and c["max_steps"] == plan.max_steps  # counted in bins by qwenrecipes
    assert plan.max_steps == -(-len(plan.packing.bins) * 2 // plan.effective_batch)
    eff = ENGINE.effective(render_resolved(ENGINE, plan))
    assert eff["loss_mask"] == LOSS_MASK_TOKENS and eff["eval_file"] == "data/eval.tokens.jsonl"
    assert eff["packing"] == PACKING_BINS
    assert ENGINE.packed_row(PackedRow([1, 2, 3], [-100, 2, 3], [0, 1, 0], [2, 1])) == {
        "input_ids": [1, 2, 3], "labels": [-100, 2, 3], "seq_lengths": [2, 1]}


def test_full_finetune_has_no_lora_knobs() -> None:
    c = config_of(cuda_plan(method={"type": "full"}))
    assert c["use_peft"] is False and "lora_r" not in c and c["load_in_4bit"] is False


def test_multi_gpu_accelerate_config() -> None:
    plan = cuda_plan(distributed={"gpus": 2, "strategy": "deepspeed_zero2"},
                     training={"gradient_accumulation_steps": 1})
    files = render_resolved(ENGINE, plan)
    accelerate = yaml.safe_load(files["accelerate_config.yaml"])
    assert accelerate["num_processes"] == 2 and accelerate["distributed_type"] == "DEEPSPEED"
    assert ENGINE.command(plan)[:4] == ["accelerate", "launch", "--config_file", "accelerate_config.yaml"]
    eff = ENGINE.effective(files)
    assert eff["gpus"] == 2 and eff["distributed"] == "deepspeed_zero2" and eff["effective_batch"] == 8


def test_effective_applies_trl_defaults_for_missing_keys(cpu_plan: Plan) -> None:
    files = render_resolved(ENGINE, cpu_plan)
    c = yaml.safe_load(files["trl_config.yaml"])
    for key in ("dtype", "lora_dropout", "lora_target_modules", "assistant_only_loss", "learning_rate"):
        c.pop(key)
    files["trl_config.yaml"] = yaml.safe_dump(c)
    eff = ENGINE.effective(files)
    assert eff["model_dtype"] == "float32" and eff["lora_dropout"] == 0.05
    assert eff["lora_targets"] == ["q_proj", "v_proj"] and eff["loss_mask"] == LOSS_MASK_ALL
    assert eff["learning_rate"] == 2e-5


def test_hostile_strings_stay_data() -> None:
    hostile = "out'\"{{ x }}: [a, b] # c '''\"\"\"__import__('os') $HOME {y}"
    plan = cuda_plan(output={"dir": hostile})
    assert config_of(plan)["output_dir"] == hostile
    assert ENGINE.effective(render_resolved(ENGINE, plan))["model"] == plan.model_path


@pytest.mark.parametrize("refused", ["out'\"\n{{ x }}: [a, b] # c", "tab\there", "${HOME}"])
def test_hostile_strings_engine_files_cannot_carry_are_refused(refused: str) -> None:
    with pytest.raises(RecipeError, match=r"output\.dir"):
        cuda_plan(output={"dir": refused})
