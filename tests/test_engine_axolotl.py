"""Axolotl render: every knob explicit, parsed back, and read back by effective() into the plan's values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.data.packing import packed_row
from qwenrecipes.engines.axolotl.engine import ENGINE, LORA_KERNELS
from qwenrecipes.engines.base import CHATML_TEMPLATE_PLAIN
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.concepts import (
    CONCEPTS,
    LOSS_MASK_ASSISTANT,
    PACKING_BINS,
    THINK_INLINE,
    TRUNCATION_NONE,
)
from qwenrecipes.recipe.load import ALL_LINEAR
from qwenrecipes.recipe.plan import Plan
from tests.conftest import render_resolved, tiny_plan
from tests.packing_checks import assert_bins_side_by_side, first_step_losses, run_packed, trainer_batches

BATCHES_SCRIPT = Path(__file__).parent / "scripts" / "axolotl_packed_batches.py"


@pytest.fixture(scope="module")
def cpu_plan() -> Plan:
    return tiny_plan({}, target="cpu")  # the text handoff (conftest)


@pytest.fixture(scope="module")
def qlora_plan() -> Plan:
    return tiny_plan({
        "method": {"type": "qlora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                             "target_modules": ["q_proj", "v_proj"],
                                             "use_rslora": True, "modules_to_save": ["embed_tokens", "lm_head"]},
                   "quantization": {"bits": 4, "quant_type": "fp4", "double_quant": False,
                                    "compute_dtype": "float16"}},
        "training": {"precision": "bf16", "optimizer": "paged_adamw_8bit", "warmup_steps": 1,
                     "gradient_checkpointing": True, "save_steps": None},
        "data": {"val_fraction": 0.1},  # unpacked: Axolotl's own sample_packing off (test_packed_bins_as_rows)
    })


def _cfg(plan: Plan) -> dict[str, Any]:
    return yaml.safe_load(render_resolved(ENGINE, plan)["axolotl.yaml"])


def test_cpu_lora_every_knob_explicit(cpu_plan: Plan) -> None:
    cfg = _cfg(cpu_plan)
    training = cpu_plan.recipe.training
    assert cfg["base_model"] == cpu_plan.model_path
    assert cfg["learning_rate"] == training["learning_rate"]
    assert cfg["lr_scheduler"] == "cosine"
    assert cfg["warmup_steps"] == cpu_plan.warmup_steps == 3
    assert cfg["max_steps"] == cpu_plan.max_steps == 30
    assert cfg["seed"] == 42
    assert cfg["optimizer"] == "adamw_torch"
    assert cfg["weight_decay"] == 0.0 and cfg["max_grad_norm"] == 1.0
    assert cfg["micro_batch_size"] == 4 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["adapter"] == "lora" and cfg["lora_r"] == 8 and cfg["lora_alpha"] == 16
    assert cfg["lora_dropout"] == 0.0
    assert cfg["lora_target_modules"] == ALL_LINEAR and cfg["lora_target_linear"] is False
    # Fused kernels hang on CPU; Axolotl switches them on unless told.
    assert all(cfg[k] is False for k in LORA_KERNELS)
    assert (cfg["bf16"], cfg["fp16"], cfg["tf32"]) == (False, False, False)
    assert cfg["load_in_4bit"] is False and cfg["load_in_8bit"] is False
    assert cfg["attn_implementation"] == "sdpa"
    assert cfg["gradient_checkpointing"] is False
    assert cfg["sequence_len"] == 512 and cfg["excess_length_strategy"] == "raise"
    assert cfg["sample_packing"] is False
    assert cfg["save_steps"] == 10 and cfg["save_total_limit"] == 2 and cfg["logging_steps"] == 1
    assert cfg["eval_strategy"] == "no"
    assert cfg["output_dir"] == "outputs"
    assert cfg["dataset_prepared_path"] == "axolotl_prepared"
    assert cfg["shuffle_merged_datasets"] is False and cfg["curriculum_sampling"] is True
    assert cfg["use_wandb"] is False and cfg["use_tensorboard"] is False


def test_chat_template_pinned_and_mask(cpu_plan: Plan) -> None:
    cfg = _cfg(cpu_plan)
    (dataset,) = cfg["datasets"]
    assert cfg["chat_template"] == "jinja" and cfg["chat_template_jinja"] == CHATML_TEMPLATE_PLAIN
    assert dataset["chat_template"] == "jinja" and dataset["chat_template_jinja"] == CHATML_TEMPLATE_PLAIN
    assert dataset["path"] == cpu_plan.train_file == "data/train.jsonl"
    assert dataset["type"] == "chat_template" and dataset["field_messages"] == "messages"
    assert dataset["roles_to_train"] == ["assistant"]
    assert dataset["train_on_eos"] == "turn" and dataset["train_on_eot"] == "turn"
    assert cfg["eot_tokens"] == ["<|im_end|>"]
    assert cfg["train_on_inputs"] is False
    assert "test_datasets" not in cfg and cfg["val_set_size"] == 0.0


def test_train_on_all() -> None:
    cfg = _cfg(tiny_plan({"data": {"train_on": "all"}}, target="cpu"))
    assert cfg["train_on_inputs"] is True
    assert cfg["datasets"][0]["roles_to_train"] == ["system", "user", "assistant"]


def test_qlora_cuda(qlora_plan: Plan) -> None:
    cfg = _cfg(qlora_plan)
    assert cfg["adapter"] == "qlora" and cfg["load_in_4bit"] is True and cfg["load_in_8bit"] is False
    assert cfg["bnb_config_kwargs"] == {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                                        "bnb_4bit_compute_dtype": "float16", "bnb_4bit_quant_storage": "float16"}
    assert cfg["lora_target_modules"] == ["q_proj", "v_proj"]
    assert cfg["lora_modules_to_save"] == ["embed_tokens", "lm_head"]
    assert cfg["peft_ensure_weight_tying"] is True and cfg["peft_use_rslora"] is True
    assert all(cfg[k] is False for k in LORA_KERNELS)
    assert (cfg["bf16"], cfg["fp16"], cfg["tf32"]) == (True, False, False)
    assert cfg["optimizer"] == "paged_adamw_8bit"
    assert cfg["sample_packing"] is False and cfg["pad_to_sequence_len"] is False
    assert cfg["save_strategy"] == "no" and "save_steps" not in cfg
    assert cfg["test_datasets"][0]["path"] == qlora_plan.eval_file == "data/eval.jsonl"
    assert cfg["gradient_checkpointing"] is True


def test_packed_bins_as_rows() -> None:
    """qwenrecipes' bins (data.packing, token handoff) are the rows of a dataset Axolotl takes as given, never
    re-binned by its multipack sampler: one bin per line, position ids per row, no attention_mask (bins.py)."""
    plan = tiny_plan({"data": {"packing": True}}, target="cpu")
    assert plan.packing is not None and ENGINE.packing_problems(plan) == []
    files = render_resolved(ENGINE, plan)
    cfg = yaml.safe_load(files["axolotl.yaml"])
    assert cfg["datasets"] == [{"path": "data/train.tokens.jsonl", "split": "train", "ds_type": "json"}]
    assert cfg["skip_prepare_dataset"] is True and cfg["remove_unused_columns"] is False
    assert (cfg["sample_packing"], cfg["eval_sample_packing"], cfg["pad_to_sequence_len"]) == (False, False, False)
    assert cfg["curriculum_sampling"] is True and cfg["max_steps"] == plan.max_steps
    assert ENGINE.effective(files)["packing"] == PACKING_BINS
    row = ENGINE.packed_row(packed_row(plan.packing.tokens, plan.packing.bins[0]))
    assert set(row) == {"input_ids", "labels", "position_ids"}
    # Text handoff: Axolotl's own packer, as before.
    text = yaml.safe_load(render_resolved(ENGINE, tiny_plan({"data": {"packing": True, "handoff": "text"}},
                                                             target="cpu"))["axolotl.yaml"])
    assert text["sample_packing"] is True and "skip_prepare_dataset" not in text


def test_packed_flash_attention_needs_one_bin_per_batch() -> None:
    """flash_attention_2 keeps a bin's rows apart only for a batch of one row (transformers _is_packed_sequence)."""
    plan = tiny_plan({"data": {"packing": True}, "model": {"attn": "flash_attention_2"},
                      "training": {"precision": "bf16"}})
    with pytest.raises(RecipeError, match=r"model\.attn: axolotl: flash_attention_2 with micro_batch_size > 1"):
        render_resolved(ENGINE, plan)
    one = tiny_plan({"data": {"packing": True}, "model": {"attn": "flash_attention_2"},
                     "training": {"precision": "bf16", "micro_batch_size": 1}})
    assert ENGINE.packing_problems(one) == []


def test_deepspeed_and_multi_gpu() -> None:
    plan = tiny_plan({"distributed": {"gpus": 2, "strategy": "deepspeed_zero2", "zero_offload": True},
                      "training": {"precision": "bf16"}})
    files = render_resolved(ENGINE, plan)
    cfg = yaml.safe_load(files["axolotl.yaml"])
    assert cfg["deepspeed"] == "deepspeed.json"
    ds = json.loads(files["deepspeed.json"])
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ENGINE.command(plan) == ["axolotl", "train", "axolotl.yaml", "--launcher", "torchrun", "--",
                                    "--nproc_per_node=2", "--log_dir=ranks", "--tee=3", "--standalone"]
    effective = ENGINE.effective({**files, "COMMAND": " ".join(ENGINE.command(plan))})
    assert effective["distributed"] == "deepspeed_zero2+offload"
    assert effective["gpus"] == 2 and effective["effective_batch"] == plan.effective_batch


def test_effective_matches_plan(cpu_plan: Plan) -> None:
    effective = ENGINE.effective(render_resolved(ENGINE, cpu_plan))
    assert set(effective) == set(CONCEPTS)
    training = cpu_plan.recipe.training
    assert effective["model"] == cpu_plan.model_path
    assert effective["model_dtype"] == cpu_plan.model_dtype == "float32"
    assert effective["precision"] == "fp32"
    assert effective["method"] == "lora" and effective["quantization"] is None
    assert (effective["lora_r"], effective["lora_alpha"], effective["lora_dropout"]) == (8, 16, 0.0)
    assert effective["lora_targets"] == ALL_LINEAR
    assert effective["loss_mask"] == LOSS_MASK_ASSISTANT
    assert effective["think_handling"] == THINK_INLINE
    assert effective["truncation"] == TRUNCATION_NONE
    assert effective["train_file"] == "data/train.jsonl" and effective["eval_file"] is None
    assert effective["max_steps"] == cpu_plan.max_steps
    assert effective["warmup_steps"] == cpu_plan.warmup_steps
    assert effective["learning_rate"] == training["learning_rate"]
    assert effective["effective_batch"] == cpu_plan.effective_batch
    assert effective["save_steps"] == 10 and effective["save_total_limit"] == 2
    assert effective["report_to"] == "none" and effective["distributed"] == "none"
    json.dumps(effective)  # plain JSON values only


def test_effective_reports_residuals(qlora_plan: Plan) -> None:
    effective = ENGINE.effective(render_resolved(ENGINE, qlora_plan))
    assert effective["warmup_steps"] == 2  # Axolotl bumps 1 to 2
    assert effective["quantization"] == {"bits": 4, "quant_type": "fp4", "double_quant": False,
                                         "compute_dtype": "float16"}
    assert effective["save_steps"] is None
    assert effective["modules_to_save"] == ["embed_tokens", "lm_head"]


def test_effective_applies_axolotl_defaults() -> None:
    files = {"axolotl.yaml": yaml.safe_dump({"base_model": "m", "adapter": "lora", "learning_rate": 1e-4,
                                             "datasets": [{"path": "x.jsonl", "type": "chat_template"}]})}
    effective = ENGINE.effective(files)
    assert effective["scheduler"] == "cosine"
    assert effective["seed"] == 42 and effective["save_total_limit"] == 4
    assert effective["max_seq_length"] == 512
    assert effective["save_steps"] == "every epoch"
    assert str(effective["warmup_steps"]).startswith("auto")
    assert effective["precision"].startswith("auto")
    assert effective["loss_mask"] != LOSS_MASK_ASSISTANT  # no <|im_end|> EOT pinned


def test_environment_and_command(cpu_plan: Plan) -> None:
    env = ENGINE.environment(cpu_plan)
    assert env["AXOLOTL_DO_NOT_TRACK"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "disabled"
    assert ENGINE.command(cpu_plan) == ["axolotl", "train", "axolotl.yaml", "--launcher", "python"]


@pytest.mark.parametrize("hostile", ["out: #x - y", "out: [a, b] {c: d} & *e !!python/object ' \" |"])
def test_hostile_name_stays_data(hostile: str) -> None:
    """A value with YAML/comment syntax reaches the file only through the dumper."""
    cfg = _cfg(tiny_plan({"output": {"dir": hostile}}, target="cpu"))
    assert cfg["output_dir"] == hostile


@pytest.mark.parametrize("refused", ["out: #x\n- y", "out\r- y", "a\x1bb", "${oc.env:HOME}"])
def test_hostile_name_that_engine_files_cannot_carry_is_refused(refused: str) -> None:
    """A line break, a control character or `${` is refused at the field (exit 2 from the CLI), not escaped."""
    with pytest.raises(RecipeError, match=r"output\.dir"):
        tiny_plan({"output": {"dir": refused}}, target="cpu")


@pytest.mark.engine
def test_axolotl_dataloader_hands_the_bins_in_order_with_rows_apart(tmp_path: Path) -> None:
    """Axolotl's own trainer (config loader, dataset preparation, dataloader) on a rendered packed folder: every
    batch is the next micro_batch_size bins of the stream, as qwenrecipes wrote them (order and count, so max_steps);
    the model gets position ids and no attention mask; each token's loss in the first batch, through trainer.model
    with sdpa and eager, equals its loss with its row run alone. An all-ones mask (rows attend across) differs."""

    plan, stream, micro, result = trainer_batches(tmp_path, "axolotl", BATCHES_SCRIPT)
    for impl, got in result.items():
        assert got["use_cache"] is False, impl
        assert_bins_side_by_side(impl, got, plan, stream, micro)


@pytest.mark.engine
def test_axolotl_trains_the_bins_with_the_loss_of_their_rows(tmp_path: Path) -> None:
    """A real Axolotl run of a packed recipe (`qwenrecipes run`): its first logged loss (LoRA B = 0 at init: the base
    model's loss on the first step's bins) equals the token-weighted mean loss of those bins' rows run one by one;
    every step trains the trainable tokens of the next bins of the stream, for exactly max_steps steps."""

    plan, run_dir = run_packed(tmp_path, "axolotl", max_steps=3, warmup_steps=1, save_steps=3)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [e for e in events if e.get("type") == "train"]
    batch = plan.effective_batch
    assert [e["step"] for e in steps] == list(range(1, plan.recipe.training["max_steps"] + 1))
    trained = [sum(label != -100 for label in packed_row(plan.packing.tokens, b).labels) for b in plan.bin_stream]
    assert [e["tokens_trainable"] for e in steps] == [sum(trained[:s * batch]) for s in range(1, len(steps) + 1)]
    mean, _ = first_step_losses(tmp_path, plan, "axolotl")
    assert steps[0]["loss"] == pytest.approx(mean, rel=2e-3)  # the console's loss has 4 significant digits
    # Full precision (the checkpoint's log_history): rows attending across would move it by ~5e-4 on this model.
    state = json.loads((run_dir / "outputs" / "checkpoint-3" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["log_history"][0]["loss"] == pytest.approx(mean, abs=1e-4)
