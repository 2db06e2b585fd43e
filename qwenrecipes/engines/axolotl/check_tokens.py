"""Axolotl: its dataset preparation (load_cfg -> load_datasets -> prepare_datasets with the chat_template
strategy), the path `axolotl preprocess` and `axolotl train` take, on a copy of the rendered config.

Run inside the Axolotl env with the render folder as cwd: ``python axolotl_tokens.py OUT_JSON``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

CHECK_CONFIG = "axolotl_check.yaml"


def tokenize() -> list[dict[str, list[int]]]:
    import torch
    import yaml

    with open("axolotl.yaml", encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    # Only what cannot run on this host is overridden; none of it touches tokenization or masks. A fresh
    # prepared path so nothing cached is reused; packing off: the mask is checked per row; no eval set.
    raw.update({"dataset_prepared_path": "axolotl_check_prepared", "output_dir": "check_output",
                "sample_packing": False, "eval_sample_packing": False, "pad_to_sequence_len": False,
                "test_datasets": None, "eval_strategy": "no"})
    raw.pop("eval_steps", None)  # Axolotl refuses eval_steps without eval_strategy: steps
    if not torch.cuda.is_available():
        raw.update({"bf16": False, "fp16": False, "bfloat16": False, "float16": False, "load_in_4bit": False,
                    "load_in_8bit": False, "bnb_config_kwargs": None, "deepspeed": None, "fsdp_config": None})
        if raw.get("adapter") == "qlora":
            raw["adapter"] = "lora"  # qlora requires load_in_4bit; the adapter kind plays no part in the data
    with open(CHECK_CONFIG, "w", encoding="utf-8") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False, allow_unicode=True)

    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    cfg = load_cfg(CHECK_CONFIG)
    meta = load_datasets(cfg=cfg)
    return [{"input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for row in meta.train_dataset]


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
