"""Unsloth: the rendered train_unsloth.py itself builds its trainer (FastLanguageModel, the dataset, SFTConfig,
Unsloth's SFTTrainer, train_on_responses_only with the text handoff); ``Trainer.train`` is intercepted, and each
row of the trainer's prepared dataset goes through the trainer's own data collator, as training would batch it.

Unsloth 2026.10.9 imports on a host without a GPU (its CPU backend: stock TRL SFTTrainer under Unsloth's
patches); on a GPU host the same script takes its CUDA path (unsloth_zoo's sft_prepare_dataset).

Run inside the Unsloth env with the render folder as cwd: ``python -P check_tokens.py OUT_JSON``.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import sys
import traceback
from typing import Any

SCRIPT = "train_unsloth.py"


class _Built(Exception):
    """Raised from the intercepted train(): the trainer is built, nothing is trained."""


def tokenize() -> list[dict[str, list[int]]]:
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401, I001 - first, as the script imports it, so its patches apply
    import transformers

    built: dict[str, Any] = {}

    def intercept(self: Any, *args: Any, **kwargs: Any) -> None:
        built["trainer"] = self
        raise _Built

    transformers.Trainer.train = intercept  # every trainer class Unsloth builds inherits it
    sys.argv = [SCRIPT]
    # Loaded without running main(), which is then called with the script's planned process count set to this
    # one process: the check reads the data path only, and a multi-process plan's guard (planned for N processes,
    # launched with 1) concerns the effective batch, not tokens. The rendered script, and its guard, are unchanged.
    script = runpy.run_path(SCRIPT, run_name="qwenrecipes_check")
    main = script["main"]
    main.__globals__["WORLD_SIZE"] = int(os.environ.get("WORLD_SIZE", "1"))
    with contextlib.suppress(_Built):
        main()
    trainer = built.get("trainer")
    if trainer is None:
        raise RuntimeError(f"{SCRIPT} finished without calling trainer.train()")
    rows = []
    for example in trainer.train_dataset:
        # One example per batch: the collator's labels without any padding around them.
        batch = trainer.data_collator([example])
        rows.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
    return rows


def main() -> None:
    out_file = sys.argv[1]  # read first: tokenize() replaces sys.argv for the script
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
