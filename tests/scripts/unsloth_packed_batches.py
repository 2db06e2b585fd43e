"""Run inside the unsloth env (its CPU backend), in a rendered packed folder: what Unsloth's own trainer hands the
model, and the per-token losses of the first batch.

    python -P unsloth_packed_batches.py ROWS.json OUT.json

ROWS.json: {"rows": [{"input_ids", "labels"}, ...]}: the first micro-batch's bins' member rows, in order. For each
attention implementation the folder's train_unsloth.py builds its trainer (FastLanguageModel, the dataset, SFTConfig,
Unsloth's SFTTrainer with the rendered data_collator) up to trainer.train(), which is intercepted; the model is loaded
with that attn_implementation (Unsloth's CPU loader passes it to transformers). Every batch of
trainer.get_train_dataloader() is recorded. The first batch goes through trainer.model (LoRA B = 0: the base model)
(its input_ids and position_ids, use_cache=False: packed_losses.first_batch_losses); the rows are run alone through
the same model; a control adds an all-ones attention mask (rows attend across). "step_loss" is the trainer's own
compute_loss on the first batch in training mode (the CPU backend's chunked cross-entropy), for the token-weighted
mean.
"""

import contextlib
import json
import os
import runpy
import sys

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
import unsloth  # noqa: I001 - first, as the script imports it
import transformers
from packed_losses import first_batch_losses  # tests/scripts, beside this file

SCRIPT = "train_unsloth.py"


class _Built(Exception):
    pass


def build(impl: str):
    built = {}

    def intercept(self, *args, **kwargs):
        built["trainer"] = self
        raise _Built

    transformers.Trainer.train = intercept
    load = unsloth.FastLanguageModel.from_pretrained
    unsloth.FastLanguageModel.from_pretrained = lambda *a, **k: load(*a, attn_implementation=impl, **k)
    try:
        sys.argv = [SCRIPT]
        main = runpy.run_path(SCRIPT, run_name="qwenrecipes_check")["main"]
        with contextlib.suppress(_Built):
            main()
    finally:
        unsloth.FastLanguageModel.from_pretrained = load
    return built["trainer"]


def main() -> None:
    rows_path, out_path = sys.argv[1:3]
    with open(rows_path) as handle:
        rows = json.load(handle)["rows"]
    out = {}
    for impl in ("sdpa", "eager"):
        trainer = build(impl)
        batches = list(trainer.get_train_dataloader())
        model = trainer.model
        first = batches[0]
        model.train()
        step_loss = float(trainer.compute_loss(model, dict(first)).detach())
        losses = first_batch_losses(model.eval(), first, rows)
        out[impl] = {
            "keys": sorted(first), "attn": model.config._attn_implementation, "max_steps": trainer.args.max_steps,
            "padding_free_arg": trainer.args.padding_free, "collator": type(trainer.data_collator).__name__,
            "batches": [{k: v.tolist() for k, v in b.items()} for b in batches],
            **losses, "step_loss": step_loss,
        }
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
