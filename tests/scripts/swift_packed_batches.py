"""Run inside the swift env, in a rendered packed folder: what ms-swift's own trainer hands the model, and the
per-token losses of the first batch.

    python -P swift_packed_batches.py ROWS.json OUT.json

ROWS.json: {"rows": [{"input_ids", "labels"}, ...]}: the first micro-batch's bins' member rows, in order. For each
attention implementation the folder's train_swift.py runs swift_sft.yaml (with ``--attn_impl IMPL``) up to
trainer.train(), which is intercepted: the registered template, swift's dataset encoding and its collator as a real
run builds them. Every batch of trainer.get_train_dataloader() is recorded. The first batch goes through
trainer.model (LoRA B = 0: the base model) with use_cache=False; the rows are run alone through the same model; a
control adds an all-ones attention mask (rows attend across). "step_loss" is the trainer's own compute_loss on the
first batch in training mode.
"""

import contextlib
import json
import runpy
import sys

import torch
import transformers
from packed_losses import first_batch_losses  # tests/scripts, beside this file

SCRIPT = "train_swift.py"


class _Built(Exception):
    pass


def build(impl: str):
    built = {}

    def intercept(self, *args, **kwargs):
        built["trainer"] = self
        raise _Built

    transformers.Trainer.train = intercept
    sys.argv = [SCRIPT, "swift_sft.yaml", "--attn_impl", impl]
    with contextlib.suppress(_Built):
        runpy.run_path(SCRIPT, run_name="__main__")
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
        first = {k: v for k, v in batches[0].items() if isinstance(v, torch.Tensor)}
        model.train()
        step_loss = float(trainer.compute_loss(model, dict(first)).detach())
        losses = first_batch_losses(model.eval(), first, rows)
        out[impl] = {
            "keys": sorted(batches[0]), "attn": model.config._attn_implementation, "max_steps": trainer.args.max_steps,
            "template_padding_free": trainer.template.padding_free,
            "micro_batch_size": trainer.args.per_device_train_batch_size,
            "batches": [{k: v.tolist() for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches],
            **losses, "step_loss": step_loss,
        }
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
