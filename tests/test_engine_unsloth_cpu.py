"""Unsloth as a CPU engine (its 2026.10.9 CPU backend, env from lock-cpu.txt): a real `qwenrecipes run` of the tiny
recipe, and `check` through the rendered train_unsloth.py itself on every row under both handoffs (the text
handoff's train_on_responses_only included); qwenrecipes' bins through the rendered script's trainer and a real packed
run. Loss parity: tests/test_parity_recipes.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwenrecipes.check.tokens import check_recipe
from qwenrecipes.recipe.plan import plan_recipe
from tests.conftest import TINY
from tests.packing_checks import (
    assert_flattened_batches,
    assert_rows_kept_apart,
    first_step_losses,
    run_packed,
    trainer_batches,
)

BATCHES_SCRIPT = Path(__file__).parent / "scripts" / "unsloth_packed_batches.py"

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module", autouse=True)
def _env() -> None:
    from qwenrecipes.errors import EngineError
    from qwenrecipes.run import envs

    try:
        envs.env_for("unsloth")
    except EngineError as exc:
        pytest.skip(f"unsloth env not installed (`qwenrecipes env install unsloth`): {exc}")


def test_run_trains_on_cpu(tmp_path: Path) -> None:
    text = TINY.read_text(encoding="utf-8").replace("max_steps: 30", "max_steps: 4").replace(
        "path: data/chat.jsonl", f"path: {TINY.parent / 'data' / 'chat.jsonl'}")
    recipe = tmp_path / "tiny-4.yaml"
    recipe.write_text(text, encoding="utf-8")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", "from qwenrecipes.cli import main; main()", "run", str(recipe), "--engine", "unsloth",
         "--run-dir", str(run_dir), "--target", "cpu"],
        capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("type") == "train" and e.get("loss") is not None]
    assert len(losses) == 4 and all(10 < loss < 13 for loss in losses)  # random-init tiny model: ~ln(151936)
    assert "CPU" in (run_dir / "engine.log").read_text()  # Unsloth says it trains on its CPU backend


@pytest.mark.parametrize("handoff", ["tokens", "text"])
def test_check_every_row_on_its_real_code_path(handoff: str) -> None:
    plan = plan_recipe(TINY, target="cpu")
    raw = copy.deepcopy(plan.recipe.raw)
    raw["data"]["handoff"] = handoff
    plan = dataclasses.replace(plan, recipe=dataclasses.replace(plan.recipe, raw=raw))
    report = check_recipe(plan, ["unsloth"], data_samples=None)
    engine = report.engines[0]
    assert engine.status == "checked", f"{engine.reason}\n{engine.detail}"
    assert engine.handoff == handoff
    bad = [f"{r.sample}: {r.status}\n{r.diff}" for r in engine.results if r.status != "equal"]
    if handoff == "tokens":
        assert not bad, "\n".join(bad)
    else:  # Unsloth's own text mask (docs/equivalence.md, limits of the text handoff): literal special-token text
        # in content (issue 13), and a reply starting with "\n", whose "\n\n" token hides the header it searches for
        known = ("special_tokens", "whitespace_replies")
        assert all(r.status == "equal" for r in engine.results if not r.sample.startswith(known)), bad


def test_unsloth_trainer_hands_the_bins_in_order_with_rows_apart(tmp_path: Path) -> None:
    """The rendered train_unsloth.py builds its trainer (Unsloth's CPU backend, the rendered data_collator) on a
    packed folder: every batch is the next micro_batch_size bins of the stream flattened into one row (order and
    count, so max_steps), with position ids restarting per row and no attention mask; each token's loss in the first
    batch, through trainer.model with sdpa and eager, equals its loss with its row run alone, and the trainer's own
    compute_loss (the CPU backend's chunked cross-entropy) is their token-weighted mean. An all-ones mask differs."""

    plan, stream, micro, result = trainer_batches(tmp_path, "unsloth", BATCHES_SCRIPT)
    for impl, got in result.items():
        assert got["attn"] == impl and got["keys"] == ["input_ids", "labels", "position_ids"], impl
        # The CPU backend forced SFTConfig's padding_free off; the rendered collator flattens the batch anyway.
        assert got["padding_free_arg"] is False and got["collator"] == "DataCollatorForLanguageModeling"
        assert plan.max_steps == got["max_steps"] == len(got["batches"]) == len(stream) // micro
        assert_flattened_batches(impl, got["batches"], stream, micro)
        separate = [t for row in got["separate"] for t in row]
        (packed,), (control,) = got["packed"], got["control"]  # the flattened batch is one row
        values = assert_rows_kept_apart(impl, separate, packed, control)
        assert got["step_loss"] == pytest.approx(sum(values) / len(values), rel=1e-6), impl


def test_unsloth_trains_the_bins_with_the_loss_of_their_rows(tmp_path: Path) -> None:
    """A real Unsloth run of a packed recipe (`qwenrecipes run`, its CPU backend): exactly max_steps steps, and its
    first loss (LoRA B = 0 at init: the base model's loss on the first step's bins) equals the token-weighted mean
    loss of those bins' rows run one by one."""

    plan, run_dir = run_packed(tmp_path, "unsloth", max_steps=3, warmup_steps=1, save_steps=3)
    written = (run_dir / "data" / "train.tokens.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["seq_lengths"] for line in written] == [
        [plan.packing.lengths[i] for i in b] for b in plan.bin_stream]  # one line per bin, in training order
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [e for e in events if e.get("type") == "train"]
    assert [e["step"] for e in steps] == [1, 2, 3]  # qwenrecipes' max_steps
    # mean_across: the same batch with an all-ones attention mask (rows attending across)
    mean, mean_across = first_step_losses(tmp_path, plan, "unsloth")
    assert steps[0]["loss"] == pytest.approx(mean, rel=2e-3)  # events round the loss
    # Full precision (the checkpoint's log_history): 11.9157076 against 11.9157073; rows attending across: 11.91687.
    state = json.loads((run_dir / "outputs" / "checkpoint-3" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["log_history"][0]["loss"] == pytest.approx(mean, abs=1e-5)
    assert abs(mean_across - mean) > 1e-4, "the control should tell rows attending across apart"
