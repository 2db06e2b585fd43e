"""What every engine's packed-bins tests share (tests/test_engine_*.py): the packed recipe, the rows of some bins,
and the two proofs: the batches an engine's trainer hands its model are qwenrecipes' bins in order, and each token's
loss in a bin equals its loss with its row run alone (an all-ones-mask control must differ)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.recipe.plan import Plan
from tests.test_packing import _packed_recipe


def packed_run_recipe(tmp_path: Path, **training: object) -> Path:
    """tests/test_packing.py's packed recipe (chat.jsonl, 256-token bins, train_on all, sdpa, micro-batch 4)."""
    recipe = _packed_recipe(tmp_path, max_seq_length=256, train_on="all")
    document = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    document["training"].update(training)
    recipe.write_text(yaml.safe_dump(document), encoding="utf-8")
    return recipe


def member_rows(plan: Plan, bins: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """The rows of ``bins``, one by one, as the losses scripts run them alone."""
    tokens = plan.packing.tokens if plan.packing else ()
    return [{"input_ids": tokens[i].input_ids, "labels": tokens[i].labels} for b in bins for i in b]


def assert_flattened_batches(impl: str, batches: list[dict[str, Any]], stream: list[PackedRow], micro: int) -> None:
    """Every batch is the next ``micro`` bins of the stream flattened into one row (padding-free collators)."""
    for b, batch in enumerate(batches):
        want = stream[b * micro:(b + 1) * micro]
        assert batch["input_ids"] == [[t for r in want for t in r.input_ids]], (impl, b)
        assert batch["labels"] == [[t for r in want for t in r.labels]], (impl, b)
        assert batch["position_ids"] == [[t for r in want for t in r.position_ids]], (impl, b)


def assert_rows_kept_apart(impl: str, separate: list[float | None], packed: list[float | None],
                           control: list[float | None]) -> list[float]:
    """Per-token losses in the bins equal those of the rows run alone; the control (rows attending across) does
    not. Returns the trained tokens' losses (their mean is the step's loss)."""
    assert len(separate) == len(packed) == len(control)
    values: list[float] = []
    control_gap = 0.0
    for alone, in_bin, across in zip(separate, packed, control, strict=True):
        assert (alone is None) == (in_bin is None), impl
        if alone is not None:
            assert in_bin == pytest.approx(alone, rel=1e-4, abs=1e-4), impl
            assert across is not None
            control_gap = max(control_gap, abs(across - alone))
            values.append(alone)
    assert len(values) > 500 and control_gap > 1e-2, (impl, len(values), control_gap)
    return values
