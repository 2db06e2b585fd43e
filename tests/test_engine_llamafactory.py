"""LLaMA-Factory render: YAML, CLI-args and dataset_info agree, every knob explicit, effective() reads back."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.data.tokens import IGNORE
from qwenrecipes.engines.llamafactory.effective import PACKING_BINS_LF
from qwenrecipes.engines.llamafactory.engine import ENGINE, LOSS_MASK_LF
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.concepts import CONCEPTS, LOSS_MASK_ALL, THINK_INLINE, TRUNCATION_NONE
from qwenrecipes.recipe.load import ALL_LINEAR
from qwenrecipes.recipe.plan import Plan, plan_recipe
from tests.conftest import render_resolved, tiny_plan
from tests.packing_checks import assert_each_row_alone, packed_recipe, run_packed

LF_SCRIPT = Path(__file__).parent / "scripts" / "lf_packed_losses.py"


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
        "data": {"val_fraction": 0.1},
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


def test_packed_bins_through_the_token_handoff() -> None:
    """qwenrecipes' bins (data.packing) are saved as they are for tokenized_path, never re-binned by LLaMA-Factory's
    own packer: each token's attention_mask is its 1-based row index in the bin, and neat_packing makes LF's
    collator build the block-diagonal mask from it."""
    plan = tiny_plan({"data": {"packing": True}}, target="cpu")
    assert plan.packing is not None and ENGINE.handoff(plan) == "tokens" and not ENGINE.packing_problems(plan)
    files = render_resolved(ENGINE, plan)
    cfg = yaml.safe_load(files["llamafactory.yaml"])
    assert cfg["tokenized_path"] == "data/tokenized" and cfg["disable_shuffling"] is True
    assert cfg["packing"] is True and cfg["neat_packing"] is True and cfg["cutoff_len"] == 513
    assert cfg["max_steps"] == plan.max_steps and cfg["flash_attn"] == "sdpa"
    assert "neat_packing" in files["load_tokens.py"] and ENGINE.command(plan)[:2] == ["python", "load_tokens.py"]
    assert ENGINE.effective(files)["packing"] == PACKING_BINS_LF
    row = ENGINE.packed_row(PackedRow([1, 2, 3, 4, 5], [IGNORE, 2, 3, IGNORE, 5], [0, 1, 2, 0, 1], [3, 2]))
    assert row == {"input_ids": [1, 2, 3, 4, 5], "attention_mask": [1, 1, 1, 2, 2], "labels": [IGNORE, 2, 3, IGNORE, 5]}


def test_packed_bins_refused_with_flash_attention_2() -> None:
    """With flash_attention_2 LF's neat_packing collator drops the 4-D mask and needs position ids the bins do
    not carry: refused with the reason, never handed to LF's own packer."""
    plan = tiny_plan({"data": {"packing": True}, "model": {"attn": "flash_attention_2"}})
    with pytest.raises(RecipeError, match=r"model\.attn: llamafactory: with flash_attention_2 .*position_ids.*"
                                          r"use sdpa or eager"):
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


def _lf_packed_losses(tmp_path: Path, plan: Plan, bins: list[tuple[int, ...]]) -> dict[str, Any]:
    """tests/scripts/lf_packed_losses.py in the llamafactory env: ``bins`` (one micro-batch, as the engine writes
    them) through LF's own SFT collator, and their rows one by one, with sdpa and eager."""
    from qwenrecipes.data.packing import packed_row
    from qwenrecipes.run.envs import env_for

    assert plan.packing is not None
    tokens = plan.packing.tokens
    cases = {"bins": [ENGINE.packed_row(packed_row(tokens, b)) for b in bins],
             "rows": [{"input_ids": tokens[i].input_ids, "labels": tokens[i].labels} for b in bins for i in b]}
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    subprocess.run([str(env_for("llamafactory").python), "-P", str(LF_SCRIPT), str(tmp_path / "cases.json"),
                    plan.model_path, str(tmp_path / "out.json")], check=True, timeout=900,
                   env={**os.environ, **ENGINE.environment(plan)})
    result: dict[str, Any] = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["impls"]
    return result


@pytest.mark.engine
def test_lf_collator_keeps_the_rows_of_a_bin_apart(tmp_path: Path) -> None:
    """Per-token losses of three bins (one micro-batch, a short one padded by the collator) through LF's
    SFTDataCollatorWith4DAttentionMask (neat_packing: block-diagonal 4-D mask, no position ids) equal those of their
    rows run one by one, with sdpa and eager; with block_diag_attn off (the row indices as a 2-D mask) they do not."""
    plan = plan_recipe(packed_recipe(tmp_path, max_seq_length=256, train_on="all"), target="cpu")
    assert plan.packing is not None
    bins = [plan.packing.bins[0], plan.packing.bins[-1], plan.packing.bins[len(plan.packing.bins) // 2]]
    assert len({sum(plan.packing.lengths[i] for i in b) for b in bins}) > 1 and all(len(b) >= 2 for b in bins)
    for impl, got in _lf_packed_losses(tmp_path, plan, bins).items():
        assert got["collator_keys"] == ["attention_mask", "input_ids", "labels"] and len(got["mask_shape"]) == 4
        assert_each_row_alone(impl, got)  # the control: the row indices as a 2-D mask


@pytest.mark.engine
def test_llamafactory_trains_the_bins_with_the_loss_of_their_rows(tmp_path: Path) -> None:
    """A real LLaMA-Factory run of a packed recipe (`qwenrecipes run`): its first logged loss (LoRA B = 0 at init:
    the base model's loss on the first step's bins) equals the token-weighted mean loss of those bins' rows run one
    by one, and is told apart from the loss with rows attending across."""
    plan, run_dir = run_packed(tmp_path, "llamafactory", max_steps=3, warmup_steps=1)
    bins = plan.bin_stream[:plan.effective_batch]
    written = (run_dir / "data" / "train.tokens.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(written) == len(plan.bin_stream)  # one saved row per bin, in training order
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in events if e.get("type") == "train"] == [1, 2, 3]  # qwenrecipes' max_steps
    # LF's own log keeps the loss unrounded (events.jsonl rounds it).
    log = (run_dir / "outputs" / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(log[0])
    assert first["current_steps"] == 1 and first["total_steps"] == 3
    got = _lf_packed_losses(tmp_path, plan, bins)["sdpa"]
    values = [v for row in got["separate"] for v in row if v is not None]
    control = [v for v in got["control"] if v is not None]
    expected, across = sum(values) / len(values), sum(control) / len(control)
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(across - expected) > 10 * 1e-5 * expected, "the control should tell attending across rows apart"
