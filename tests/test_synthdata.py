"""The shipped example datasets and the exact-length benchmark rows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from qwenrecipes.data import synthetic as synthdata
from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer
from qwenrecipes.errors import QwenRecipesError

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data"


def _read(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _n_tokens(text: str) -> int:
    return len(load_qwen3_tokenizer().encode(text, add_special_tokens=False).ids)


def _check_shape(row: dict[str, Any]) -> list[dict[str, str]]:
    assert list(row) == ["messages"]
    messages = row["messages"]
    body = messages[1:] if messages[0]["role"] == "system" else messages
    assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2)
    assert len(body) % 2 == 0 and body
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    return body


def test_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    synthdata.main([str(tmp_path / "chat.jsonl")])
    synthdata.main([str(tmp_path / "reasoning.jsonl"), "--kind", "reasoning"])
    assert (tmp_path / "chat.jsonl").read_bytes() == (DATA / "chat.jsonl").read_bytes()
    assert (tmp_path / "reasoning.jsonl").read_bytes() == (DATA / "reasoning.jsonl").read_bytes()


def test_chat_rows_are_valid_varied_and_short() -> None:
    rows = _read("chat.jsonl")
    assert len(rows) == 300
    user_turns = []
    for row in rows:
        body = _check_shape(row)
        user_turns.append(len(body) // 2)
        for message in row["messages"]:
            assert set(message) == {"role", "content"}  # no reasoning_content
            assert "<think>" not in message["content"] and "</think>" not in message["content"]
        assert _n_tokens(synthdata.render_chatml(row["messages"])) < 200
    assert set(user_turns) == {1, 2, 3, 4}
    assert 0.35 < user_turns.count(1) / len(rows) < 0.65
    with_system = sum(row["messages"][0]["role"] == "system" for row in rows)
    assert 0.25 < with_system / len(rows) < 0.42
    text = "\n".join(m["content"] for row in rows for m in row["messages"])
    assert "```python\ndef " in text
    assert re.search(r"[\u4e00-\u9fff]", text)  # CJK
    assert re.search(r"[\U0001F300-\U0001FAFF]", text)  # emoji
    assert "é" in text or "á" in text
    assert len({m["content"] for row in rows for m in row["messages"] if m["role"] == "user"}) > 200


def test_arithmetic_answers_are_correct() -> None:
    checked = 0
    for row in _read("chat.jsonl"):
        for message in row["messages"]:
            match = re.fullmatch(r"(\d+) ([-+×÷]) (\d+) = (-?\d+)\.", message["content"])
            if match and message["role"] == "assistant":
                a, op, b, result = int(match[1]), match[2], int(match[3]), int(match[4])
                expected = {"+": a + b, "-": a - b, "×": a * b, "÷": a // b}[op]
                assert result == expected and (op != "÷" or a % b == 0)
                checked += 1
    assert checked > 20


def test_reasoning_rows_carry_reasoning_on_every_assistant_turn() -> None:
    rows = _read("reasoning.jsonl")
    assert len(rows) == 40
    for row in rows:
        body = _check_shape(row)
        for message in body:
            if message["role"] == "assistant":
                assert message["reasoning_content"].strip()
                assert "<think>" not in message["content"]
            else:
                assert "reasoning_content" not in message


def test_generation_is_deterministic_and_seeded() -> None:
    assert synthdata.generate_chat_rows(20, seed=3) == synthdata.generate_chat_rows(20, seed=3)
    assert synthdata.generate_chat_rows(20, seed=3) != synthdata.generate_chat_rows(20, seed=4)


@pytest.mark.parametrize("n_tokens", [24, 25, 64, 257, 2048])
def test_synthetic_rows_have_exact_token_length(n_tokens: int) -> None:
    rows = synthdata.synthetic_chatml_rows(8, n_tokens, seed=0)
    assert len(rows) == 8
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in row["messages"])
        assert _n_tokens(text) == n_tokens
    assert synthdata.synthetic_chatml_rows(8, n_tokens, seed=0) == rows


def test_synthetic_rows_vary_with_seed_and_reject_too_short() -> None:
    assert synthdata.synthetic_chatml_rows(2, 100, seed=0) != synthdata.synthetic_chatml_rows(2, 100, seed=1)
    with pytest.raises(QwenRecipesError, match="below the shortest"):
        synthdata.synthetic_chatml_rows(1, 23, seed=0)
