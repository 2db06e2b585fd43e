"""Token differences ms-swift makes impossible to remove (`qwenrecipes check` reports them as residuals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qwenrecipes.engines.base import Residual

IGNORE = -100


def _first_token_masked(messages: Sequence[Mapping[str, str]], reference: Any, labels: list[int]) -> list[int]:
    """swift's Template._encode sets labels[0] = -100 on every row."""
    return [IGNORE, *labels[1:]] if labels else labels


RESIDUALS: tuple[Residual, ...] = (
    Residual("swift", "first_token_masked",
             "swift masks the first token of every row (Template._encode sets labels[0] = -100); a causal LM never "
             "predicts the first token, so the loss is the same", "all", _first_token_masked, ("text", "tokens")),
)
