"""ms-swift: its own dataset loading, template encode and collator (the rendered qwenrecipes_template.py registered
through custom_register_path), through the same calls as its SwiftSft pipeline: SftArguments from swift_sft.yaml
-> args.get_template(processor) -> args.load_dataset() -> template.encode per row -> template.data_collator.

Run inside the swift env with the render folder as cwd: ``python -P check_tokens.py OUT_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from typing import Any


def _arguments() -> Any:
    import torch
    import yaml
    from swift.arguments import SftArguments
    from swift.cli.main import parse_yaml_args
    from swift.utils import parse_args

    with open("swift_sft.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    # Only what cannot run on this host or is beside the point is changed; none of it touches tokens or masks.
    # Packing off: the mask is checked per row. No eval file: only the train rows matter.
    config.update({"output_dir": tempfile.mkdtemp(prefix="qwenrecipes-check-"), "packing": False,
                   "padding_free": False})
    config.pop("val_dataset", None)
    if not torch.cuda.is_available():
        config.update({"bf16": False, "fp16": False})
        for key in ("quant_method", "quant_bits", "deepspeed", "fsdp"):
            config.pop(key, None)
    path = os.path.join(config["output_dir"], "swift_sft.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    argv = [path]
    parse_yaml_args(argv)
    args, rest = parse_args(SftArguments, argv)
    if rest:
        raise ValueError(f"swift does not know these arguments: {rest}")
    return args


def tokenize() -> list[dict[str, list[int]]]:
    args = _arguments()  # parsing registers the template (custom_register_path)
    _, processor = args.get_model_processor(load_model=False)  # tokenizer only, no weights
    template = args.get_template(processor)  # as SwiftSft._prepare_template
    template.set_mode("train")
    train, _ = args.load_dataset()  # as SwiftSft._get_dataset: the rendered dataset args, swift's row preprocessing
    rows = []
    for row in train:
        # template.encode is what training calls per row (LazyLLMDataset); one example per batch through the
        # collator gives its labels without padding around them.
        batch = template.data_collator([template.encode(row)])
        rows.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
    return rows


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
