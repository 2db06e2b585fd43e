"""Token differences LLaMA-Factory makes impossible to remove (`qwenrecipes check` reports them as residuals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qwenrecipes.engines.base import Residual

IM_END = "<|im_end|>"


def _trailing_newline(messages: Sequence[Mapping[str, str]], reference: Any, labels: list[int]) -> list[int]:
    """LF's assistant slot is `{{content}}<|im_end|>\\n`: the newline after each trained <|im_end|> is trained."""
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer()
    im_end, newline = tokenizer.token_to_id(IM_END), tokenizer.token_to_id("Ċ")  # Ċ: byte-level "\\n"
    out = list(labels)
    for i in range(len(out) - 1):
        if out[i] == im_end and reference.input_ids[i + 1] == newline:
            out[i + 1] = newline
    return out


RESIDUALS: tuple[Residual, ...] = (
    Residual("llamafactory", "trailing_newline",
             "LLaMA-Factory trains the \\n after each assistant <|im_end|> (its qwen3_nothink slot is "
             "content<|im_end|>\\n; no flag removes it)", "assistant", _trailing_newline),
)
