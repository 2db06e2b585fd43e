"""Run inside the trl env, in a rendered packed folder: what the rendered launcher's trainer hands the model.

    python trl_packed_batches.py ROWS.json OUT.json

ROWS.json: {"rows": [{"input_ids", "labels"}, ...]}: the first micro-batch's bins' member rows, in order. For each
attention implementation the folder's trl_config.yaml (attn_implementation overridden, in a copy) goes through the
launcher's own build_trainer (train_trl.py up to trainer.train()), and every batch of trainer.get_train_dataloader()
is recorded. The first batch goes through trainer.model (LoRA B = 0: the base model) (its input_ids and position_ids,
use_cache=False: packed_losses.first_batch_losses); the rows are run alone through the same model; a control adds an
all-ones attention mask.
"""

import json
import os
import sys
from types import SimpleNamespace

import yaml
from packed_losses import first_batch_losses  # tests/scripts, beside this file

sys.path.insert(0, os.getcwd())  # the rendered folder: its train_trl.py
import train_trl


def main() -> None:
    rows_path, out_path = sys.argv[1:3]
    with open(rows_path) as handle:
        rows = json.load(handle)["rows"]
    with open("trl_config.yaml") as handle:
        config = yaml.safe_load(handle)
    out = {}
    for impl in ("sdpa", "eager", "flash_attention_2"):
        if impl == "flash_attention_2":  # no kernel on CPU: only the launcher's choice (flattened, varlen)
            columns = SimpleNamespace(column_names=["input_ids", "labels", "seq_lengths"])
            settings = SimpleNamespace(padding_free=config["padding_free"], packing=config["packing"])
            out[impl] = {"side_by_side": train_trl.bins_side_by_side(settings, impl, columns)}
            continue
        with open(f"trl_config.{impl}.yaml", "w") as handle:
            yaml.safe_dump({**config, "attn_implementation": impl}, handle)
        trainer = train_trl.build_trainer(f"trl_config.{impl}.yaml")
        batches = list(trainer.get_train_dataloader())
        first = batches[0]
        losses = first_batch_losses(trainer.model.eval(), first, rows)
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(first))  # the tokens TRL counts for this batch
        out[impl] = {
            "side_by_side": isinstance(trainer.data_collator, train_trl.BinsSideBySide),
            "keys": sorted(first), "max_steps": trainer.args.max_steps,
            "num_tokens": trainer._metrics["train"]["num_tokens"],
            "batches": [{k: v.tolist() for k, v in b.items()} for b in batches], **losses,
        }
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
