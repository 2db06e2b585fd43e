"""TRL engine: `trl_config.yaml` in TRL's own field names + a fixed launcher `train_trl.py`.

Why a launcher instead of `trl sft --config`: `trl/scripts/sft.py` calls ``trainer.train()`` without
``resume_from_checkpoint``, so the CLI can never resume. The launcher does what `trl sft` does (same
TrlParser dataclasses, same model kwargs, same SFTTrainer call) plus ``--resume`` and a separate eval file.
It holds no recipe value at all: everything is in the YAML, which `TrlParser` validates natively.

Checked against trl 1.9.0 / transformers 5.16.1 / peft 0.20.0.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import yaml

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.engines.base import (
    CHATML_TEMPLATE,
    BaseEngine,
    EnvSpec,
    engine_environment,
    header_context,
)
from qwenrecipes.engines.launchers import accelerate_args, cpu_fsdp_problems, is_multiprocess
from qwenrecipes.engines.templating import render_template
from qwenrecipes.engines.trl.accelerate import accelerate_config
from qwenrecipes.recipe import concepts
from qwenrecipes.recipe.memory import EngineProfile
from qwenrecipes.recipe.plan import EVAL_TOKENS_FILE, TRAIN_TOKENS_FILE, Plan

TRL_VERSION = "1.9.0"
CONFIG_FILE = "trl_config.yaml"
LAUNCHER_FILE = "train_trl.py"
TEMPLATE_FILE = "chat_template.jinja"
ACCELERATE_FILE = "accelerate_config.yaml"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
PEFT_QWEN3_DEFAULT_TARGETS = ["q_proj", "v_proj"]  # peft/utils/constants.py, used when lora_target_modules is None
CHAT_TEMPLATE_CHATML = concepts.CHAT_TEMPLATE_PINNED

# What TRL/transformers use for a key the YAML leaves out (trl/trainer/sft_config.py, base_config.py,
# model_config.py, transformers/training_args.py). effective() applies these, so an edited file that drops
# a key still reports what TRL would really do.
TRL_DEFAULTS: dict[str, Any] = {
    "model_name_or_path": None,
    "dtype": "float32",
    "attn_implementation": None,
    "use_peft": False,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": None,
    "lora_modules_to_save": None,
    "use_dora": False,
    "use_rslora": False,
    "load_in_4bit": False,
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",
    "use_bnb_nested_quant": False,
    "chat_template_path": None,
    "assistant_only_loss": False,
    "completion_only_loss": None,
    "max_length": 1024,
    "truncation_mode": "keep_start",
    "packing": False,
    "packing_strategy": "bfd",
    "padding_free": False,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_steps": -1,
    "num_train_epochs": 3.0,
    "learning_rate": 2e-5,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "optim": "adamw_torch_fused",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "bf16": None,  # None becomes `not fp16` (trl/trainer/base_config.py)
    "fp16": False,
    "gradient_checkpointing": True,
    "seed": 42,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": None,
    "eval_strategy": "no",
    "eval_steps": None,
    "use_liger_kernel": False,
    "report_to": "none",
    "train_sampling_strategy": "random",
    "loss_type": None,  # None becomes chunked_nll (nll with use_liger_kernel)
}


def _loss_type(plan: Plan) -> str:
    """chunked_nll is TRL's default and the same maths as nll, but it refuses Liger and an lm_head wrapped by
    PEFT (modules_to_save), so those two cases use plain nll."""
    recipe = plan.recipe
    touched = set(recipe.target_modules) | set(recipe.lora["modules_to_save"])
    trains_head = recipe.uses_adapter and "lm_head" in touched
    return "nll" if recipe.training["liger_kernel"] or trains_head else "chunked_nll"


def _sections(plan: Plan, tokens: bool) -> dict[str, dict[str, Any]]:
    recipe = plan.recipe
    lora, quant, training, data = recipe.lora, recipe.quantization, recipe.training, recipe.data
    model = {
        "model_name_or_path": plan.model_path,
        "model_revision": "main",
        "dtype": plan.model_dtype,  # the TRL CLI default is float32
        "attn_implementation": recipe.model["attn"],
        "trust_remote_code": recipe.model["trust_remote_code"],
    }
    qlora = recipe.method["type"] == "qlora"
    method: dict[str, Any] = {"use_peft": recipe.uses_adapter}
    if recipe.uses_adapter:
        method.update({
            "lora_r": lora["r"],
            "lora_alpha": lora["alpha"],
            "lora_dropout": lora["dropout"],
            "lora_target_modules": list(recipe.target_modules),
            "lora_modules_to_save": list(lora["modules_to_save"]) or None,
            "use_dora": lora["use_dora"],
            "use_rslora": lora["use_rslora"],
            "lora_task_type": "CAUSAL_LM",
        })
    # TRL takes the 4-bit compute dtype from `dtype` (trl get_quantization_config): no separate knob.
    method.update({
        "load_in_4bit": qlora,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": quant["quant_type"],
        "use_bnb_nested_quant": quant["double_quant"] if qlora else False,  # TRL default False, others True
    })
    # Token handoff: rows with input_ids (+ labels) are "processed" for SFTTrainer._prepare_dataset: no
    # template, no tokenization, and an existing labels column is kept as is (trl/trainer/sft_trainer.py).
    data_files: dict[str, str] = {"train": TRAIN_TOKENS_FILE if tokens else plan.train_file}
    if plan.eval_file is not None:
        data_files["test"] = EVAL_TOKENS_FILE if tokens else plan.eval_file
    if plan.train_rows is not None:
        source: dict[str, Any] = {"path": "json", "data_files": data_files, "split": "train"}
    else:  # a hub dataset, loaded by name (qwenrecipes could not prepare it)
        source = {"path": plan.recipe.train.path, "split": plan.recipe.train.split}
    dataset_section = {
        "datasets": [source],
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        # Packed: null, as TRL 1.9 requires for padding_free without its packer; every bin fits max_seq_length.
        "max_length": None if plan.packing is not None else data["max_seq_length"],
        "truncation_mode": "keep_start",  # never reached: rows over max_length were dropped by qwenrecipes
        # data.packing: one line per qwenrecipes bin with its seq_lengths; TRL's packer off, its padding-free
        # collator makes per-row position ids and no attention mask (data/packing.py). Under the text handoff
        # TRL packs itself (bfd: best-fit decreasing, never splits a row; implies padding_free).
        "packing": data["packing"] and plan.packing is None,
        "packing_strategy": "bfd",
        "padding_free": data["packing"],
        "eval_packing": data["packing"] and plan.packing is None,
        # qwenrecipes already shuffled once with the recipe seed: read rows in that order, every epoch.
        "shuffle_dataset": False,
        "train_sampling_strategy": "sequential",
    }
    template = {
        "chat_template_path": TEMPLATE_FILE,
        "assistant_only_loss": data["train_on"] == "assistant" and not tokens,
        "completion_only_loss": False,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
    }
    max_steps = plan.max_steps if plan.max_steps is not None else -1
    train = {
        "per_device_train_batch_size": training["micro_batch_size"],
        "per_device_eval_batch_size": training["micro_batch_size"],
        "gradient_accumulation_steps": training["gradient_accumulation_steps"],
        "max_steps": max_steps,
        "num_train_epochs": float(training["epochs"]),
        "learning_rate": float(training["learning_rate"]),
        "lr_scheduler_type": training["scheduler"],
        "warmup_steps": plan.warmup_steps,  # an int: transformers 5 reads a float < 1 as a ratio
        "optim": training["optimizer"],
        "weight_decay": float(training["weight_decay"]),
        "max_grad_norm": float(training["max_grad_norm"]),
        "bf16": plan.precision_flags["bf16"],
        "fp16": plan.precision_flags["fp16"],
        "gradient_checkpointing": training["gradient_checkpointing"],
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if training["gradient_checkpointing"] else None,
        "seed": training["seed"],
        "data_seed": training["seed"],
        "use_liger_kernel": training["liger_kernel"],
        "loss_type": _loss_type(plan),
    }
    save_steps, eval_steps = training["save_steps"], training["eval_steps"]
    run = {
        "output_dir": recipe.output["dir"],
        "logging_strategy": "steps",
        "logging_steps": training["logging_steps"],
        "logging_first_step": False,
        "save_strategy": "steps" if save_steps else "no",  # null: the launcher saves only the final model
        "save_steps": save_steps,
        "save_total_limit": training["save_total_limit"],
        "eval_strategy": "steps" if eval_steps and plan.has_eval else "no",
        "eval_steps": eval_steps,
        "report_to": recipe.output["report_to"],
        "use_cpu": plan.target == "cpu",
        "dataset_num_proc": None,
        "dataloader_num_workers": 0,
        "push_to_hub": False,
    }
    return {"model": model, "method": method, "data": dataset_section, "template": template,
            "training": train, "run": run}


# Attention implementations that keep qwenrecipes' bins apart in transformers 5.16.1: position ids restarting per
# row, no attention mask, no cache; one flattened row (TRL's padding-free collator) for flash_attention_2, the bins
# side by side (train_trl.py's BinsSideBySide) for sdpa and eager (docs/equivalence.md, Packing).
PACKED_ATTENTION = frozenset({"sdpa", "eager", "flash_attention_2"})

# Why TRL's effective values differ where `explain` flags them.
NOTES: dict[str, str] = {
    "quantization": "TRL takes the 4-bit compute dtype from the model dtype (no separate knob)",
    "max_seq_length": "packed: max_length null, as TRL 1.9 requires for padding_free without its packer; "
                      "qwenrecipes' bins hold at most data.max_seq_length tokens",
    "packing": "qwenrecipes' bins with position ids from seq_lengths and no attention mask: side by side "
               "(train_trl.py's collator) with sdpa and eager, flattened by TRL's padding-free collator with "
               "flash_attention_2; rows stay separate with all three in transformers 5.16.1",
}


class TrlEngine(BaseEngine):
    name = "trl"
    main_file = CONFIG_FILE
    notes = NOTES
    env = EnvSpec("trl", ("trl:SFTTrainer", "peft:LoraConfig"))
    supports_liger = True
    # Measured (H200, Qwen3-4B, seq 2048 x 4, LoRA r=16): 11.8 GiB ckpt on, 58.0 off, 45.3 off + Liger,
    # 6.6 QLoRA, 11.8 at seq 8192 x 1: the counted activations and its chunked loss (~0.5 bytes per vocab entry).
    memory_profile = EngineProfile(fixed_gib=0.5, activations=1.0, checkpoints=1.0, logits_bytes=0.5, liger=0.753,
                                   lora_kernels=1.0)
    log_keys = MappingProxyType({"num_tokens": "tokens_seen"})  # cumulative tokens
    console_modules = MappingProxyType({"trl": "trl.cli", "accelerate": "accelerate.commands.accelerate_cli"})

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        return cpu_fsdp_problems(plan)  # FSDP through accelerate: accelerator processes only

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        attn = plan.recipe.model["attn"]
        if plan.packing is None or attn in PACKED_ATTENTION:
            return []
        return [("model.attn", f"{attn} is not known to keep a bin's rows apart in transformers 5.16.1 "
                               f"(docs/equivalence.md, Packing): use {', '.join(sorted(PACKED_ATTENTION))}")]

    def packed_row(self, row: PackedRow) -> dict[str, Any]:
        # DataCollatorForLanguageModeling(padding_free) builds position ids from seq_lengths; labels used as is.
        return {"input_ids": row.input_ids, "labels": row.labels, "seq_lengths": row.seq_lengths}

    def render(self, plan: Plan) -> dict[str, str]:
        context = header_context(plan, self.name)
        files = {
            CONFIG_FILE: render_template("trl/trl_config.yaml.j2", trl_version=TRL_VERSION, **context,
                                         **_sections(plan, self.handoff(plan) == "tokens")),
            LAUNCHER_FILE: render_template("trl/train_trl.py.j2", **context),
            TEMPLATE_FILE: CHATML_TEMPLATE,
        }
        if is_multiprocess(plan):
            files[ACCELERATE_FILE] = render_template("trl/accelerate_config.yaml.j2", **context,
                                                     accelerate=accelerate_config(plan))
        return files

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        tail = [LAUNCHER_FILE, "--config", CONFIG_FILE, *(["--resume", resume_from] if resume_from else [])]
        if is_multiprocess(plan):
            return ["accelerate", "launch", "--config_file", ACCELERATE_FILE, *accelerate_args(plan), *tail]
        return ["python", *tail]

    def environment(self, plan: Plan) -> dict[str, str]:
        own = {"TOKENIZERS_PARALLELISM": "false"}
        if plan.recipe.output["report_to"] == "wandb":
            own["WANDB_MODE"] = "online"
        return engine_environment(plan, own)

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        loaded = yaml.safe_load(files[CONFIG_FILE]) or {}
        c = {**TRL_DEFAULTS, **loaded}
        accelerate = yaml.safe_load(files[ACCELERATE_FILE]) if ACCELERATE_FILE in files else None
        template_text = files.get(c["chat_template_path"] or "")
        plain_chatml = template_text == CHATML_TEMPLATE
        adapter = bool(c["use_peft"])
        four_bit = bool(c["load_in_4bit"])
        method = ("qlora" if four_bit else "lora") if adapter else "full"
        if four_bit:
            quantization: dict[str, object] | str | None = concepts.quantization_value(
                4, c["bnb_4bit_quant_type"], c["use_bnb_nested_quant"], c["dtype"])
        elif c["load_in_8bit"]:
            quantization = "8-bit (bitsandbytes int8)"
        else:
            quantization = None
        bf16 = (not c["fp16"]) if c["bf16"] is None else bool(c["bf16"])
        precision = "bf16" if bf16 else ("fp16" if c["fp16"] else "fp32")

        if c["chat_template_path"] is None:
            chat_template = "tokenizer's own template"
        elif plain_chatml:
            chat_template = CHAT_TEMPLATE_CHATML
        else:
            chat_template = f"custom: {c['chat_template_path']}"
        # TRL swaps in its own qwen3_training.jinja only without {% generation %} markers (ours has them).
        think = (concepts.THINK_INLINE if plain_chatml
                 else "engine template decides (TRL may swap in qwen3_training.jinja)")
        datasets = c.get("datasets") or []
        files_spec = datasets[0].get("data_files") if datasets else None
        train_file = files_spec.get("train") if isinstance(files_spec, dict) else files_spec
        if files_spec is None and datasets:
            train_file = datasets[0].get("path")  # a hub dataset, by name
        eval_file = files_spec.get("test") if isinstance(files_spec, dict) else None
        if str(train_file or "").endswith(".tokens.jsonl"):  # pre-tokenized rows, their labels used as is
            chat_template, think, loss_mask = concepts.CHAT_TEMPLATE_TOKENS, think, concepts.LOSS_MASK_TOKENS
        elif c["assistant_only_loss"]:
            loss_mask = (concepts.LOSS_MASK_ASSISTANT if plain_chatml
                         else "assistant spans of the template's generation markers")
        else:
            loss_mask = concepts.LOSS_MASK_ALL

        if c["padding_free"] and not c["packing"] and str(train_file or "").endswith(".tokens.jsonl"):
            packing: bool | str = concepts.PACKING_BINS
        elif c["packing"]:
            strategy = c["packing_strategy"]
            packing = (f"{strategy}: rows packed up to max_length, padding-free with per-row position_ids "
                                   "(rows stay separate only with flash_attention_2/3)")
        else:
            packing = False
        # qwenrecipes' bins: max_length is null because TRL requires it for padding_free without its packer; the
        # over-long rows were dropped by qwenrecipes before packing, as for every engine.
        truncation = (concepts.TRUNCATION_NONE if c["max_length"] is not None or packing == concepts.PACKING_BINS
                      else "none (max_length null)")

        gpus = int(accelerate["num_processes"]) if accelerate else 1
        if accelerate:
            kind = accelerate["distributed_type"]
            distributed = (f"deepspeed_zero{accelerate['deepspeed_config']['zero_stage']}" if kind == "DEEPSPEED"
                           else {"FSDP": "fsdp", "MULTI_GPU": "ddp"}.get(kind, kind.lower()))
        else:
            distributed = "none"
        micro, accumulation = c["per_device_train_batch_size"], c["gradient_accumulation_steps"]
        max_steps = c["max_steps"] if c["max_steps"] and c["max_steps"] > 0 else f"{c['num_train_epochs']:g} epochs"
        targets = c["lora_target_modules"] if c["lora_target_modules"] is not None else PEFT_QWEN3_DEFAULT_TARGETS
        return {
            "model": c["model_name_or_path"],
            "model_dtype": c["dtype"],
            "attn": c["attn_implementation"] or "transformers default",
            "method": method,
            "quantization": quantization,
            "lora_r": c["lora_r"] if adapter else None,
            "lora_alpha": c["lora_alpha"] if adapter else None,
            "lora_dropout": c["lora_dropout"] if adapter else None,
            "lora_targets": list(targets) if adapter else None,
            "use_dora": bool(c["use_dora"]) if adapter else None,
            "use_rslora": bool(c["use_rslora"]) if adapter else None,
            "modules_to_save": list(c["lora_modules_to_save"] or []) if adapter else None,
            "chat_template": chat_template,
            "think_handling": think,
            "loss_mask": loss_mask,
            "train_file": train_file,
            "eval_file": eval_file,
            "max_seq_length": c["max_length"],
            "truncation": truncation,
            "packing": packing,
            "micro_batch_size": micro,
            "gradient_accumulation_steps": accumulation,
            "gpus": gpus,
            "effective_batch": micro * accumulation * gpus,
            "max_steps": max_steps,
            "learning_rate": c["learning_rate"],
            "scheduler": c["lr_scheduler_type"],
            "warmup_steps": c["warmup_steps"],
            "optimizer": c["optim"],
            "weight_decay": c["weight_decay"],
            "max_grad_norm": c["max_grad_norm"],
            "precision": precision,
            "gradient_checkpointing": bool(c["gradient_checkpointing"]),
            "seed": c["seed"],
            "logging_steps": c["logging_steps"],
            "save_steps": c["save_steps"] if c["save_strategy"] == "steps" else None,
            "save_total_limit": c["save_total_limit"],
            "eval_steps": c["eval_steps"] if c["eval_strategy"] == "steps" else None,
            "liger_kernel": bool(c["use_liger_kernel"]),
            "report_to": c["report_to"],
            "distributed": distributed,
        }


ENGINE = TrlEngine()
