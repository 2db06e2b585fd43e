"""Training text: a canonical conversation -> the rows that train it, and a row -> (text, trained characters).

This is the one place that decides what is trained. The token reference (``check``), the held-out evaluation and
the token handoff to engines all build on ``training_text``; a token is trained when it overlaps a trained span
(the rule of transformers' ``{% generation %}`` masks).

A **prepared row** is a list of plain ChatML messages ``{role: system|user|assistant, content}``:
``chatml_text(row)`` is its training text, byte for byte, under every rule, so an engine pinned to plain ChatML
renders it exactly. Tool definitions, tool calls and tool results are already written into the contents, as the
official Qwen3 template writes them. An assistant message may carry two mask keys (only ``qwen3_official`` sets
them): ``trained: false`` (context: the turn is trained in another row) and ``masked_prefix: n`` (its first
``n`` characters are masked: the empty think block the template inserts).

Rules (``model.chat_template``):

- ``qwen3``: every assistant turn is ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (an empty block when
  there is no reasoning), everything in it trained.
- ``qwen3_nothink``: the answer only.
- ``qwen3_official``: exactly what the official Qwen3 template (data/qwen3_official.py) renders: a think block only
  on assistant turns after the last user query, and on the last turn always (empty when it has no reasoning;
  that empty block is masked); reasoning of earlier turns is dropped by the template, so a conversation with
  such turns becomes one extra row per such turn (the conversation up to it, where it is the last turn and
  keeps its reasoning), and each assistant turn is trained in exactly one row.

Tools, under every rule, as the official template renders them: the row's ``tools`` in the system turn
(``# Tools`` ... ``<tools>`` one JSON object a line ``</tools>`` ...), each tool call as
``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` after the answer (trained with it), and tool
results as ``<tool_response>\\n...\\n</tool_response>`` inside a user turn (masked), consecutive ones in one turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenrecipes.data.turns import THINK_RE, is_tool_wrapper

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
RULES = ("qwen3", "qwen3_nothink", "qwen3_official")
TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call>")
Row = list[dict[str, Any]]


@dataclass(frozen=True)
class TrainingText:
    """One row's training text and the character ranges [start, end) of it that are trained."""

    text: str
    trained_spans: list[tuple[int, int]]


def tojson(value: Any) -> str:
    """transformers' ``tojson`` filter for chat templates: json.dumps, no ASCII escaping, keys in given order."""
    return json.dumps(value, ensure_ascii=False)


def chatml_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The plain ChatML rendering every engine is pinned to (no default system prompt)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def training_text(row: Sequence[Mapping[str, Any]], train_on: str = "assistant") -> TrainingText:
    """The training text of a prepared row and its trained characters: ``train_on: all`` trains everything;
    ``assistant`` trains each assistant turn's content and the ``<|im_end|>`` closing it, less a turn marked
    ``trained: false`` and less the first ``masked_prefix`` characters of a turn."""
    text = chatml_text(row)
    if train_on == "all":
        return TrainingText(text, [(0, len(text))] if text else [])
    spans, position = [], 0
    for message in row:
        start = position + len(IM_START) + len(message["role"]) + 1
        end = start + len(message["content"]) + len(IM_END)
        if message["role"] == "assistant" and message.get("trained", True):
            spans.append((start + int(message.get("masked_prefix", 0)), end))
        position = end + 1  # the "\n" after <|im_end|>
    return TrainingText(text, spans)


# ------------------------------------------------------------------------------------------------ rendering


def split_reasoning(message: Mapping[str, Any], rule: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant turn. ``qwen3_official`` reads them as the template does
    (``reasoning_content`` as given, else the text before ``</think>``); the other rules as qwenrecipes always
    has (reasoning_content or the inline block, the block removed from the answer). ``qwen3`` also strips the
    answer's leading newlines, as the template does after the think block it writes; ``qwen3_nothink`` writes no
    block, so its answer is the content as given (validate refuses any think block there)."""
    content = message["content"]
    if rule == "qwen3_official":
        if "reasoning_content" in message:
            return message["reasoning_content"], content
        if "</think>" in content:
            head, _, _ = content.partition("</think>")
            return head.rstrip("\n").split("<think>")[-1].lstrip("\n"), content.split("</think>")[-1].lstrip("\n")
        return "", content
    inline = THINK_RE.findall(content)
    answer = THINK_RE.sub("", content)
    return message.get("reasoning_content") or (inline[0] if inline else ""), (
        answer.lstrip("\n") if rule == "qwen3" else answer)


def tool_calls_text(calls: Sequence[Mapping[str, Any]], answer: str) -> str:
    """Tool calls as the template writes them after the answer (a newline before the first only when there
    is an answer)."""
    out = ""
    for index, call in enumerate(calls):
        if index or answer:
            out += "\n"
        call = call.get("function") or call  # an OpenAI {function: {name, arguments}} wrapper, as the template reads it
        arguments = call["arguments"]
        out += '<tool_call>\n{"name": "' + call["name"] + '", "arguments": '
        out += (arguments if isinstance(arguments, str) else tojson(arguments)) + "}\n</tool_call>"
    return out


def tools_system_text(system: str | None, tools: Sequence[Any]) -> str:
    """The system turn's content when the row has tools (the system prompt, if any, first)."""
    head = f"{system}\n\n" if system is not None else ""
    return head + TOOLS_HEAD + "".join("\n" + tojson(tool) for tool in tools) + TOOLS_TAIL


def last_query_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """The template's last user query: the last user message that is not a pasted tool result."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message["role"] == "user" and not is_tool_wrapper(message["content"]):
            return index
    return len(messages) - 1


def dropped_reasoning_turns(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Assistant turns whose reasoning the official template drops (at or before the last user query)."""
    last_query = last_query_index(messages)
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and i <= last_query
            and split_reasoning(m, "qwen3_official")[0].strip("\n")]


def render_row(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any], rule: str,
               trained: set[int] | None = None) -> Row:
    """One prepared row: the messages rendered by `rule`; `trained` (official rule): which assistant turns,
    by index into `messages`, this row trains (None: all)."""
    if rule not in RULES:
        raise ValueError(f"unknown chat_template {rule!r}: choose from {', '.join(RULES)}")
    out: Row = []
    body_start = 0
    if messages and messages[0]["role"] == "system":
        body_start = 1
        if not tools:
            out.append({"role": "system", "content": messages[0]["content"]})
    if tools:
        out.append({"role": "system", "content": tools_system_text(messages[0]["content"] if body_start else None,
                                                                    tools)})
    last_query, last = last_query_index(messages), len(messages) - 1
    for index in range(body_start, len(messages)):
        message = messages[index]
        role = message["role"]
        if role == "tool":
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if index > body_start and messages[index - 1]["role"] == "tool":
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            continue
        if role != "assistant":
            out.append({"role": role, "content": message["content"]})
            continue
        reasoning, answer = split_reasoning(message, rule)
        masked = 0
        if rule == "qwen3":
            text = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{answer}"
        elif rule == "qwen3_official" and index > last_query and (index == last or reasoning):
            block = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"
            text = block + answer.lstrip("\n")
            masked = 0 if reasoning.strip("\n") else len(block)
        else:
            text = answer
        turn: dict[str, Any] = {"role": "assistant", "content": text + tool_calls_text(message.get("tool_calls", []),
                                                                                       answer)}
        if rule == "qwen3_official":
            if trained is not None and index not in trained:
                turn["trained"] = False
            elif masked:
                turn["masked_prefix"] = masked
        out.append(turn)
    return out


def conversation_rows(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any], rule: str) -> list[Row]:
    """The prepared rows of one conversation: one row, except under ``qwen3_official`` when earlier assistant
    turns carry reasoning the template drops: then first one row per such turn (the conversation up to it,
    only it trained), then the whole conversation with those turns as context (module doc)."""
    if rule != "qwen3_official":
        return [render_row(messages, tools, rule)]
    dropped = dropped_reasoning_turns(messages)
    rows = [render_row(messages[:turn + 1], tools, rule, {turn}) for turn in dropped]
    rest = {i for i, m in enumerate(messages) if m["role"] == "assistant" and i not in dropped}
    rows.append(render_row(messages, tools, rule, rest))
    return rows


def render_conversation(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any], rule: str,
                        train_on: str = "assistant") -> list[TrainingText]:
    """Each row's training text and trained characters, straight from a canonical conversation."""
    return [training_text(row, train_on) for row in conversation_rows(messages, tools, rule)]
