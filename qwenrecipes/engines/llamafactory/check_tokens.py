"""LLaMA-Factory: its template + supervised dataset processor, through the same calls as its run_sft
(get_train_args -> load_tokenizer -> get_template_and_fix_tokenizer -> get_dataset(stage="sft")).

Run inside the LLaMA-Factory env with the render folder as cwd: ``python llamafactory_tokens.py OUT_JSON``.
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback
from typing import Any


def tokenize() -> list[dict[str, list[int]]]:
    import torch
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with open("llamafactory.yaml", encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    # Only what cannot run on this host is overridden (LF refuses bf16 on a CPU host while parsing); none of it
    # touches tokenization or masks. Packing off: the mask is checked per row. No eval: only train rows matter.
    raw.update({"output_dir": "check_output", "overwrite_output_dir": True, "eval_dataset": None,
                "eval_strategy": "no", "packing": False, "neat_packing": False, "report_to": "none"})
    if not torch.cuda.is_available():
        raw.update({"bf16": False, "fp16": False, "pure_bf16": False, "quantization_bit": None, "deepspeed": None})
    if raw.get("tokenized_path"):
        # Token handoff: the rendered load_tokens.py saves the rows where get_dataset loads them, as COMMAND runs it.
        sys.argv = ["load_tokens.py"]
        runpy.run_path("load_tokens.py", run_name="__main__")
    model_args, data_args, training_args, _finetuning, _generating = get_train_args(raw)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    return [{"input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for row in module["train_dataset"]]


def main() -> None:
    out_file = sys.argv[1]  # read first: tokenize() hands sys.argv to load_tokens.py
    out: dict[str, Any]
    try:
        out = {"ok": True, "rows": tokenize()}
    except BaseException as exc:  # the caller needs a verdict whatever went wrong, SystemExit included
        out = {"ok": False, "skip": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-4000:]}
    with open(out_file, "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
