"""Unsloth: the loss mask from unsloth_zoo's own ``train_on_responses_only``, with the parts, template and eos
the rendered train_unsloth.py passes (read with ``ast``, never executed).

The ``unsloth`` package refuses to import without a GPU, so its patched SFTTrainer cannot tokenize here: the
input ids come from the same tokenizer + chat template through ``apply_chat_template`` (what TRL's
conversational tokenization calls). ``unsloth_zoo.dataset_utils`` itself imports on CPU once
``UNSLOTH_IS_PRESENT`` is set (the flag the unsloth package sets before importing it).

Run inside the Unsloth env with the render folder as cwd: ``python unsloth_tokens.py OUT_JSON``.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import traceback
from typing import Any

SCRIPT = "train_unsloth.py"


def _literal_kwargs(call: ast.Call) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            continue
        try:
            out[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            out[keyword.arg] = None  # not a literal (e.g. getattr(torch, ...)): not needed here
    return out


def read_script() -> dict[str, Any]:
    with open(SCRIPT, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found: dict[str, Any] = {"responses_only": None}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            if target in ("CHAT_TEMPLATE", "tokenizer.eos_token", "tokenizer.pad_token"):
                found[target] = ast.literal_eval(node.value)
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name == "FastLanguageModel.from_pretrained":
                found["model_name"] = _literal_kwargs(node)["model_name"]
            elif name == "train_on_responses_only":
                found["responses_only"] = _literal_kwargs(node)
    return found


def tokenize() -> list[dict[str, list[int]]]:
    script = read_script()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(script["model_name"])
    tokenizer.chat_template = script["CHAT_TEMPLATE"]
    tokenizer.eos_token = script["tokenizer.eos_token"]
    tokenizer.pad_token = script["tokenizer.pad_token"]
    with open("data/train.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    ids = [list(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
           for row in rows]
    options = script["responses_only"]
    if options is None:  # train_on: all: the script does not mask, TRL's labels are the input ids
        return [{"input_ids": row, "labels": list(row)} for row in ids]
    os.environ.setdefault("UNSLOTH_IS_PRESENT", "1")
    from unsloth_zoo.dataset_utils import train_on_responses_only

    mask = train_on_responses_only(None, instruction_part=options.get("instruction_part"),
                                   response_part=options.get("response_part"), tokenizer=tokenizer,
                                   return_function=True)
    labels = mask({"input_ids": ids})["labels"]
    return [{"input_ids": row, "labels": list(label)} for row, label in zip(ids, labels, strict=True)]


def main() -> None:
    out: dict[str, Any]
    try:
        out = {"ok": True, "rows": tokenize()}
    except BaseException as exc:  # the caller needs a verdict whatever went wrong, SystemExit included
        out = {"ok": False, "skip": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-4000:]}
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
