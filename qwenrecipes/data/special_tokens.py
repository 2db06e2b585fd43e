"""Literal special-token text inside a conversation's own text (``data.special_tokens_in_content``).

The Qwen3 tokenizer reads every one of its added tokens wherever it appears in the text: ``<|im_start|>`` written
inside a user message becomes the real turn-start token, ``<|im_end|>`` inside a reply the real end-of-turn
token, ``<think>`` / ``<tool_call>`` the real tags. Such rows are nearly always an escaping accident (scraped
chat logs, prompt-injection tests, pasted transcripts), and trained as the tokenizer reads them they teach the
model to see or emit turn boundaries in the middle of a turn. So ``refuse`` (the default) stops validate with
every such row named by file, row and field; ``keep`` trains them as the tokenizer reads them (the loss mask is
decided on characters, so it stays right whatever the text says) and lists them in validate's report and
plan.json. The reasoning block a think rule reads (``<think>…</think>`` opening an assistant turn) is structure,
not content, and is not counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from qwenrecipes.data.render_text import split_reasoning, tojson

# Every added token of the Qwen3 tokenizer (tokenizer.json "added_tokens"; tests/test_data_render.py checks
# the list against the file): the tokenizer turns each into its one id wherever it appears.
QWEN3_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
SPECIAL_RE = re.compile("|".join(re.escape(token) for token in QWEN3_ADDED_TOKENS))
CHOICES = ("refuse", "keep")


def _texts(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any], rule: str) -> list[tuple[str, str]]:
    """(field, text) of everything the data wrote into a conversation, as the rule reads it."""
    out = [(f"tools[{i}]", tojson(tool)) for i, tool in enumerate(tools)]
    for index, message in enumerate(messages):
        where = f"turn {index + 1} ({message['role']})"
        if message["role"] != "assistant":
            out.append((f"{where} content", message["content"]))
            continue
        reasoning, answer = split_reasoning(message, rule)
        out += [(f"{where} reasoning", reasoning), (f"{where} content", answer)]
        for number, call in enumerate(message.get("tool_calls", [])):
            arguments = call["arguments"]
            text = call["name"] + (arguments if isinstance(arguments, str) else tojson(arguments))
            out.append((f"{where} tool_calls[{number}]", text))
    return out


def special_token_fields(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any], rule: str) -> list[str]:
    """'field holds <token>' for every field of the conversation that contains literal special-token text."""
    found = []
    for where, text in _texts(messages, tools, rule):
        tokens = list(dict.fromkeys(SPECIAL_RE.findall(text)))
        if tokens:
            found.append(f"{where} holds {', '.join(tokens)}")
    return found
