"""The canonical settings `explain` compares across engines. Each engine's ``effective()`` returns a dict
with exactly these keys, read back from its rendered files (plus the engine defaults still in force)."""

from __future__ import annotations

# key -> label shown by `explain`. Values are plain JSON values (str/int/float/bool/None/list).
CONCEPTS: dict[str, str] = {
    "model": "base model",
    "model_dtype": "weights dtype",
    "attn": "attention",
    "method": "method (full/lora/qlora)",
    "quantization": "quantization (bits/type/double/compute)",
    "lora_r": "LoRA r",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_targets": "LoRA target modules",
    "use_dora": "DoRA",
    "use_rslora": "rsLoRA",
    "modules_to_save": "modules_to_save",
    "chat_template": "chat template",
    "think_handling": "think blocks",
    "loss_mask": "loss mask",
    "train_file": "training data",
    "eval_file": "eval data",
    "max_seq_length": "max sequence length",
    "truncation": "over-long rows",
    "packing": "packing",
    "micro_batch_size": "micro batch",
    "gradient_accumulation_steps": "grad accumulation",
    "gpus": "world size (processes: GPUs x nodes)",
    "effective_batch": "effective batch (micro x accum x world size)",
    "max_steps": "optimizer steps",
    "learning_rate": "learning rate",
    "scheduler": "lr schedule",
    "warmup_steps": "warmup steps",
    "optimizer": "optimizer",
    "weight_decay": "weight decay",
    "max_grad_norm": "grad clip norm",
    "precision": "precision",
    "gradient_checkpointing": "gradient checkpointing",
    "seed": "seed",
    "logging_steps": "logging every",
    "save_steps": "save every",
    "save_total_limit": "checkpoints kept",
    "eval_steps": "eval every",
    "liger_kernel": "Liger kernels",
    "report_to": "report to",
    "distributed": "distribution",
}

# Canonical wording, so engines that behave the same read the same in `explain`.
LOSS_MASK_ASSISTANT = "assistant turns: content + <|im_end|>"
LOSS_MASK_ALL = "all tokens"
THINK_INLINE = "in the data text (qwenrecipes applied the rule; engine adds none)"
TRUNCATION_NONE = "dropped by qwenrecipes before the engine (engine never truncates)"
CHAT_TEMPLATE_PINNED = "plain ChatML (pinned, no default system prompt)"
# data.handoff: tokens: the engine reads input_ids + labels made by qwenrecipes (data/tokens.py), as is.
CHAT_TEMPLATE_TOKENS = "none in the engine: qwenrecipes rendered the ChatML text and tokenized it (token handoff)"
LOSS_MASK_TOKENS = "labels made by qwenrecipes, used as is (token handoff)"
# data.packing: the engine trains qwenrecipes' bins (data/packing.py) with its own packer off.
PACKING_BINS = "qwenrecipes' bins, one packed row each, per-row position ids (engine packer off)"


def quantization_value(bits: int, quant_type: str, double_quant: bool, compute_dtype: str) -> dict[str, object]:
    """The one shape every engine reports quantization in, so `explain` compares like with like."""
    return {"bits": bits, "quant_type": quant_type, "double_quant": bool(double_quant), "compute_dtype": compute_dtype}
