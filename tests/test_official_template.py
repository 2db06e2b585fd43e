"""qwen3_official against transformers' own rendering: every row qwenrecipes prepares from tests/fixtures/
official_corpus.py (whole conversations and the rows split off at earlier reasoning turns) is byte-identical to
``apply_chat_template`` (default enable_thinking) with the shipped official template, run in the trl env; the
tiny model's own (first-release) template renders the same; the reference tokenizer gives transformers' ids."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from qwenrecipes.data.qwen3_official import TEMPLATE_FILE
from qwenrecipes.data.render_text import chatml_text, conversation_rows, dropped_reasoning_turns
from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer
from tests.fixtures.official_corpus import CORPUS

SCRIPT = Path(__file__).parent / "scripts" / "render_with_transformers.py"


@pytest.mark.engine
def test_official_rule_is_byte_identical_to_transformers(tmp_path: Path) -> None:
    from qwenrecipes.data.tiny import TINY_QWEN3_REF, resolve_builtin_model
    from qwenrecipes.run.envs import env_for

    python = env_for("trl").python
    cases, ours = [], []
    for _, messages, tools in CORPUS:
        rows = conversation_rows(messages, tools, "qwen3_official")
        prefixes = [messages[:turn + 1] for turn in dropped_reasoning_turns(messages)] + [messages]
        for row, prefix in zip(rows, prefixes, strict=True):
            cases.append({"messages": prefix, "tools": tools})
            ours.append(chatml_text(row))
    (tmp_path / "cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    template = Path(__file__).parent.parent / "qwenrecipes" / "data" / TEMPLATE_FILE
    out = tmp_path / "out.json"
    subprocess.run([str(python), str(SCRIPT), str(tmp_path / "cases.json"), str(template),
                    str(resolve_builtin_model(TINY_QWEN3_REF)), str(out)], check=True, timeout=600)
    result = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert len(result) == len(ours) > len(CORPUS)  # some conversations were split
    tokenizer = load_qwen3_tokenizer()
    for case, text, theirs in zip(cases, ours, result, strict=True):
        assert text == theirs["text"], case
        assert theirs["own_template_text"] == theirs["text"], case
        assert tokenizer.encode(text, add_special_tokens=False).ids == theirs["ids"], case
