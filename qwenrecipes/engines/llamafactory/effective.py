"""LLaMA-Factory's rendered files read back into the canonical settings (``LlamaFactoryEngine.effective``), with
LLaMA-Factory's own defaults for anything the files leave out."""

from __future__ import annotations

import json
from typing import Any

import yaml

from qwenrecipes.engines.llamafactory.engine import (
    ACCELERATE_FSDP,
    CHATML_NAME,
    DATASET_DIR,
    DATASET_INFO,
    FLASH_ATTN_BACK,
    LOSS_MASK_LF,
    MAIN_FILE,
    TARGET_MARK,
    TEMPLATE,
)
from qwenrecipes.recipe import concepts
from qwenrecipes.recipe.plan import EVAL_TOKENS_FILE, TRAIN_TOKENS_FILE

PACKING_BINS_LF = ("qwenrecipes' bins, one packed row each, a block-diagonal mask from each token's row index "
                   "(neat_packing collator; engine packer off)")


def effective(files: dict[str, str]) -> dict[str, Any]:
    text = files[MAIN_FILE]
    cfg: dict[str, Any] = yaml.safe_load(text) or {}
    target = next((line.removeprefix(TARGET_MARK).strip() for line in text.splitlines()
                   if line.startswith(TARGET_MARK)), "unknown")
    info = json.loads(files[DATASET_INFO]) if DATASET_INFO in files else {}

    finetuning = cfg.get("finetuning_type", "lora")  # LF's default is lora, not full
    quant_bits = cfg.get("quantization_bit")
    method = "full" if finetuning == "full" else ("qlora" if quant_bits == 4 else "lora")
    adapter = method != "full"

    bf16, fp16 = bool(cfg.get("bf16", False)), bool(cfg.get("fp16", False))
    pure_bf16 = bool(cfg.get("pure_bf16", False))
    precision = "bf16" if bf16 or pure_bf16 else "fp16" if fp16 else "fp32"
    if precision == "bf16":
        model_dtype = "bfloat16"
    elif precision == "fp16":
        model_dtype = "float16"
    elif target == "cpu":
        model_dtype = "float32"
    else:
        model_dtype = "bfloat16 or float16 (LF infers it from the checkpoint for fp32 training on a GPU)"

    quantization = None
    if quant_bits == 4:
        quantization = {"bits": 4, "quant_type": cfg.get("quantization_type", "nf4"),
                        "double_quant": cfg.get("double_quantization", True),
                        "compute_dtype": model_dtype}
    elif quant_bits == 8:
        quantization = {"bits": 8}

    rank = cfg.get("lora_rank", 8)
    alpha = cfg.get("lora_alpha") or 2 * rank  # LF: lora_alpha None -> 2 * lora_rank
    target_text = cfg.get("lora_target", "all")
    targets: Any = ("all linear layers except lm_head" if target_text == "all"
                    else [t.strip() for t in str(target_text).split(",") if t.strip()])
    extra = cfg.get("additional_target")
    modules_to_save = [t.strip() for t in str(extra).split(",") if t.strip()] if extra else []

    template = cfg.get("template")
    chat_template = CHATML_NAME if template == TEMPLATE and not cfg.get("default_system") else (
        template or "tokenizer template (parsed)")
    think = concepts.THINK_INLINE if template == TEMPLATE else (
        "LF ReasoningTemplate: empty think block added to every assistant turn" if template == "qwen3"
        else "template default")
    if cfg.get("train_on_prompt"):
        loss_mask = concepts.LOSS_MASK_ALL
    elif cfg.get("mask_history"):
        loss_mask = "last assistant turn only: content + <|im_end|> + trailing \\n"
    else:
        loss_mask = LOSS_MASK_LF
    tokenized = cfg.get("tokenized_path")
    if tokenized:  # token handoff: get_dataset loads the saved rows and skips template and processors
        chat_template, think = concepts.CHAT_TEMPLATE_TOKENS, concepts.THINK_INLINE
        loss_mask = concepts.LOSS_MASK_TOKENS

    def file_of(name: str | None) -> str | None:
        entry = info.get(name or "", {})
        if "file_name" in entry:
            return f"{cfg.get('dataset_dir', DATASET_DIR)}/{entry['file_name']}"
        return entry.get("hf_hub_url")

    packing = bool(cfg.get("packing", False))
    packing_value: Any = packing if (not packing or cfg.get("neat_packing")) else (
        "packed without neat_packing: rows attend to each other")
    if packing_value is True and tokenized:  # the saved rows are qwenrecipes' bins (LF's packer never runs)
        packing_value = PACKING_BINS_LF
    save_strategy = cfg.get("save_strategy", "steps")
    save_steps = cfg.get("save_steps", 500) if save_strategy == "steps" else (
        None if save_strategy == "no" else save_strategy)
    eval_steps = (cfg.get("eval_steps") or cfg.get("logging_steps", 500)) if cfg.get(
        "eval_strategy", "no") == "steps" else None
    env_line = files.get("COMMAND", "")
    gpus = 1
    if "NPROC_PER_NODE=" in env_line:
        digits = env_line.split("NPROC_PER_NODE=", 1)[1].split()[0].strip("'\"")
        gpus = int(digits) if digits.isdigit() else 1
    if "NNODES=" in env_line:  # world size: processes per node x nodes
        digits = env_line.split("NNODES=", 1)[1].split()[0].strip("'\"")
        gpus *= int(digits) if digits.isdigit() else 1
    accel = files.get(ACCELERATE_FSDP)
    if accel:
        gpus = int((yaml.safe_load(accel) or {}).get("num_processes", gpus))
    dist = "none"
    if cfg.get("deepspeed"):
        zero = (json.loads(files.get(str(cfg["deepspeed"]), "{}")) or {}).get("zero_optimization", {})
        dist = f"deepspeed_zero{zero.get('stage', '?')}" + ("+offload" if zero.get("offload_optimizer") else "")
    elif accel:
        dist = "fsdp"
    elif gpus > 1:
        dist = "ddp"
    mbs = cfg.get("per_device_train_batch_size", 8)
    ga = cfg.get("gradient_accumulation_steps", 1)
    max_steps = cfg.get("max_steps", -1)
    report = cfg.get("report_to", "none")
    if isinstance(report, list):
        report = ",".join(report) or "none"

    return {
        "model": cfg.get("model_name_or_path"),
        "model_dtype": model_dtype,
        "attn": FLASH_ATTN_BACK.get(str(cfg.get("flash_attn", "auto")), "transformers default"),
        "method": method,
        "quantization": quantization,
        "lora_r": rank if adapter else None,
        "lora_alpha": alpha if adapter else None,
        "lora_dropout": cfg.get("lora_dropout", 0.0) if adapter else None,
        "lora_targets": targets if adapter else None,
        "use_dora": bool(cfg.get("use_dora", False)) if adapter else None,
        "use_rslora": bool(cfg.get("use_rslora", False)) if adapter else None,
        "modules_to_save": modules_to_save if adapter else None,
        "chat_template": chat_template,
        "think_handling": think,
        "loss_mask": loss_mask,
        # Token handoff: load_tokens.py saves the tokens files as the dataset tokenized_path loads.
        "train_file": TRAIN_TOKENS_FILE if tokenized else file_of(cfg.get("dataset")),
        "eval_file": (EVAL_TOKENS_FILE if cfg.get("eval_dataset") else None) if tokenized
        else file_of(cfg.get("eval_dataset")),
        "max_seq_length": cfg.get("cutoff_len", 2048) - (1 if packing else 0),
        # Rows reach LF no longer than cutoff_len, so its proportional truncation never fires.
        "truncation": concepts.TRUNCATION_NONE,
        "packing": packing_value,
        "micro_batch_size": mbs,
        "gradient_accumulation_steps": ga,
        "gpus": gpus,
        "effective_batch": mbs * ga * gpus,
        "max_steps": max_steps if max_steps and max_steps > 0 else (
            f"from {cfg.get('num_train_epochs', 3.0)} epochs"),
        "learning_rate": cfg.get("learning_rate", 5e-5),
        "scheduler": cfg.get("lr_scheduler_type", "linear"),
        "warmup_steps": cfg.get("warmup_steps", 0),
        "optimizer": cfg.get("optim", "adamw_torch_fused"),
        "weight_decay": cfg.get("weight_decay", 0.0),
        "max_grad_norm": cfg.get("max_grad_norm", 1.0),
        "precision": precision,
        "gradient_checkpointing": not cfg.get("disable_gradient_checkpointing", False),
        "seed": cfg.get("seed", 42),
        "logging_steps": cfg.get("logging_steps", 500),
        "save_steps": save_steps,
        "save_total_limit": cfg.get("save_total_limit"),
        "eval_steps": eval_steps,
        "liger_kernel": bool(cfg.get("enable_liger_kernel", False)),
        "report_to": report,
        "distributed": dist,
    }

