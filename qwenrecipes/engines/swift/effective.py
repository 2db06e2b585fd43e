"""swift_sft.yaml read back into the canonical settings, with swift's own defaults for every key the file leaves
out (SftArguments of ms-swift 4.6.0: swift/arguments/sft_args.py, base_args/*.py, and the HF TrainingArguments
fields swift overrides). An edited file that drops a key still reports what swift would really do."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from qwenrecipes.engines.swift import textpath, tokenpath
from qwenrecipes.recipe import concepts

# swift's value for a key the YAML leaves out. Where it differs from the HF Trainer's, the comment says so.
SWIFT_DEFAULTS: dict[str, Any] = {
    "model": None,
    "torch_dtype": None,  # read from the model's config.json
    "attn_impl": None,  # read from config.json
    "tuner_type": "lora",
    "lora_rank": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": ["all-linear"],
    "modules_to_save": [],
    "use_dora": False,
    "use_rslora": False,
    "quant_method": None,
    "quant_bits": None,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": None,  # the torch dtype
    "dataset": [],
    "val_dataset": [],
    "template": None,  # the model type's own (qwen3: Qwen3Mixed, an empty think block in every turn)
    "system": None,
    "loss_scale": "default",
    "max_length": None,  # the model's max_position_embeddings
    "truncation_strategy": None,  # becomes delete
    "strict": False,  # a row swift cannot encode is dropped with a log line
    "custom_register_path": [],
    "packing": False,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": None,  # becomes ceil(16 / batch / world size)
    "max_steps": -1,
    "num_train_epochs": 3.0,
    "learning_rate": None,  # 1e-4 for LoRA, 1e-5 for full
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "optim": "adamw_torch_fused",
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "max_grad_norm": 1.0,
    "bf16": None,
    "fp16": None,
    "gradient_checkpointing": True,
    "seed": 42,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": None,
    "eval_strategy": None,  # follows save_strategy
    "eval_steps": None,  # follows save_steps
    "use_liger_kernel": False,
    "report_to": ["tensorboard"],
    "deepspeed": None,
    "fsdp": None,
}
LOSS_MASK_SWIFT = "assistant turns: content + <|im_end|> + trailing \\n (swift's own template)"


def _gpus(files: dict[str, str]) -> int:
    """The world size is a launcher argument: torchrun's processes per node x nodes in the rendered COMMAND (for
    several nodes it is the comment naming what each node runs), or NPROC_PER_NODE x NNODES for `swift sft`."""
    command, count = files.get("COMMAND", ""), 1
    for pair in (("--nproc_per_node=", "NPROC_PER_NODE="), ("--nnodes=", "NNODES=")):
        match = re.search(rf"(?:{'|'.join(map(re.escape, pair))})(\d+)", command)
        count *= int(match.group(1)) if match else 1
    return count


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else (None if isinstance(value, list) else value)


def effective(files: dict[str, str]) -> dict[str, Any]:
    from qwenrecipes.engines.swift.engine import MAIN_FILE

    c = {**SWIFT_DEFAULTS, **(yaml.safe_load(files[MAIN_FILE]) or {})}
    adapter = c["tuner_type"] in ("lora", "longlora", "adalora")
    four_bit = c["quant_method"] == "bnb" and c["quant_bits"] == 4
    method = ("qlora" if four_bit else "lora") if adapter else str(c["tuner_type"])
    dtype = c["torch_dtype"] or "model config's dtype"
    quantization = (concepts.quantization_value(4, c["bnb_4bit_quant_type"], c["bnb_4bit_use_double_quant"],
                                                c["bnb_4bit_compute_dtype"] or dtype) if four_bit
                    else (f"{c['quant_bits']}-bit ({c['quant_method']})" if c["quant_method"] else None))
    precision = "bf16" if c["bf16"] else ("fp16" if c["fp16"] else ("fp32" if c["bf16"] is False else
                                                                      "from the model dtype"))

    ours = c["template"] == textpath.TEMPLATE_NAME and textpath.REGISTER_FILE in (c.get("custom_register_path") or [])
    plain = ours or c["template"] in ("qwen3_nothinking", "chatml")
    chat_template = concepts.CHAT_TEMPLATE_PINNED if plain and not c["system"] else (
        c["template"] or "swift's qwen3 template (Qwen3Mixed)")
    think = concepts.THINK_INLINE if plain else "swift adds an empty think block to every assistant turn"
    scale = c["loss_scale"]
    if scale == "all":
        loss_mask = concepts.LOSS_MASK_ALL
    elif scale == "default":
        loss_mask = concepts.LOSS_MASK_ASSISTANT if ours else LOSS_MASK_SWIFT
    else:
        loss_mask = f"swift loss_scale {scale}"
    registered = textpath.REGISTER_FILE in (c.get("custom_register_path") or [])
    bins = registered and c["template"] == tokenpath.BINS_TEMPLATE_NAME  # qwenrecipes' bins (tokenpath.py)
    if registered and c["template"] in (tokenpath.TEMPLATE_NAME, tokenpath.BINS_TEMPLATE_NAME):
        chat_template, think = concepts.CHAT_TEMPLATE_TOKENS, concepts.THINK_INLINE
        loss_mask = concepts.LOSS_MASK_TOKENS
    # strict: a row over max_length fails the run instead of being deleted (qwenrecipes dropped them already).
    truncation = (concepts.TRUNCATION_NONE if c["max_length"] is not None and c["strict"]
                  else f"swift truncation_strategy {c['truncation_strategy'] or 'delete'} (rows dropped silently)")
    packing: bool | str = ("binpack: rows packed up to max_length, padding-free with per-row position_ids (rows stay "
                           "separate only with flash_attention_2/3)") if c["packing"] else False
    if bins and not c["packing"]:
        packing = concepts.PACKING_BINS

    gpus = _gpus(files)
    if c["deepspeed"]:
        stage = (json.loads(files.get(str(c["deepspeed"]), "{}")) or {}).get("zero_optimization", {}).get("stage")
        distributed = f"deepspeed_zero{stage}" if stage is not None else f"deepspeed {c['deepspeed']}"
    elif c["fsdp"]:
        distributed = "fsdp"
    else:
        distributed = "ddp" if gpus > 1 else "none"
    checkpointing = bool(c["gradient_checkpointing"])
    if c["fsdp"] and c["fsdp"] in files:
        checkpointing = bool(json.loads(files[c["fsdp"]]).get("fsdp_config", {}).get("activation_checkpointing"))

    micro = c["per_device_train_batch_size"]
    accumulation = c["gradient_accumulation_steps"]
    if accumulation is None:
        accumulation = max(1, -(-16 // (micro * gpus)))
    lr = c["learning_rate"] if c["learning_rate"] is not None else (1e-4 if adapter else 1e-5)
    max_steps = c["max_steps"] if c["max_steps"] and c["max_steps"] > 0 else f"{float(c['num_train_epochs']):g} epochs"
    save_steps = c["save_steps"] if c["save_strategy"] == "steps" else None
    eval_strategy = c["eval_strategy"] or c["save_strategy"]
    eval_steps = (c["eval_steps"] or c["save_steps"]) if eval_strategy == "steps" and c["val_dataset"] else None
    report = c["report_to"]
    report = ",".join(report) if isinstance(report, list) else report
    return {
        "model": c["model"],
        "model_dtype": dtype,
        "attn": c["attn_impl"] or "transformers default",
        "method": method,
        "quantization": quantization,
        "lora_r": c["lora_rank"] if adapter else None,
        "lora_alpha": c["lora_alpha"] if adapter else None,
        "lora_dropout": c["lora_dropout"] if adapter else None,
        "lora_targets": list(c["target_modules"]) if adapter else None,
        "use_dora": bool(c["use_dora"]) if adapter else None,
        "use_rslora": bool(c["use_rslora"]) if adapter else None,
        "modules_to_save": list(c["modules_to_save"] or []) if adapter else None,
        "chat_template": chat_template,
        "think_handling": think,
        "loss_mask": loss_mask,
        "train_file": _first(c["dataset"]),
        "eval_file": _first(c["val_dataset"]),
        "max_seq_length": c["max_length"],
        "truncation": truncation,
        "packing": packing,
        "micro_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
        "gpus": gpus,
        "effective_batch": micro * accumulation * gpus,
        "max_steps": max_steps,
        "learning_rate": lr,
        "scheduler": c["lr_scheduler_type"],
        "warmup_steps": c["warmup_steps"],
        "optimizer": c["optim"],
        "weight_decay": c["weight_decay"],
        "max_grad_norm": c["max_grad_norm"],
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "seed": c["seed"],
        "logging_steps": c["logging_steps"],
        "save_steps": save_steps,
        "save_total_limit": c["save_total_limit"],
        "eval_steps": eval_steps,
        "liger_kernel": bool(c["use_liger_kernel"]),
        "report_to": report,
        "distributed": distributed,
    }
