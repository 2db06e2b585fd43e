"""qwenrecipes' bins (data/packing.py) through Axolotl 0.19 with its own packer off.

Read in Axolotl 0.19.0 / transformers 5.16.1 and measured on the tiny Qwen3 (docs/equivalence.md, Packing):

- **Not its multipack sampler** (``sample_packing: true``): ``utils/trainer.py`` ``process_datasets_for_packing``
  overwrites every row's ``position_ids`` with ``range(len(row))`` (``add_position_ids``), so a bin's positions
  would no longer restart per row, and ``core/trainers/base.py`` then drops the attention mask: the rows of a bin
  would be one sequence to the model.
- **Its pre-tokenized path as is** needs an ``attention_mask`` column (``utils/data/wrappers.py``
  ``_is_dataset_already_tokenized``); ``utils/collators/batching.py`` ``DataCollatorForSeq2Seq`` then hands that
  2-D mask to the model, and transformers derives per-row attention from position ids only without one.
- **The path used**: ``skip_prepare_dataset: true``: ``get_dataset_wrapper`` returns the rows as they are (no
  tokenization, no length filter, no multipack map), so a row is one bin with ``input_ids``, ``labels`` and
  ``position_ids`` and no ``attention_mask``. ``DataCollatorForSeq2Seq`` pads labels (-100) and position ids,
  and deletes the mask ``tokenizer.pad`` makes when the rows had none (``has_attn_mask``); ``sample_packing:
  false`` with ``curriculum_sampling: true`` is a ``SequentialSampler`` over the rows, ``micro_batch_size`` bins a
  batch, so the bins are trained in qwenrecipes' order and ``max_steps`` counts them.
"""

from __future__ import annotations

from types import MappingProxyType

from qwenrecipes.recipe.plan import Plan

BINS_SETTINGS = MappingProxyType({
    "skip_prepare_dataset": True,  # rows as given: no attention_mask needed, no add_position_ids
    "remove_unused_columns": False,  # what Axolotl sets for skip_prepare_dataset anyway; the columns all reach it
})

# Keep a bin's rows apart on this path (no 2-D mask, position ids restarting per row), measured with the tiny
# Qwen3 through Axolotl's own dataloader: each row's loss in a bin equals the row run alone.
PACKED_ATTENTION = frozenset({"sdpa", "eager"})


def packed_attention_problems(plan: Plan) -> list[tuple[str, str]]:
    """(recipe field, reason) for an attention implementation that would let a bin's rows attend to each other."""
    if plan.packing is None:
        return []
    attn = plan.recipe.model["attn"]
    if attn in PACKED_ATTENTION:
        return []
    if attn == "flash_attention_2" and plan.recipe.training["micro_batch_size"] == 1:
        # One bin per batch, no mask: transformers' _is_packed_sequence hands flash_attn_varlen_func one sequence
        # per row (the same code as TRL's padding-free path).
        return []
    return [("model.attn", f"{attn} with micro_batch_size > 1 would let a bin's rows attend to each other on "
             "Axolotl: transformers 5.16.1 runs flash attention per row only for a batch of one row "
             "(_is_packed_sequence), and Axolotl's collator pads the bins side by side; use sdpa or eager, or "
             "micro_batch_size: 1 (docs/equivalence.md, Packing)")]
