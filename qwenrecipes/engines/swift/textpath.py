"""How ms-swift receives the training data with the text handoff (``data.handoff: text``): ChatML message rows
(``data/train.jsonl``) encoded by a swift template that qwenrecipes registers itself (``qwenrecipes_template.py``,
passed with ``--custom_register_path``). The token handoff (the default) is tokenpath.py: the same dataset
arguments with token files and a pass-through template; the two share nothing else.

Why a template of our own: swift's ``qwen3_nothinking`` (plain ChatML, no default system) trains the ``\\n`` after
every assistant ``<|im_end|>`` (its suffix is ``<|im_end|>\\n`` and ``Template._add_dynamic_eos`` relabels it after
each trained turn). qwenrecipes' rule (docs/equivalence.md) trains content + ``<|im_end|>`` only. The registered
template has suffix ``<|im_end|>`` (so only that token is relabelled between turns) and puts the final ``\\n`` back
as an untrained token, so input ids and labels equal the reference exactly: no residual.
"""

from __future__ import annotations

from typing import Any

from qwenrecipes.recipe.plan import Plan

TEMPLATE_NAME = "qwenrecipes_chatml"
REGISTER_FILE = "qwenrecipes_template.py"
REGISTER_TEMPLATE = "swift/qwenrecipes_template.py.j2"
LOSS_SCALE = {"assistant": "default", "all": "all"}  # recipe data.train_on -> swift --loss_scale


def dataset_args(plan: Plan) -> dict[str, Any]:
    """The data half of the swift config: files, template, mask, order. None values are left out by the caller."""
    data = plan.recipe.data
    return {
        "dataset": [plan.train_file],
        "val_dataset": [plan.eval_file] if plan.eval_file is not None else None,
        "split_dataset_ratio": 0.0,  # qwenrecipes already split
        "custom_register_path": [REGISTER_FILE],
        "template": TEMPLATE_NAME,
        "loss_scale": LOSS_SCALE[data["train_on"]],
        "max_length": data["max_seq_length"],
        # Rows over max_length were dropped by qwenrecipes; `delete` + strict makes one that slips through fail the
        # run instead of vanishing (strict: any row swift cannot encode is an error, never a silent drop).
        "truncation_strategy": "delete",
        "strict": True,
        "packing": data["packing"],
        "padding_free": data["packing"],
        # qwenrecipes shuffled once with the seed: read the rows in that order (both of swift's shuffles off).
        "dataset_shuffle": False,
        "val_dataset_shuffle": False,
        "train_dataloader_shuffle": False,
        "lazy_tokenize": False,
        "dataset_num_proc": 1,
        "load_from_cache_file": False,  # never reuse another run's tokenized cache
    }
