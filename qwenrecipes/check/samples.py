"""The conversations `qwenrecipes check` sends through every engine: rows of the recipe's data plus built-in hard
cases (empty turns, think blocks, a conversation cut at max_seq_length), as every engine receives them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenrecipes.data import prepare as datamod
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.plan import Plan

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SAMPLES = 3


def _tokenizer() -> Any:
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


# ---------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One conversation as every engine receives it (think rule already applied)."""

    name: str
    source: str  # "data" (a row of the recipe's prepared data) or "builtin" (a hard case)
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class Tokens:
    input_ids: list[int]
    labels: list[int]

    def to_json(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def _raw_hard_cases(chat_template: str) -> list[tuple[str, list[dict[str, str]]]]:
    """Conversations before the think rule. Reasoning cases only for `qwen3`: with `qwen3_nothink` the recipe
    rejects data that carries reasoning, so no engine would ever see them."""
    cases: list[tuple[str, list[dict[str, str]]]] = [
        ("system_prompt", [
            {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the boiling point of water at sea level?"},
            {"role": "assistant", "content": "100 °C (212 °F)."}]),
        ("multi_turn", [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7 is prime."},
            {"role": "user", "content": "And an even one?"},
            {"role": "assistant", "content": "2 is the only even prime."},
            {"role": "user", "content": "Thanks!\n\nOne more: the next prime after 7?"},
            {"role": "assistant", "content": "11.\n"}]),
        ("empty_assistant_turn", [
            {"role": "user", "content": "Say nothing."},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Now say ok."},
            {"role": "assistant", "content": "ok"}]),
        ("unicode", [
            {"role": "system", "content": "Réponds en français 🇫🇷."},
            {"role": "user",
             "content": "翻译：「你好，世界」 and 👩‍👩‍👧‍👦 — שלום, مرحبا, zero\u200bwidth, nbsp\u00a0here"},
            {"role": "assistant",
             "content": "« Bonjour, le monde » 🌍✨ — 你好 means hello; 👩‍👩‍👧‍👦 is a family.\t\u00e9\u0301"}]),
    ]
    if chat_template == "qwen3":
        cases += [
            ("reasoning_content", [
                {"role": "user", "content": "What is 17 * 3?"},
                {"role": "assistant", "content": "51.", "reasoning_content": "17 * 3 = 51."},
                {"role": "user", "content": "And 17 * 4?"},
                {"role": "assistant", "content": "68.", "reasoning_content": "\n51 + 17 = 68.\n"}]),
            ("inline_think", [
                {"role": "user", "content": "Is 91 prime?"},
                {"role": "assistant", "content": "<think>\n91 = 7 * 13.\n</think>\n\nNo, 91 = 7 × 13."}]),
        ]
    return cases


def _prepare(messages: list[dict[str, str]], chat_template: str) -> list[dict[str, str]]:
    """qwenrecipes' own data path for one conversation: the think rule, as make_plan applies it."""
    return datamod.apply_think_rule(datamod.Conversation(messages), chat_template)


def _long_case(chat_template: str, max_tokens: int) -> list[dict[str, str]]:
    """A conversation of exactly max_tokens tokens (the longest row qwenrecipes keeps), mostly one assistant turn."""
    tokenizer = _tokenizer()

    def build(units: int) -> list[dict[str, str]]:
        filler = " ".join(f"w{i % 97}" for i in range(units))
        return _prepare([{"role": "user", "content": "Write a long answer."},
                         {"role": "assistant", "content": f"Long answer: {filler}"}], chat_template)

    def length(units: int) -> int:
        return len(tokenizer.encode(datamod.chatml_text(build(units)), add_special_tokens=False).ids)

    low, high = 0, max_tokens  # every unit adds at least one token: length(max_tokens) > max_tokens
    if length(0) > max_tokens:
        raise QwenRecipesError(f"max_seq_length={max_tokens} is shorter than the smallest conversation")
    while high - low > 1:  # largest unit count that still fits
        middle = (low + high) // 2
        if length(middle) <= max_tokens:
            low = middle
        else:
            high = middle
    messages = build(low)
    # Top up with single-token characters to land exactly on max_tokens.
    while True:
        bumped = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + "."}]
        if len(tokenizer.encode(datamod.chatml_text(bumped), add_special_tokens=False).ids) > max_tokens:
            return messages
        messages = bumped


def build_samples(plan: Plan, *, data_samples: int = DEFAULT_SAMPLES) -> list[Sample]:
    """Rows of the recipe's prepared data (evenly spread) plus the hard cases, all as engines receive them."""
    template = plan.recipe.model["chat_template"]
    samples: list[Sample] = []
    rows = plan.train_rows or []
    count = min(data_samples, len(rows))
    for k in range(count):
        index = k * len(rows) // count
        samples.append(Sample(f"data_row_{index + 1}", "data", rows[index]))
    for name, messages in _raw_hard_cases(template):
        samples.append(Sample(name, "builtin", _prepare(messages, template)))
    samples.append(Sample("long_turn", "builtin", _long_case(template, plan.recipe.data["max_seq_length"])))
    return samples
