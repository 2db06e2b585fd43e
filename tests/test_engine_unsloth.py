"""Unsloth engine: the rendered script is parsed (ast) and compiled, never executed (Unsloth needs a GPU)."""

from __future__ import annotations

import ast
from typing import Any

import pytest

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.data.tokens import IGNORE
from qwenrecipes.engines.base import CHATML_TEMPLATE_PLAIN
from qwenrecipes.engines.unsloth.engine import ENGINE, SCRIPT_FILE, read_script
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.concepts import CONCEPTS, LOSS_MASK_ASSISTANT, LOSS_MASK_TOKENS, PACKING_BINS, THINK_INLINE
from qwenrecipes.recipe.plan import Plan, plan_recipe
from tests.conftest import TINY, cuda_plan, render_resolved, tiny_plan

# No line break, control character or `${`: those are refused at validate (test below); all the rest is data.
HOSTILE = "x'\"\\r{{ y }}{% if 1 %}'''\"\"\"\\n__import__('os').system('echo pwned')#"



def script_of(plan: Plan) -> str:
    text = render_resolved(ENGINE, plan)[SCRIPT_FILE]
    compile(text, SCRIPT_FILE, "exec")
    return text


def calls(text: str) -> dict[str, dict[str, Any]]:
    return read_script(text)["calls"]


def call_names(text: str) -> list[str]:
    return sorted(ast.unparse(n.func) for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call))


def string_constants(text: str) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.fixture(scope="module")
def cpu_plan() -> Plan:
    return plan_recipe(TINY, target="cpu")


def test_cpu_script_values(cpu_plan: Plan) -> None:
    text = script_of(cpu_plan)
    c = calls(text)
    load = c["FastLanguageModel.from_pretrained"]
    assert load["model_name"] == cpu_plan.model_path and load["use_exact_model_name"] is True
    assert load["max_seq_length"] == 512 and load["dtype"] == "float32"
    assert (load["load_in_4bit"], load["load_in_16bit"], load["full_finetuning"]) == (False, True, False)
    assert load["random_state"] == 42 and load["use_gradient_checkpointing"] is False
    peft = c["FastLanguageModel.get_peft_model"]
    assert (peft["r"], peft["lora_alpha"], peft["lora_dropout"]) == (8, 16, 0.0)
    assert peft["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert peft["random_state"] == 42 and peft["use_rslora"] is False and peft["use_dora"] is False
    sft = c["SFTConfig"]
    expected = {"learning_rate": 0.001, "lr_scheduler_type": "cosine", "warmup_steps": 3, "optim": "adamw_torch",
                "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 42, "data_seed": 42, "max_steps": 30,
                "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 512,
                "packing": False, "padding_free": False, "bf16": False, "fp16": False, "logging_steps": 1,
                "save_strategy": "steps", "save_steps": 10, "save_total_limit": 2, "report_to": "none",
                "output_dir": "outputs", "eval_strategy": "no", "train_sampling_strategy": "sequential",
                "assistant_only_loss": False}
    assert {k: sft[k] for k in expected} == expected
    # Token handoff: the rows qwenrecipes tokenized and masked, no train_on_responses_only (text handoff: below).
    assert c["load_dataset"] == {"data_files": {"train": "data/train.tokens.jsonl"}}
    assert "train_on_responses_only" not in c
    assigns = read_script(text)["assigns"]
    assert assigns["CHAT_TEMPLATE"] == CHATML_TEMPLATE_PLAIN and assigns["tokenizer.eos_token"] == "<|im_end|>"


def test_only_expected_calls(cpu_plan: Plan) -> None:
    """Static check: the script calls exactly what the template writes, nothing data-dependent."""
    names = set(call_names(script_of(cpu_plan)))
    assert names == {
        "os.environ.setdefault", "argparse.ArgumentParser", "cli.add_argument", "cli.parse_args", "int",
        "os.environ.get", "SystemExit", "FastLanguageModel.from_pretrained", "getattr",
        "FastLanguageModel.get_peft_model", "load_dataset", "SFTConfig", "SFTTrainer",
        "trainer.train", "trainer.save_model", "main"}


def test_command_environment(cpu_plan: Plan) -> None:
    assert ENGINE.command(cpu_plan) == ["python", "train_unsloth.py"]
    env = ENGINE.environment(cpu_plan)
    assert env["UNSLOTH_DISABLE_STATISTICS"] == "1" and env["UNSLOTH_DISABLE_AUTO_PADDING_FREE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "disabled"


def test_effective_cpu(cpu_plan: Plan) -> None:
    eff = ENGINE.effective(render_resolved(ENGINE, cpu_plan))
    assert set(eff) == set(CONCEPTS)
    assert eff["loss_mask"] == LOSS_MASK_TOKENS and eff["think_handling"] == THINK_INLINE
    assert eff["method"] == "lora" and eff["lora_r"] == 8 and eff["effective_batch"] == 4
    assert eff["precision"] == "fp32"  # the CPU backend keeps the dtype (on a GPU: bf16 autocast, below)
    assert eff["optimizer"].startswith("adamw_torch_fused")
    assert eff["max_steps"] == 30 and eff["save_steps"] == 10 and eff["packing"] is False


def test_packed_bins_on_cpu_through_trls_padding_free_collator() -> None:
    """qwenrecipes' bins (data.packing) on the CPU backend: one line per bin with seq_lengths, TRL's padding-free
    collator passed as data_collator (the CPU backend forces SFTConfig's padding_free off), Unsloth's and TRL's own
    packing off, and a guard that stops the script on a host where Unsloth takes its CUDA path."""
    plan = tiny_plan({"data": {"packing": True}}, target="cpu")
    assert plan.packing is not None and not ENGINE.packing_problems(plan)
    text = script_of(plan)
    c = calls(text)
    assert c["DataCollatorForLanguageModeling"] == {"pad_token_id": "tokenizer.pad_token_id", "padding_free": True}
    assert c["SFTTrainer"]["data_collator"].startswith("DataCollatorForLanguageModeling(")
    assert c["SFTConfig"]["packing"] is False and c["SFTConfig"]["padding_free"] is False
    assert c["SFTConfig"]["train_sampling_strategy"] == "sequential" and c["SFTConfig"]["shuffle_dataset"] is False
    assert c["SFTConfig"]["max_steps"] == plan.max_steps
    assert 'unsloth.DEVICE_TYPE != "cpu"' in text
    assert ENGINE.effective(render_resolved(ENGINE, plan))["packing"] == PACKING_BINS
    row = ENGINE.packed_row(PackedRow([1, 2, 3, 4, 5], [IGNORE, 2, 3, IGNORE, 5], [0, 1, 2, 0, 1], [3, 2]))
    assert row == {"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE, 2, 3, IGNORE, 5], "seq_lengths": [3, 2]}
    unpacked = script_of(plan_recipe(TINY, target="cpu"))
    assert "DataCollatorForLanguageModeling" not in unpacked and "DEVICE_TYPE" not in unpacked


def test_packed_bins_refused_on_cuda() -> None:
    """Unsloth's CUDA path swaps the collator and runs its own attention kernels: not measured, refused."""
    with pytest.raises(RecipeError, match=r"data\.packing: unsloth: Unsloth's CUDA path is not verified .*"
                                          r"DataCollatorForSeq2Seq.*set packing: false"):
        render_resolved(ENGINE, cuda_plan(data={"packing": True}))


def test_qlora_cuda_quantization_explicit() -> None:
    plan = cuda_plan(method={"type": "qlora", "quantization": {"bits": 4, "quant_type": "fp4", "double_quant": False,
                                                               "compute_dtype": "float16"}},
                     training={"gradient_checkpointing": True})
    text = script_of(plan)
    c = calls(text)
    assert c["FastLanguageModel.from_pretrained"]["load_in_4bit"] is True
    assert c["FastLanguageModel.from_pretrained"]["dtype"] == "bfloat16"
    assert c["BitsAndBytesConfig"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                                       "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float16"}
    assert c["FastLanguageModel.get_peft_model"]["use_gradient_checkpointing"] == "unsloth"
    assert c["SFTConfig"]["bf16"] is True and c["SFTConfig"]["optim"] == "adamw_8bit"
    eff = ENGINE.effective(render_resolved(ENGINE, plan))
    assert eff["method"] == "qlora" and eff["quantization"] == {
        "bits": 4, "quant_type": "fp4", "double_quant": False, "compute_dtype": "float16"}
    assert eff["precision"] == "bf16" and str(eff["gradient_checkpointing"]).startswith("unsloth")


def test_lora_cuda_eval_and_all_tokens() -> None:
    plan = cuda_plan(data={"train_on": "all", "val_fraction": 0.1, "handoff": "tokens"}, training={"eval_steps": 5})
    text = script_of(plan)
    c = calls(text)
    assert "train_on_responses_only" not in c
    assert c["load_dataset"]["data_files"] == {"train": "data/train.tokens.jsonl", "test": "data/eval.tokens.jsonl"}
    assert c["SFTConfig"]["eval_strategy"] == "steps" and c["SFTTrainer"]["eval_dataset"] == "dataset['test']"
    eff = ENGINE.effective(render_resolved(ENGINE, plan))
    assert eff["loss_mask"] == LOSS_MASK_TOKENS and eff["eval_steps"] == 5
    assert eff["eval_file"] == "data/eval.tokens.jsonl"
    assert eff["precision"].startswith("bf16")  # a GPU render: Unsloth's trainer patch (fp32 -> autocast)


def test_text_handoff_masks_with_train_on_responses_only() -> None:
    c = calls(script_of(cuda_plan(data={"handoff": "text"})))
    assert c["load_dataset"] == {"data_files": {"train": "data/train.jsonl"}}
    mask = c["train_on_responses_only"]
    assert mask == {"instruction_part": "<|im_start|>user\n", "response_part": "<|im_start|>assistant\n"}
    assert ENGINE.effective(render_resolved(ENGINE, cuda_plan(data={"handoff": "text"})))["loss_mask"] == (
        LOSS_MASK_ASSISTANT)


def test_multi_gpu_is_torchrun() -> None:
    plan = cuda_plan(distributed={"gpus": 2, "strategy": "ddp"}, training={"gradient_accumulation_steps": 1})
    assert ENGINE.command(plan) == ["torchrun", "--nproc_per_node=2", "--log_dir=ranks", "--tee=3", "--standalone",
                                    "train_unsloth.py"]
    eff = ENGINE.effective(render_resolved(ENGINE, plan))
    assert eff["gpus"] == 2 and eff["effective_batch"] == 8 and eff["distributed"] == "ddp (torchrun)"


def test_effective_applies_unsloth_defaults_for_missing_kwargs(cpu_plan: Plan) -> None:
    text = render_resolved(ENGINE, cpu_plan)[SCRIPT_FILE]
    for line in ("        learning_rate=0.001,\n", "        weight_decay=0.0,\n", "        use_exact_model_name=True,"):
        assert line in text
        text = text.replace(line, "", 1)
    eff = ENGINE.effective({SCRIPT_FILE: text})
    assert eff["learning_rate"] == 5e-5 and eff["weight_decay"] == 0.001
    assert "remapped" in eff["model"]


@pytest.mark.parametrize("section,key", [("output", "dir"), ("model", "name_or_path")])
def test_hostile_string_stays_a_literal(section: str, key: str) -> None:
    benign = cuda_plan(**{section: {key: "benign-value"}})
    hostile = cuda_plan(**{section: {key: HOSTILE}})
    text, benign_text = script_of(hostile), script_of(benign)
    assert HOSTILE in string_constants(text)
    assert call_names(text) == call_names(benign_text)
    c = calls(text)
    if section == "output":
        assert c["SFTConfig"]["output_dir"] == HOSTILE
    else:
        assert c["FastLanguageModel.from_pretrained"]["model_name"] == HOSTILE
    assert len(ast.parse(text).body) == len(ast.parse(benign_text).body)


@pytest.mark.parametrize("section,key", [("output", "dir"), ("model", "name_or_path")])
@pytest.mark.parametrize("refused", ["x'\"\n__import__('os').system('echo pwned')#", "x\x00y", "x${y}"])
def test_a_string_the_script_must_not_carry_is_refused(section: str, key: str, refused: str) -> None:
    with pytest.raises(RecipeError, match=rf"{section}\.{key}"):
        cuda_plan(**{section: {key: refused}})
