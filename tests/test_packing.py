"""Pack once (data/packing.py): bins, plan steps, the packed files, and (engine test) a packed row's per-token
losses equal those of its rows run separately in the trl env's transformers."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pytest
import yaml

from qwenrecipes.data.packing import best_fit_decreasing, pack, packed_row, padding_fraction
from qwenrecipes.data.tokens import IGNORE, TokenRow
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.folder import render_plan, write_rendered
from tests.packing_checks import LOSSES_SCRIPT as SCRIPT
from tests.packing_checks import (
    assert_bins_side_by_side,
    assert_each_row_alone,
    first_step_losses,
    run_packed,
    trainer_batches,
)
from tests.packing_checks import packed_recipe as _packed_recipe

TRL_BATCHES_SCRIPT = Path(__file__).parent / "scripts" / "trl_packed_batches.py"


def test_best_fit_decreasing_is_deterministic_and_keeps_every_row() -> None:
    lengths = [random.Random(1).randint(1, 300) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 512, seed=42)
    assert bins == best_fit_decreasing(lengths, 512, seed=42)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    # Within one bin of the volume bound: best-fit decreasing is at most 11/9 OPT + 6/9 (Dosa 2007).
    assert len(bins) <= math.ceil(sum(lengths) / 512) * 11 / 9 + 1
    with pytest.raises(ValueError, match="row 0: 600 tokens"):
        best_fit_decreasing([600], 512, seed=0)


def test_ties_follow_the_seed() -> None:
    lengths = [100] * 10
    assert best_fit_decreasing(lengths, 512, seed=1) != best_fit_decreasing(lengths, 512, seed=2)


def test_packed_row_restarts_positions_and_unlabels_each_first_token() -> None:
    rows = [TokenRow([1, 2, 3], [IGNORE, 2, 3]), TokenRow([4, 5], [4, 5])]
    row = packed_row(rows, (0, 1))
    assert row.input_ids == [1, 2, 3, 4, 5] and row.position_ids == [0, 1, 2, 0, 1]
    assert row.labels == [IGNORE, 2, 3, IGNORE, 5] and row.seq_lengths == [3, 2]
    packing = pack(rows, 8, seed=0)
    assert packing.bins == ((0, 1),) and packing.summary()["padding_fraction"] == round(1 - 5 / 8, 4)


def test_unpacked_padding_fraction() -> None:
    assert padding_fraction([10, 30, 20, 20], 2) == pytest.approx(1 - 80 / 100)
    assert padding_fraction([10, 30], 2, pad_to=40) == pytest.approx(0.5)


def test_plan_counts_steps_in_bins_and_render_hands_the_bins(tmp_path: Path) -> None:
    plan = plan_recipe(_packed_recipe(tmp_path, max_seq_length=512), target="cpu")
    assert plan.packing is not None and plan.train_rows is not None
    training = plan.recipe.training
    assert len(plan.packing.bins) < len(plan.train_rows)
    stream = plan.bin_stream or []
    assert len(stream) >= training["max_steps"] * plan.effective_batch
    # Each pass trains every bin once, in a seeded order: rows are never repeated inside a pass.
    first_pass = stream[:len(plan.packing.bins)]
    assert sorted(first_pass) == sorted(plan.packing.bins)
    summary = plan.summary()["packing"]
    assert "members" not in summary and 0 < summary["min_fill_pct"] <= summary["mean_fill_pct"] <= 100
    rendered = render_plan(plan, "trl")
    recorded = json.loads(rendered.files["plan.json"])["packing"]
    assert recorded["members"] == [list(b) for b in plan.packing.bins]
    write_rendered(plan, rendered, tmp_path / "out")
    lines = (tmp_path / "out" / "data" / "train.tokens.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(stream)
    first = json.loads(lines[0])
    assert sum(first["seq_lengths"]) == len(first["input_ids"]) <= 512
    assert [plan.packing.lengths[i] for i in stream[0]] == first["seq_lengths"]


def test_max_steps_from_bins_when_unset(tmp_path: Path) -> None:
    path = _packed_recipe(tmp_path, max_seq_length=512)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["training"].update({"max_steps": None, "epochs": 2})
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    plan = plan_recipe(path, target="cpu")
    assert plan.packing is not None
    assert plan.max_steps == math.ceil(len(plan.packing.bins) * 2 / plan.effective_batch)


def test_engine_without_a_packed_path_is_refused(tmp_path: Path) -> None:
    # swift takes the bins with sdpa and eager only (engines/swift/tokenpath.py): flash attention is not verified.
    swift_fa2 = _packed_recipe(tmp_path, max_seq_length=256)
    document = yaml.safe_load(swift_fa2.read_text(encoding="utf-8"))
    document["model"]["attn"] = "flash_attention_2"
    swift_fa2.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"model\.attn: swift: flash_attention_2 is not verified"):
        render_plan(plan_recipe(swift_fa2, target="cuda"), "swift")
    with pytest.raises(RecipeError, match=r"data\.packing: unsloth: Unsloth's CUDA path"):  # its CPU backend takes them
        render_plan(plan_recipe(_packed_recipe(tmp_path), target="cuda"), "unsloth")


def test_text_handoff_leaves_packing_to_each_engine_with_a_warning(tmp_path: Path) -> None:
    plan = plan_recipe(_packed_recipe(tmp_path, handoff="text"), target="cpu")
    assert plan.packing is None and any("own packer" in w for w in plan.warnings)


@pytest.mark.engine
def test_packed_row_losses_equal_separate_rows(tmp_path: Path) -> None:
    """Per-token losses of two packed bins (one micro-batch through TRL's padding-free collator) equal those of
    their rows run one by one, with sdpa and eager; an all-ones attention mask (rows attend across) does not."""
    from qwenrecipes.run.envs import env_for

    plan = plan_recipe(_packed_recipe(tmp_path, max_seq_length=256, train_on="all"), target="cpu")
    assert plan.packing is not None
    tokens, bins = plan.packing.tokens, plan.packing.bins[:2]
    assert all(len(b) >= 2 for b in bins)
    members = [i for b in bins for i in b]
    cases = {"bins": [{"input_ids": r.input_ids, "labels": r.labels, "seq_lengths": r.seq_lengths}
                      for r in (packed_row(tokens, b) for b in bins)],
             "rows": [{"input_ids": tokens[i].input_ids, "labels": tokens[i].labels} for i in members]}
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    out = tmp_path / "out.json"
    subprocess.run([str(env_for("trl").python), str(SCRIPT), str(tmp_path / "cases.json"), plan.model_path,
                    str(out)], check=True, timeout=900)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert "attention_mask" not in result["collator_keys"] and "position_ids" in result["collator_keys"]
    for impl, got in result["impls"].items():
        assert_each_row_alone(impl, got)


def test_lmsys_lengths_follow_the_fitted_lognormal() -> None:
    from qwenrecipes.data.lengths import LMSYS_MEAN_TOKENS, SHORTEST, lmsys_lengths

    lengths = lmsys_lengths(20000, 4096, seed=0)
    assert lengths == lmsys_lengths(20000, 4096, seed=0)
    assert min(lengths) >= SHORTEST and max(lengths) <= 4096
    median = sorted(lengths)[len(lengths) // 2]
    assert abs(median - LMSYS_MEAN_TOKENS / math.exp(0.5)) < 25  # lognormal median = mean / e^(sigma^2/2)
    # Realistic chat lengths leave most of an unpacked micro-batch padding; bins are nearly full.
    assert padding_fraction(lengths, 4) > 0.4
    assert len(best_fit_decreasing(lengths, 4096, seed=0)) <= math.ceil(sum(lengths) / 4096) * 1.02


def test_synthetic_rows_of_given_lengths() -> None:
    from qwenrecipes.data.prepare import chatml_text, token_lengths
    from qwenrecipes.data.synthetic import synthetic_chatml_rows

    rows = synthetic_chatml_rows(3, [24, 100, 333], seed=0)
    assert token_lengths([chatml_text(r["messages"]) for r in rows]) == [24, 100, 333]


def test_validate_refuses_an_engine_without_a_packed_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import run_cli

    recipe = str(_packed_recipe(tmp_path))
    code, _, err = run_cli(["validate", recipe, "--target", "cuda", "-e", "unsloth"], capsys)
    assert code == 2 and "data.packing" in err and "CUDA path" in err
    code, out, _ = run_cli(["validate", recipe, "--target", "cpu", "-e", "unsloth"], capsys)
    assert code == 0 and "bins of 256 tokens" in out
    code, out, _ = run_cli(["validate", recipe, "--target", "cpu", "-e", "axolotl"], capsys)
    assert code == 0 and "bins of 256 tokens" in out
    code, out, _ = run_cli(["validate", recipe, "--target", "cpu", "-e", "trl"], capsys)
    assert code == 0 and "bins of 256 tokens" in out and "mean fill" in out
    code, out, _ = run_cli(["validate", recipe, "--target", "cpu", "-e", "swift"], capsys)
    assert code == 0 and "bins of 256 tokens" in out


@pytest.mark.engine
def test_trl_launcher_keeps_the_bins_side_by_side_under_sdpa_and_eager(tmp_path: Path) -> None:
    """The rendered train_trl.py's own trainer on a packed folder: with sdpa and eager each bin is a row of the
    micro-batch (not one flattened row), the next micro_batch_size bins of the stream in order, position ids and no
    attention mask, each token's loss equal to its row's alone, and TRL's token count is every row's; with
    flash_attention_2 the launcher leaves TRL's flattening padding-free collator in place (varlen needs one row)."""
    plan, stream, micro, result = trainer_batches(tmp_path, "trl", TRL_BATCHES_SCRIPT)
    assert result.pop("flash_attention_2") == {"side_by_side": False}
    for impl, got in result.items():
        assert got["side_by_side"] is True, impl
        assert_bins_side_by_side(impl, got, plan, stream, micro)
        first = got["batches"][0]["input_ids"]
        assert got["num_tokens"] == [len(first) * len(first[0])], impl


@pytest.mark.engine
def test_trl_trains_the_bins_with_the_loss_of_their_rows(tmp_path: Path) -> None:
    """A real TRL run of a packed recipe (`qwenrecipes run`): its first logged loss (LoRA B = 0 at init: the base
    model's loss on the first step's bins) equals the token-weighted mean loss of those bins' rows run one by one."""
    plan, run_dir = run_packed(tmp_path, "trl", max_steps=3, warmup_steps=1)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    first = next(e for e in events if e.get("type") == "train" and e.get("step") == 1)
    alone, _ = first_step_losses(tmp_path, plan, "trl")
    assert first["loss"] == pytest.approx(alone, rel=2e-3)
