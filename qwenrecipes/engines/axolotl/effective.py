"""Axolotl's rendered files read back into the canonical settings (``AxolotlEngine.effective``), with Axolotl's
own defaults for anything the files leave out."""

from __future__ import annotations

import json
from typing import Any

import yaml

from qwenrecipes.engines.axolotl.engine import (
    CHATML_NAME,
    IM_END,
    LIGER_PLUGIN,
    MAIN_FILE,
)
from qwenrecipes.engines.base import CHATML_TEMPLATE, CHATML_TEMPLATE_PLAIN
from qwenrecipes.recipe import concepts


def effective(files: dict[str, str]) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(files[MAIN_FILE]) or {}
    ds_list = cfg.get("datasets") or [{}]
    ds = ds_list[0]
    adapter = cfg.get("adapter")
    method = adapter if adapter in ("lora", "qlora") else "full"

    bf16, fp16 = cfg.get("bf16", "auto"), cfg.get("fp16")
    if bf16 == "auto":
        precision = "auto (bf16 when the GPU supports it, else fp16)"
        model_dtype = "auto (follows bf16/fp16 detection)"
    else:
        precision = "bf16" if bf16 else "fp16" if fp16 else "fp32"
        if bf16 or cfg.get("bfloat16"):
            model_dtype = "bfloat16"
        elif fp16 or cfg.get("float16") or cfg.get("load_in_8bit"):
            model_dtype = "float16"
        else:
            model_dtype = "float32"

    quantization = None
    if cfg.get("load_in_4bit"):
        bnb = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
               "bnb_4bit_compute_dtype": model_dtype, **(cfg.get("bnb_config_kwargs") or {})}
        quantization = {"bits": 4, "quant_type": bnb["bnb_4bit_quant_type"],
                        "double_quant": bnb["bnb_4bit_use_double_quant"],
                        "compute_dtype": bnb["bnb_4bit_compute_dtype"]}
    elif cfg.get("load_in_8bit"):
        quantization = {"bits": 8}

    targets = cfg.get("lora_target_modules")
    if cfg.get("lora_target_linear"):
        targets = "all linear layers except lm_head"
    elif isinstance(targets, str):
        targets = [targets]

    template = ds.get("chat_template_jinja") or cfg.get("chat_template_jinja")
    if (ds.get("chat_template") or cfg.get("chat_template")) == "jinja" and template in (
            CHATML_TEMPLATE, CHATML_TEMPLATE_PLAIN):
        chat_template = CHATML_NAME
    else:
        chat_template = ds.get("chat_template") or cfg.get("chat_template") or "tokenizer default"

    roles = ds.get("roles_to_train", ["assistant"])
    eos = ds.get("train_on_eos", "turn")
    eot_ok = IM_END in (cfg.get("eot_tokens") or []) and ds.get("train_on_eot", eos) == "turn"
    if cfg.get("train_on_inputs") or set(roles) >= {"system", "user", "assistant"}:
        loss_mask = "all turns: content + <|im_end|> (role headers and newlines masked)"
    elif list(roles) == ["assistant"] and eot_ok:
        loss_mask = concepts.LOSS_MASK_ASSISTANT
    elif list(roles) == ["assistant"]:
        loss_mask = "assistant turns: content + tokenizer eos (<|im_end|> only if it is the eos)"
    else:
        loss_mask = f"roles {roles}: content, eos={eos}"

    if "type" not in ds and str(ds.get("path", "")).endswith(".tokens.jsonl"):  # token handoff: taken as is
        chat_template, loss_mask = concepts.CHAT_TEMPLATE_TOKENS, concepts.LOSS_MASK_TOKENS

    packing: bool | str = bool(cfg.get("sample_packing"))
    if not packing and cfg.get("skip_prepare_dataset") and str(ds.get("path", "")).endswith(".tokens.jsonl"):
        packing = concepts.PACKING_BINS  # qwenrecipes' bins as rows, taken as given (bins.py)

    strategy = cfg.get("excess_length_strategy") or "drop"
    truncation = (concepts.TRUNCATION_NONE if strategy == "raise"
                  else "dropped by Axolotl (longer than sequence_len)" if strategy == "drop"
                  else "truncated to sequence_len")

    warmup = cfg.get("warmup_steps")
    if warmup is None:
        warmup = "auto: min(int(0.03 * total), 100)" if cfg.get("warmup_ratio") is None else (
            f"ratio {cfg['warmup_ratio']} (floor)")
    elif warmup == 1:
        warmup = 2  # Axolotl's builder: "if warmup_steps == 1: warmup_steps = 2"

    save_strategy = cfg.get("save_strategy")
    save_steps = cfg.get("save_steps") if cfg.get("save_steps") else (
        None if save_strategy == "no" else "every epoch")
    eval_steps = cfg.get("eval_steps") if cfg.get("eval_strategy", "no") != "no" else None

    report = "wandb" if cfg.get("use_wandb") or cfg.get("wandb_project") else (
        "tensorboard" if cfg.get("use_tensorboard") else "none")
    gpus = 1
    dist = "none"
    if cfg.get("deepspeed"):
        ds_cfg = json_or_none(files.get(str(cfg["deepspeed"])))
        zero = (ds_cfg or {}).get("zero_optimization", {})
        dist = f"deepspeed_zero{zero.get('stage', '?')}"
        if zero.get("offload_optimizer"):
            dist += "+offload"
    elif cfg.get("fsdp_config") or cfg.get("fsdp"):
        dist = "fsdp"
    elif cfg.get("ddp_find_unused_parameters") is not None:
        dist = "ddp"
    mbs = cfg.get("micro_batch_size", 1)
    ga = cfg.get("gradient_accumulation_steps", 1)
    gpus = _gpus_from_command(files, gpus)
    liger = LIGER_PLUGIN in (cfg.get("plugins") or [])

    return {
        "model": cfg.get("base_model"),
        "model_dtype": model_dtype,
        "attn": cfg.get("attn_implementation") or "transformers default",
        "method": method,
        "quantization": quantization,
        "lora_r": cfg.get("lora_r") if method != "full" else None,
        "lora_alpha": cfg.get("lora_alpha") if method != "full" else None,
        "lora_dropout": cfg.get("lora_dropout", 0.0) if method != "full" else None,
        "lora_targets": targets if method != "full" else None,
        "use_dora": bool(cfg.get("peft_use_dora")) if method != "full" else None,
        "use_rslora": bool(cfg.get("peft_use_rslora")) if method != "full" else None,
        "modules_to_save": list(cfg.get("lora_modules_to_save") or []) if method != "full" else None,
        "chat_template": chat_template,
        "think_handling": concepts.THINK_INLINE if chat_template in (CHATML_NAME, concepts.CHAT_TEMPLATE_TOKENS)
        else "template default",
        "loss_mask": loss_mask,
        "train_file": ds.get("path"),
        "eval_file": ((cfg.get("test_datasets") or [{}])[0]).get("path"),
        "max_seq_length": cfg.get("sequence_len", 512),
        "truncation": truncation,
        "packing": packing,
        "micro_batch_size": mbs,
        "gradient_accumulation_steps": ga,
        "gpus": gpus,
        "effective_batch": mbs * ga * gpus,
        "max_steps": cfg.get("max_steps") or f"estimated from {cfg.get('num_epochs', 1.0)} epochs",
        "learning_rate": cfg.get("learning_rate"),
        "scheduler": cfg.get("lr_scheduler", "cosine"),
        "warmup_steps": warmup,
        "optimizer": cfg.get("optimizer", "adamw_torch_fused"),
        "weight_decay": cfg.get("weight_decay", 0.0),
        "max_grad_norm": cfg.get("max_grad_norm", 1.0),
        "precision": precision,
        "gradient_checkpointing": bool(cfg.get("gradient_checkpointing", False)),
        "seed": cfg.get("seed", 42),
        "logging_steps": cfg.get("logging_steps"),
        "save_steps": save_steps,
        "save_total_limit": cfg.get("save_total_limit") or 4,
        "eval_steps": eval_steps,
        "liger_kernel": liger,
        "report_to": report,
        "distributed": dist,
    }



def json_or_none(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _gpus_from_command(files: dict[str, str], default: int) -> int:
    """GPU count is a launcher argument, not a config key: read it from the rendered COMMAND when present."""
    command = files.get("COMMAND", "")
    marker = "--nproc_per_node="
    count = default
    for marker in ("--nproc_per_node=", "--nnodes="):  # world size: processes per node x nodes
        if marker in command:
            digits = command.split(marker, 1)[1].split()[0].strip("'\"")
            count = count * int(digits) if digits.isdigit() else count
    return count
