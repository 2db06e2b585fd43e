"""Tokens and labels of prepared rows: the one tokenization and mask every engine trains (token handoff).

``data.handoff: tokens`` (the default) hands each engine ``input_ids`` and ``labels`` made here, through its own
pre-tokenized data path, so no engine templates, tokenizes or masks anything itself. ``check``'s reference calls
the same function, so what it proves is what the engines were handed.

The rule: the row's training text and trained characters come from ``render_text.training_text``; the text is
encoded with the model's tokenizer (``tokenizers``, no special tokens added: Qwen3 adds no BOS), and a token is
trained when its character range overlaps a trained span (the rule of transformers' ``{% generation %}``
masks). Labels are unshifted (a trained position carries its own id; the model shifts); -100 is masked.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenrecipes.data.render_text import training_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

IGNORE = -100
BATCH = 512  # rows per encode_batch call: the Rust tokenizer runs a batch on every core


@dataclass(frozen=True)
class TokenRow:
    """One row as an engine trains it."""

    input_ids: list[int]
    labels: list[int]


def tokenizer_for(model_path: str | None = None) -> Tokenizer:
    """The tokenizer the row is encoded with: a local model folder's own ``tokenizer.json`` (its tokenizer is
    what the engines load with it), else the bundled Qwen3 tokenizer (one tokenizer for every Qwen3 size, the one
    a hub id loads)."""
    if model_path:
        own = Path(os.path.expanduser(model_path)) / "tokenizer.json"
        if own.is_file():
            return _load(str(own.resolve()))
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


def _load(path: str) -> Tokenizer:
    from tokenizers import Tokenizer

    cached = _CACHE.get(path)
    if cached is None:
        cached = _CACHE[path] = Tokenizer.from_file(path)
    return cached


_CACHE: dict[str, Any] = {}


def _labels(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """A token is trained when [start, end) overlaps a trained span (spans are sorted and disjoint)."""
    ends = [end for _, end in spans]
    labels = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        # The first span ending after the token's start is the only one it can overlap first.
        index = bisect.bisect_right(ends, start)
        trained = index < len(spans) and spans[index][0] < end and start < spans[index][1]
        labels.append(token if trained else IGNORE)
    return labels


def tokenize_rows(rows: Iterable[Sequence[Mapping[str, Any]]], train_on: str,
                  tokenizer: Tokenizer | None = None) -> list[TokenRow]:
    """Every prepared row's input ids and labels, in order (module doc)."""
    tokenizer = tokenizer or tokenizer_for()
    out: list[TokenRow] = []
    batch: list[Any] = []

    def flush() -> None:
        encodings = tokenizer.encode_batch([t.text for t in batch], add_special_tokens=False)
        for rendered, encoding in zip(batch, encodings, strict=True):
            ids = list(encoding.ids)
            labels = list(ids) if train_on == "all" else _labels(ids, encoding.offsets, rendered.trained_spans)
            out.append(TokenRow(ids, labels))
        batch.clear()

    for row in rows:
        batch.append(training_text(row, train_on))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return out


def tokenize_row(row: Sequence[Mapping[str, Any]], train_on: str, tokenizer: Tokenizer | None = None) -> TokenRow:
    """One prepared row's input ids and labels."""
    return tokenize_rows([row], train_on, tokenizer)[0]
