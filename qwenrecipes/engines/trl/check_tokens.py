"""TRL: SFTTrainer's own dataset preparation + collator, set up exactly as the rendered train_trl.py does.

Run inside the TRL env with the render folder as cwd: ``python trl_tokens.py OUT_JSON``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any


def tokenize() -> list[dict[str, list[int]]]:
    import torch
    from trl import (
        DatasetMixtureConfig,
        ModelConfig,
        ScriptArguments,
        SFTConfig,
        SFTTrainer,
        TrlParser,
        get_dataset,
        get_peft_config,
        get_quantization_config,
    )

    # Only what cannot run on this host is overridden; none of it touches tokenization or masks. Packing off:
    # the mask is checked per row (packing concatenates the same rows). No eval: only the train rows matter.
    args = ["--config", "trl_config.yaml", "--eval_strategy", "no", "--packing", "false", "--padding_free", "false",
            "--output_dir", "check_output"]
    cuda = torch.cuda.is_available()
    if not cuda:
        args += ["--bf16", "false", "--fp16", "false", "--use_cpu", "true", "--load_in_4bit", "false",
                 "--load_in_8bit", "false"]
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(args=args)
    # The same model kwargs as the launcher (and trl/scripts/sft.py).
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    train_dataset = get_dataset(dataset_args)[script_args.dataset_train_split]
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        quantization_config=get_quantization_config(model_args) if cuda else None,
        peft_config=get_peft_config(model_args),
    )
    rows = []
    for example in trainer.train_dataset:
        # One example per batch: the collator's labels without any padding around them.
        batch = trainer.data_collator([example])
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
