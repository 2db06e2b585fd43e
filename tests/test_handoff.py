"""The token handoff (data.handoff: tokens): one tokenization and mask (data/tokens.py) written into every render
folder in the format each engine's pre-tokenized path reads; the text handoff as an option; the lock directive
that lets Unsloth's CPU lock pass `pip check`. Engine runs: tests/test_check.py, tests/test_engine_unsloth_cpu.py."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from qwenrecipes.check.tokens import reference_tokens
from qwenrecipes.data.tokens import IGNORE, tokenize_row, tokenize_rows
from qwenrecipes.engines import ENGINES
from qwenrecipes.recipe.plan import TRAIN_FILE, TRAIN_TOKENS_FILE, plan_recipe
from qwenrecipes.render.explain import explain_plan
from qwenrecipes.render.folder import render_plan, write_rendered
from qwenrecipes.run import env_install, env_locks
from tests.conftest import RECIPES

TINY = RECIPES / "tiny-cpu.yaml"
ROW = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_start|>assistant\n"},
       {"role": "assistant", "content": "Hello <|im_end|> there"}]


def _with_handoff(handoff: str):  # type: ignore[no-untyped-def]
    plan = plan_recipe(TINY, target="cpu")
    raw = copy.deepcopy(plan.recipe.raw)
    raw["data"]["handoff"] = handoff
    return dataclasses.replace(plan, recipe=dataclasses.replace(plan.recipe, raw=raw))


def test_labels_follow_the_rule_whatever_the_text_says() -> None:
    row = tokenize_row(ROW, "assistant")
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer()
    trained = tokenizer.decode([t for t, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE],
                               skip_special_tokens=False)
    # Literal special-token text in the reply is trained as the tokenizer reads it, the user's is not.
    assert trained == "Hello <|im_end|> there<|im_end|>"
    assert all(label in (IGNORE, token) for token, label in zip(row.input_ids, row.labels, strict=True))
    assert tokenize_row(ROW, "all").labels == row.input_ids


def test_batch_equals_one_by_one_and_check_reference() -> None:
    rows = [ROW, [*ROW[:2], {"role": "assistant", "content": ""}], ROW]
    batch = tokenize_rows(rows, "assistant")
    assert batch == [tokenize_row(r, "assistant") for r in rows]
    reference = reference_tokens(rows[1], "assistant")
    assert (reference.input_ids, reference.labels) == (batch[1].input_ids, batch[1].labels)


@pytest.mark.parametrize("engine", ["axolotl", "llamafactory", "trl", "unsloth", "swift"])
def test_render_writes_tokens_in_stream_order(engine: str, tmp_path: Path) -> None:
    plan = plan_recipe(TINY, target="cpu")
    rendered = render_plan(plan, engine)
    write_rendered(plan, rendered, tmp_path)
    text_rows = [json.loads(line)["messages"] for line in (tmp_path / TRAIN_FILE).read_text().splitlines()]
    token_rows = [json.loads(line) for line in (tmp_path / TRAIN_TOKENS_FILE).read_text().splitlines()]
    assert len(token_rows) == len(text_rows) == len(plan.train_stream or [])
    for messages, written in list(zip(text_rows, token_rows, strict=True))[:20]:
        expected = tokenize_row(messages, "assistant")
        assert written == ENGINES[engine].token_row(expected.input_ids, expected.labels)
    assert "train.tokens.jsonl" in json.dumps(rendered.files)


def test_explain_shows_one_mask_under_tokens_and_residuals_under_text() -> None:
    engines = ["axolotl", "llamafactory", "trl", "unsloth", "swift"]
    rows = {r.concept: r for r in explain_plan(plan_recipe(TINY, target="cpu"), engines)}
    assert not rows["loss_mask"].diverges and not rows["chat_template"].diverges, rows["loss_mask"].values
    text = {r.concept: r for r in explain_plan(_with_handoff("text"), engines)}
    assert text["loss_mask"].diverges and "trailing" in text["loss_mask"].values["llamafactory"]


def test_text_handoff_renders_the_engines_own_templates() -> None:
    plan = _with_handoff("text")
    assert "data/train.jsonl" in render_plan(plan, "trl").files["trl_config.yaml"]
    assert "train_on_responses_only" in render_plan(plan, "unsloth").files["train_unsloth.py"]
    assert "tokenized_path" not in render_plan(plan, "llamafactory").files["llamafactory.yaml"]
    assert render_plan(plan, "llamafactory").argv[0] == "llamafactory-cli"


def test_unsloth_cpu_render_says_what_its_cpu_backend_changes() -> None:
    rows = {r.concept: r for r in explain_plan(plan_recipe(TINY, target="cpu"), ["trl", "unsloth"])}
    assert "adamw_torch_fused" in rows["optimizer"].values["unsloth"]
    assert "CPU backend" in rows["optimizer"].why


def test_pip_check_ignore_directive() -> None:
    lock = env_locks.parse_lock("unsloth", "# python: 3.11\n# pip-check-ignore: unsloth unsloth_zoo\nx==1\n")
    assert lock.pip_check_ignore == ("unsloth", "unsloth_zoo")
    output = ("unsloth 2026.10.9 requires triton, which is not installed.\n"
              "unsloth-zoo 2026.10.9 requires torchvision, which is not installed.\n"
              "peft 0.21.2 requires torch, which is not installed.\n")
    assert env_install.pip_check_failures(output, lock.pip_check_ignore) == [
        "peft 0.21.2 requires torch, which is not installed."]
    assert env_locks.parse_lock("trl", "# python: 3.11\nx==1\n").pip_check_ignore == ()


def test_cpu_lock_is_chosen_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_locks.LOCK_VARIANT_VARIABLE, "cpu")
    cpu = env_locks.load_lock("unsloth")
    assert "torch==2.13.0" in cpu.torch_steps[0] and cpu.pip_check_ignore
    monkeypatch.setenv(env_locks.LOCK_VARIANT_VARIABLE, "gpu")
    assert not env_locks.load_lock("unsloth").pip_check_ignore
    assert env_locks.load_lock("trl").requirements  # an engine with one lock uses it on every host
