"""Run inside the trl env: per-token losses of packed bins vs the same rows run one by one.

    python packed_losses.py CASES.json MODEL_DIR OUT.json

CASES.json: {"bins": [{"input_ids", "labels", "seq_lengths"}, ...] (one micro-batch, as TRL is handed them),
"rows": [{"input_ids", "labels"}, ...] (the bins' member rows, in order)}. The packed batch is built by TRL's own
DataCollatorForLanguageModeling(padding_free=True), the collator SFTTrainer uses for qwenrecipes' bins, and run
through transformers' Qwen3 with each attention implementation. A control run adds an all-ones attention mask (what
a collator that keeps attention_mask hands the model): transformers then no longer sees the rows as packed.
Per-token loss at position t (t >= 1) is the cross-entropy of predicting token t; null where the label is -100.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def token_losses(logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> list:
    """[None] + CE(logits[t-1], ids[t]) for t >= 1, None where labels[t] == -100."""
    ce = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
    return [None] + [None if int(label) == -100 else float(value) for value, label in zip(ce, labels[1:], strict=True)]


def first_batch_losses(model, batch: dict, rows: list) -> dict:
    """The batches scripts' proof material for a trainer's first batch: per-token losses of each row of the batch
    ("packed", one list per batch row: a flattened batch has one), of the same batch under an all-ones attention mask
    ("control": rows attending across), and of each member row run alone ("separate"). Only input_ids and
    position_ids reach the model (TRL's chunked loss returns no logits when labels are passed); use_cache=False as in
    training."""
    inputs = {key: batch[key] for key in ("input_ids", "position_ids")}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
        control = model(**inputs, attention_mask=torch.ones_like(batch["input_ids"]), use_cache=False).logits
        separate = []
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            separate.append(token_losses(model(input_ids=ids, use_cache=False).logits[0], ids[0],
                                         torch.tensor(row["labels"])))

    def per_row(out: torch.Tensor) -> list:
        return [token_losses(out[r], batch["input_ids"][r], batch["labels"][r]) for r in range(len(out))]

    return {"packed": per_row(logits), "control": per_row(control), "separate": separate}


def main() -> None:
    cases_path, model_dir, out_path = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([dict(b) for b in cases["bins"]])
    out = {"collator_keys": sorted(batch), "impls": {}}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=impl).eval()
        with torch.no_grad():
            separate = []
            for row in cases["rows"]:
                ids = torch.tensor([row["input_ids"]])
                logits = model(input_ids=ids, use_cache=False).logits[0]
                separate.append(token_losses(logits, ids[0], torch.tensor(row["labels"])))
            # use_cache=False as in training (Trainer and SFTTrainer set it): transformers detects packed rows
            # from position ids only without a 2-D attention mask and without a cache object.
            packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                  use_cache=False).logits[0]
            packed = token_losses(packed_logits, batch["input_ids"][0], batch["labels"][0])
            control_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                   attention_mask=torch.ones_like(batch["input_ids"]), use_cache=False).logits[0]
            control = token_losses(control_logits, batch["input_ids"][0], batch["labels"][0])
        out["impls"][impl] = {"separate": separate, "packed": packed, "control": control,
                              "collator_labels": batch["labels"][0].tolist()}
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
