"""Standard benchmarks through lm-evaluation-harness (`lm-eval`, in the trl env's lock), with its own HF
backend: base + adapter through ``peft=``, or a merged/full model folder through ``pretrained=``.

Each model gets a tokenizer folder holding the chat template it was trained for (export.templates decides:
plain ChatML for qwen3_nothink, the official Qwen3 template for qwen3), so ``apply_chat_template`` renders
prompts as in training. The Qwen3 think block: ``think_end_token="</think>"`` makes the harness score only
the text after the last ``</think>`` of a generation (harmless when there is none); ``--no-thinking``
also passes ``enable_thinking=False`` (Qwen3's non-thinking mode, an empty think block in the prompt).

Local tasks: ``--include-path DIR`` is a folder of lm-eval task YAMLs; the harness runs with DIR as its working
directory, so a task's ``data_files`` may be relative to its YAML. Hub tasks (gsm8k, ifeval, mmlu...) pass
straight through and download their datasets (``online``); model weights never download.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwenrecipes.data.tokenizer_files import qwen3_tokenizer_dir
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.evaluate.models import ModelSpec, ProgressCallback, run_eval_script
from qwenrecipes.export.merge import write_tokenizer_files

THINK_END = "</think>"


def tokenizer_dir(folder: Path, chat_template: str) -> Path:
    """The Qwen3 tokenizer files with the recipe's inference template and <|im_end|> as EOS, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(folder, qwen3_tokenizer_dir(), chat_template)
    return folder


def model_args(spec: ModelSpec, tokenizer: Path, *, thinking: bool | None) -> dict[str, Any]:
    args: dict[str, Any] = {"pretrained": spec.model, "dtype": spec.dtype, "tokenizer": str(tokenizer),
                            "think_end_token": THINK_END}
    if spec.adapter:
        args["peft"] = spec.adapter
    if thinking is False:
        args["enable_thinking"] = False
    return args


def parse_tasks(value: str) -> list[str]:
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    if not tasks:
        raise QwenRecipesError("--tasks needs at least one task name (e.g. --tasks gsm8k,ifeval)")
    return tasks


def run_benchmarks(specs: Sequence[ModelSpec], tasks: Sequence[str], *, chat_template: str,
                   include_path: Path | None = None, limit: float | None = None, num_fewshot: int | None = None,
                   thinking: bool | None = None, apply_chat_template: bool = True, batch_size: int = 1,
                   online: bool = False, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """lm-eval's results per model: {"lm_eval": version, "models": {name: {"results": {task: {metric: value}}}}}."""
    if include_path is not None and not Path(include_path).is_dir():
        raise QwenRecipesError(f"--include-path {include_path}: not a folder of lm-eval task YAMLs")
    with tempfile.TemporaryDirectory(prefix="qr-lmeval-") as tmp:
        tokenizer = tokenizer_dir(Path(tmp) / "tokenizer", chat_template)
        request = {"models": [{"name": s.name, "model_args": model_args(s, tokenizer, thinking=thinking)}
                              for s in specs],
                   "tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                   "apply_chat_template": apply_chat_template,
                   "include_path": str(Path(include_path).resolve()) if include_path else None}
        cwd = Path(include_path).resolve() if include_path else Path(tmp)
        data = run_eval_script("lm-eval", request, what="lm-eval", progress=progress, cwd=cwd, online=online)
    missing = [t for t in tasks if not any(t in entry.get("results", {}) or
                                           any(k.startswith(t) for k in entry.get("results", {}))
                                           for entry in data.get("models", {}).values())]
    if missing:
        raise QwenRecipesError(f"lm-eval produced no results for {', '.join(missing)}")
    return data
