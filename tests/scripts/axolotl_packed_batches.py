"""Run inside the axolotl env, in a rendered packed folder: what Axolotl's own trainer hands the model.

    python axolotl_packed_batches.py ROWS.json OUT.json

ROWS.json: {"rows": [{"input_ids", "labels"}, ...]}: the first micro-batch's bins' member rows, in order. For each
attention implementation the folder's axolotl.yaml is loaded by Axolotl's config loader (attn_implementation
overridden), its datasets prepared and its trainer built (`axolotl train` up to trainer.train()), and every batch of
trainer.get_train_dataloader() recorded. The first batch goes through trainer.model (LoRA B = 0: the base model) (its
input_ids and position_ids, use_cache=False: packed_losses.first_batch_losses); the rows are run alone through the
same model; a control adds an all-ones attention mask.
"""

import json
import sys

from axolotl.cli.config import load_cfg
from axolotl.common.datasets import load_datasets
from axolotl.train import setup_model_and_trainer
from packed_losses import first_batch_losses  # tests/scripts, beside this file


def main() -> None:
    rows_path, out_path = sys.argv[1:3]
    with open(rows_path) as handle:
        rows = json.load(handle)["rows"]
    out = {}
    for impl in ("sdpa", "eager"):
        cfg = load_cfg("axolotl.yaml", attn_implementation=impl)
        meta = load_datasets(cfg=cfg)
        trainer, *_ = setup_model_and_trainer(cfg, meta)
        batches = list(trainer.get_train_dataloader())
        model = trainer.model.eval()
        losses = first_batch_losses(model, batches[0], rows)
        out[impl] = {
            "keys": sorted(batches[0]), "use_cache": model.config.use_cache, "max_steps": trainer.args.max_steps,
            "batches": [{k: v.tolist() for k, v in b.items()} for b in batches],
            **losses,
        }
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
