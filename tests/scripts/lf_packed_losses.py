"""Run inside the llamafactory env: per-token losses of qwenrecipes' bins through LLaMA-Factory's own SFT collator
vs the same rows run one by one.

    python lf_packed_losses.py CASES.json MODEL_DIR OUT.json

CASES.json: {"bins": [{"input_ids", "attention_mask", "labels"}, ...] (one micro-batch, each bin as the engine's
packed_row writes it: attention_mask holds each token's 1-based row index in the bin), "rows": [{"input_ids",
"labels"}, ...] (the bins' member rows, in order)}. The batch is built by SFTDataCollatorWith4DAttentionMask with the
arguments run_sft gives it (train/sft/workflow.py: pad_to_multiple_of 8, block_diag_attn and neat_packing from
neat_packing, the model's attention implementation) and fed to the model as the Trainer does (model(**batch)). A
control run has block_diag_attn off: the row indices then reach the model as a 2-D mask, which lets the rows of a bin
attend to each other. Per-token loss at position t (t >= 1) is the cross-entropy of predicting token t; null where
the label is -100.
"""

import json
import sys

import torch
from llamafactory.data import SFTDataCollatorWith4DAttentionMask, get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments, ModelArguments
from llamafactory.model import load_tokenizer
from transformers import AutoModelForCausalLM


def token_losses(logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> list:
    """[None] + CE(logits[t-1], ids[t]) for t >= 1, None where labels[t] == -100."""
    ce = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
    return [None] + [None if int(label) == -100 else float(value) for value, label in zip(ce, labels[1:], strict=True)]


def main() -> None:
    cases_path, model_dir, out_path = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)
    tokenizer_module = load_tokenizer(ModelArguments(model_name_or_path=model_dir))
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], DataArguments(template="qwen3_nothink"))
    out: dict = {"impls": {}}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=impl).eval()
        result: dict = {}
        with torch.no_grad():
            separate = []
            for row in cases["rows"]:
                ids = torch.tensor([row["input_ids"]])
                logits = model(input_ids=ids, use_cache=False).logits[0]
                separate.append(token_losses(logits, ids[0], torch.tensor(row["labels"])))
            result["separate"] = separate
            for name, block_diag in (("packed", True), ("control", False)):
                collator = SFTDataCollatorWith4DAttentionMask(
                    template=template, model=model, pad_to_multiple_of=8, label_pad_token_id=-100,
                    block_diag_attn=block_diag, neat_packing=block_diag, attn_implementation=impl,
                    compute_dtype=torch.float32, **tokenizer_module)
                batch = collator([{k: list(v) for k, v in b.items()} for b in cases["bins"]])
                if name == "packed":
                    result["collator_keys"] = sorted(batch)
                    result["mask_shape"] = list(batch["attention_mask"].shape)
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
                losses = []
                for b, given in enumerate(cases["bins"]):  # each bin's own tokens, padding left out
                    n = len(given["input_ids"])
                    assert batch["labels"][b, :n].tolist() == given["labels"], "the collator changed the labels"
                    losses.extend(token_losses(logits[b, :n], batch["input_ids"][b, :n], batch["labels"][b, :n]))
                result[name] = losses
        out["impls"][impl] = result
    with open(out_path, "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main()
