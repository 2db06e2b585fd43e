"""Token differences Axolotl makes impossible to remove (`qwenrecipes check` reports them as residuals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qwenrecipes.data import prepare as datamod
from qwenrecipes.engines.base import Residual

IGNORE = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def _tokenizer() -> Any:
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


def _turn_spans(messages: Sequence[Mapping[str, str]]) -> list[tuple[int, int]]:
    """Content + <|im_end|> of every turn, whatever the role (Axolotl's `train_on: all`)."""
    spans, position = [], 0
    for message in messages:
        start = position + len(f"{IM_START}{message['role']}\n")
        end = start + len(message["content"]) + len(IM_END)
        spans.append((start, end))
        position = end + 1
    return spans


def _headers_masked(messages: Sequence[Mapping[str, str]], reference: Any, labels: list[int]) -> list[int]:
    """Axolotl's chat_template strategy trains every turn's content + <|im_end|> but never the role headers."""
    spans = _turn_spans(messages)
    encoding = _tokenizer().encode(datamod.chatml_text(messages), add_special_tokens=False)
    return [token if any(start < span_end and span_start < end for span_start, span_end in spans) else IGNORE
            for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True)]


def _empty_turn(messages: Sequence[Mapping[str, str]], reference: Any, labels: list[int]) -> list[int]:
    """Axolotl finds a turn's span by diffing renders; an empty content has no span, so the turn is skipped and
    its <|im_end|> (the only token the canonical rule trains there) stays masked."""
    encoding = _tokenizer().encode(datamod.chatml_text(messages), add_special_tokens=False)
    empty_ends = [(start, start + len(IM_END)) for (start, _end), message in zip(_turn_spans(messages), messages,
                                                                                   strict=True)
                  if message["content"] == ""]
    return [IGNORE if any(s < e_end and e_start < e for e_start, e_end in empty_ends) else label
            for label, (s, e) in zip(labels, encoding.offsets, strict=True)]


RESIDUALS: tuple[Residual, ...] = (
    Residual("axolotl", "empty_turn_masked",
             "Axolotl skips an assistant turn whose content is empty (possible only with qwen3_nothink), so its "
             "<|im_end|> is not trained; no flag changes it", "assistant", _empty_turn),
    Residual("axolotl", "headers_masked",
             "Axolotl masks the <|im_start|>role\\n headers and the \\n between turns even with train_on_inputs "
             "(its chat_template strategy has no every-token mode)", "all", _headers_masked),
    Residual("axolotl", "empty_turn_masked",
             "Axolotl skips a turn whose content is empty, so its <|im_end|> is not trained", "all", _empty_turn),
)
