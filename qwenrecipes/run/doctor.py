"""Known engine failures, as data: (name, regex over the error text, fix).

The runner matches the engine's last traceback (and the log tail) against this table so a failed run
says what went wrong in words a person can act on. Order matters: the first match wins, so specific
patterns (ZeRO-3 + LoRA "shape [0]") come before broad ones (any OSError).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownFailure:
    name: str
    pattern: re.Pattern[str]
    fix: str


def _known(name: str, regex: str, fix: str) -> KnownFailure:
    return KnownFailure(name, re.compile(regex, re.IGNORECASE | re.MULTILINE), fix)


KNOWN_FAILURES: list[KnownFailure] = [
    _known("cuda_oom", r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|HIP out of memory",
           "GPU out of memory: lower training.micro_batch_size and raise gradient_accumulation_steps to keep "
           "the effective batch; shorten data.max_seq_length; set training.gradient_checkpointing: true; use "
           "4-bit (method.type: qlora); lower method.lora.r."),
    _known("cpu_oom", r"\bKilled\b.*signal 9|DefaultCPUAllocator: can't allocate memory|MemoryError",
           "out of host memory: lower micro_batch_size or max_seq_length, or use a smaller model."),
    _known("zero3_lora", r"shape \[0\]|size \[0\]|torch\.Size\(\[0\]\)",
           "DeepSpeed ZeRO-3 with LoRA/QLoRA leaves partitioned weights with shape [0]: use "
           "distributed.strategy: deepspeed_zero2 (or fsdp)."),
    _known("bitsandbytes", r"bitsandbytes|bnb\b.*(GPU|CUDA)|No GPU found|requires a GPU|load_in_4bit",
           "bitsandbytes needs a CUDA GPU and the bitsandbytes package: on CPU use method.type: lora and "
           "optimizer adamw_torch; on GPU reinstall the engine env (qwenrecipes env install ENGINE)."),
    _known("chat_template", r"chat[_ ]template|TemplateError|jinja2\.exceptions|apply_chat_template",
           "the chat template failed on the data: check data.train.format matches the rows (messages vs "
           "sharegpt/alpaca) and model.chat_template (qwen3 vs qwen3_nothink)."),
    _known("missing_model_or_data",
           r"Repo id|does not appear to have a file|is not a local folder and is not a valid model identifier|"
           r"FileNotFoundError|No such file or directory|OSError: .*(model|config|tokenizer|safetensors)|"
           r"DatasetNotFoundError|Couldn't find a dataset|LocalEntryNotFoundError|offline mode|"
           r"path: '[^']*' not found",  # a local path an engine's own hub resolver could not find
           "a model or data file was not found: check model.name_or_path and data paths (relative to the "
           "recipe); a hub model must be downloaded first (the engines run with HF_HUB_OFFLINE)."),
    _known("cuda_assert", r"device-side assert|CUDA error|torch\.AcceleratorError|CUDA driver",
           "a CUDA kernel failed: on CPU turn off GPU-only kernels (liger_kernel, fused LoRA kernels); "
           "otherwise rerun with CUDA_LAUNCH_BLOCKING=1 to see the failing op."),
    _known("import_error", r"ModuleNotFoundError|ImportError",
           "the engine env is missing a package: reinstall it (qwenrecipes env install ENGINE)."),
]


@dataclass(frozen=True)
class Diagnosis:
    name: str
    fix: str


def classify(text: str) -> Diagnosis | None:
    """The first known failure whose pattern occurs in `text` (a traceback or the log tail)."""
    for failure in KNOWN_FAILURES:
        if failure.pattern.search(text):
            return Diagnosis(failure.name, failure.fix)
    return None
