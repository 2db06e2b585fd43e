"""Data preparation: formats → canonical ChatML, the think-block rule, over-long rows, split/shuffle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenrecipes.data.prepare import Conversation, apply_think_rule, canonical_conversations, chatml_text, drop_overlong
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.load import DatasetRef


def ref(path: Path, fmt: str = "messages", fields: dict[str, str] | None = None) -> DatasetRef:
    return DatasetRef(str(path), fmt, fields or {}, "train", path)


def write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sharegpt_and_alpaca_become_messages(tmp_path: Path) -> None:
    sharegpt = write(tmp_path, [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                                 "system": "be brief"}])
    [conv] = canonical_conversations(ref(sharegpt, "sharegpt"), "r.yaml")
    assert conv.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "yo"}]
    alpaca = write(tmp_path, [{"q": "add", "input": "1 2", "a": "3"}])
    [conv] = canonical_conversations(ref(alpaca, "alpaca", {"instruction": "q", "output": "a"}), "r.yaml")
    assert conv.messages == [{"role": "user", "content": "add\n\n1 2"}, {"role": "assistant", "content": "3"}]


def test_bad_rows_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path, [{"messages": [{"role": "user", "content": "x"}]},
                            {"messages": [{"role": "wizard", "content": "x"}]},
                            {"messages": [{"role": "assistant", "content": "x"}]}, "not an object"])
    with pytest.raises(RecipeError) as info:
        canonical_conversations(ref(path), "r.yaml")
    text = str(info.value)
    assert "row 1: a conversation ends with an assistant turn" in text
    assert "row 2: unknown role 'wizard'" in text
    assert "row 3: turn 1 is 'assistant', expected 'user'" in text
    assert "row 4: row is not an object" in text


def test_think_rule_qwen3_puts_a_block_on_every_assistant_turn() -> None:
    conv = Conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"},
                         {"role": "assistant", "content": "d", "reasoning_content": "\nthink d\n"}])
    out = apply_think_rule(conv, "qwen3")
    assert out[1]["content"] == "<think>\n\n</think>\n\nb"
    assert out[3]["content"] == "<think>\nthink d\n</think>\n\nd"


def test_think_rule_inline_think_and_nothink() -> None:
    conv = Conversation([{"role": "user", "content": "a"},
                         {"role": "assistant", "content": "<think>\nstep\n</think>\n\nanswer"}])
    assert apply_think_rule(conv, "qwen3")[1]["content"] == "<think>\nstep\n</think>\n\nanswer"
    assert apply_think_rule(conv, "qwen3_nothink")[1]["content"] == "answer"
    assert conv.has_reasoning


def test_chatml_has_no_default_system_prompt() -> None:
    text = chatml_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"


def test_drop_overlong_counts_real_tokens() -> None:
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "yo"}]
    kept, dropped = drop_overlong([short, long, short], 64)
    assert dropped == 1 and kept == [short, short]
    # 300 x "word " is ~300 tokens: kept under a limit it fits in
    assert drop_overlong([long], 400) == ([long], 0)
