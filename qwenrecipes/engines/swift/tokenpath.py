"""How ms-swift receives the training data with the token handoff (``data.handoff: tokens``, the default).

ms-swift 4.6 has no input_ids/labels column path (``--cached_dataset`` still runs ``template.encode``; unknown row
columns are dropped by ``RowPreprocessor``). What it does accept: an assistant content given as
``{"token_ids": [...], "loss_scale": [0|1, ...]}`` (swift/template/base.py ``_encode_context_list``), encoded by
a pass-through template with no prefix, no BOS and no suffix (``EmptyTemplateMeta(suffix=[],
auto_add_bos=False)``), so ``_add_dynamic_eos`` relabels nothing. Each row of ``data/train.tokens.jsonl`` is
then one empty user turn (no tokens) and one assistant turn holding the whole row's ids, with loss_scale 1 exactly
where qwenrecipes' labels train: swift's labels are those ids, -100 elsewhere. The registered template lives in
the same ``qwenrecipes_template.py`` as the text path's (textpath.py).

Packed (``data.packing``, issue 14): each line is one bin of qwenrecipes, one empty user turn and one assistant
content per member row (``packed_row``), read through a second pass-through template (``qwenrecipes_bins``,
``chat_sep=[]``: the rounds are concatenated with nothing between them). Its ``_encode`` adds ``position_ids``
restarting at 0 for each round, i.e. each member row, and its collator drops the all-ones ``attention_mask`` that
swift's ``Template._data_collator`` adds: each bin is a row of the micro-batch (padded on the right, labels -100)
with those ``position_ids`` and no attention mask, so sdpa and eager keep the rows apart. Not swift's
``padding_free`` collator (``packing_row``), which would flatten the micro-batch into one long row. swift's own
``--padding_free`` and ``--packing`` stay off: ``SftArguments._check_padding_free`` accepts either only with flash
attention, and ``--packing`` would re-bin the bins. Labels are the rows' as written (each row's first is -100 already).

One difference stays: ``Template._encode`` sets ``labels[0] = -100`` on every row, which matters only for
``train_on: all`` (residual ``first_token_masked``; a causal LM never predicts the first token, so the loss is
the same).
"""

from __future__ import annotations

from typing import Any

from qwenrecipes.engines.swift import textpath
from qwenrecipes.recipe.plan import EVAL_TOKENS_FILE, TRAIN_TOKENS_FILE, Plan

TEMPLATE_NAME = "qwenrecipes_tokens"
BINS_TEMPLATE_NAME = "qwenrecipes_bins"
IGNORE = -100
# Attention implementations measured to keep a bin's rows apart through this path (tests/test_engine_swift.py);
# flash attention is not measured here (no CPU kernel).
PACKED_ATTN = ("sdpa", "eager")
PACKED_ATTN_REFUSED = "is not verified to keep a bin's rows apart through the bins template's collator (measured " \
                      "on CPU: sdpa and eager; flash attention finds packed rows only in a flattened batch of one)"


def dataset_args(plan: Plan) -> dict[str, Any]:
    """textpath.dataset_args with the token files and the pass-through template."""
    args = textpath.dataset_args(plan)
    args.update({
        "dataset": [TRAIN_TOKENS_FILE],
        "val_dataset": [EVAL_TOKENS_FILE] if plan.eval_file is not None else None,
        "template": TEMPLATE_NAME,
        "loss_scale": "default",  # the per-token loss_scale of each row decides
    })
    if plan.packing is not None:  # qwenrecipes' bins: the bins template's rows, swift's packer stays off
        args.update({"template": BINS_TEMPLATE_NAME, "packing": False, "padding_free": False})
    return args


def token_row(input_ids: list[int], labels: list[int]) -> dict[str, Any]:
    """One row as swift reads pre-tokenized data."""
    scale = [0 if label == IGNORE else 1 for label in labels]
    return {"messages": [{"role": "user", "content": ""},
                         {"role": "assistant", "content": {"token_ids": input_ids, "loss_scale": scale}}]}


def packed_row(input_ids: list[int], labels: list[int], seq_lengths: list[int]) -> dict[str, Any]:
    """One bin: one empty user turn and one assistant content per member row, in order (the bins template
    restarts position ids at each)."""
    messages: list[dict[str, Any]] = []
    start = 0
    for length in seq_lengths:
        messages += token_row(input_ids[start:start + length], labels[start:start + length])["messages"]
        start += length
    return {"messages": messages}
