"""What every engine's packed-bins tests share (tests/test_packing.py, tests/test_engine_*.py): the packed recipe,
a real `qwenrecipes run` of it, the rows of some bins, the losses of those rows run alone (in an engine env's
transformers), and the two proofs: the batches an engine's trainer hands its model are qwenrecipes' bins in order,
and each token's loss in a bin equals its loss with its row run alone (an all-ones-mask control must differ)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.data.packing import PackedRow, packed_row
from qwenrecipes.recipe.plan import Plan, plan_recipe

ROOT = Path(__file__).parent.parent
LOSSES_SCRIPT = Path(__file__).parent / "scripts" / "packed_losses.py"  # runs in any engine env with transformers
RUN_TIMEOUT_S = 1800  # one tiny run on a 2-core machine shared with other jobs


def packed_recipe(tmp_path: Path, **data: object) -> Path:
    """tests/recipes/parity.yaml on recipes/data/chat.jsonl with qwenrecipes' packing on (``data`` overrides)."""
    document = yaml.safe_load((ROOT / "tests" / "recipes" / "parity.yaml").read_text(encoding="utf-8"))
    document["data"]["train"]["path"] = str(ROOT / "recipes" / "data" / "chat.jsonl")
    document["data"].update({"packing": True, **data})
    path = tmp_path / "packed.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def packed_run_recipe(tmp_path: Path, **training: object) -> Path:
    """tests/test_packing.py's packed recipe (chat.jsonl, 256-token bins, train_on all, sdpa, micro-batch 4)."""
    recipe = packed_recipe(tmp_path, max_seq_length=256, train_on="all")
    document = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    document["training"].update(training)
    recipe.write_text(yaml.safe_dump(document), encoding="utf-8")
    return recipe


def run_packed(tmp_path: Path, engine: str, **training: object) -> tuple[Plan, Path]:
    """A real `qwenrecipes run` of the packed run recipe on ``engine`` (CPU): its plan and run dir."""
    recipe = packed_run_recipe(tmp_path, **training)
    plan = plan_recipe(recipe, target="cpu")
    assert plan.packing is not None and plan.bin_stream
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", "from qwenrecipes.cli import main; main()", "run", str(recipe),
                           "--engine", engine, "--run-dir", str(run_dir), "--target", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return plan, run_dir


def first_step_losses(tmp_path: Path, plan: Plan, engine: str) -> tuple[float, float]:
    """(token-weighted mean loss of the first step's bins' rows run one by one, the same with those bins run
    packed under an all-ones mask, i.e. rows attending across), with sdpa in ``engine``'s env (LoRA B = 0 at init:
    the base model's losses)."""
    from qwenrecipes.run.envs import env_for

    assert plan.packing is not None and plan.bin_stream
    bins = plan.bin_stream[:plan.effective_batch]
    flat = [packed_row(plan.packing.tokens, b) for b in bins]
    cases = {"bins": [{"input_ids": r.input_ids, "labels": r.labels, "seq_lengths": r.seq_lengths} for r in flat],
             "rows": member_rows(plan, bins)}
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    subprocess.run([str(env_for(engine).python), str(LOSSES_SCRIPT), str(tmp_path / "cases.json"), plan.model_path,
                    str(tmp_path / "losses.json")], check=True, timeout=900)
    losses = json.loads((tmp_path / "losses.json").read_text(encoding="utf-8"))["impls"]["sdpa"]
    alone = [v for row in losses["separate"] for v in row if v is not None]
    across = [v for v in losses["control"] if v is not None]
    return sum(alone) / len(alone), sum(across) / len(across)


def trainer_batches(tmp_path: Path, engine: str, script: Path) -> tuple[Plan, list[PackedRow], int, dict[str, Any]]:
    """Render the packed recipe for ``engine`` and run its batches ``script`` (tests/scripts/*_packed_batches.py) in
    the engine env on the folder, with the first micro-batch's rows: (plan, the bin stream, micro-batch size, the
    script's result per attention implementation)."""
    from qwenrecipes.engines import ENGINES
    from qwenrecipes.render.folder import render_plan, write_rendered
    from qwenrecipes.run.envs import env_for

    plan = plan_recipe(packed_run_recipe(tmp_path), target="cpu")
    assert plan.packing is not None and plan.bin_stream and plan.max_steps is not None
    folder = tmp_path / "out"
    write_rendered(plan, render_plan(plan, engine), folder)
    stream = [packed_row(plan.packing.tokens, b) for b in plan.bin_stream]
    micro = plan.recipe.training["micro_batch_size"]
    rows = {"rows": member_rows(plan, plan.bin_stream[:micro])}
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    env = env_for(engine)
    subprocess.run([str(env.python), str(script), str(tmp_path / "rows.json"), str(tmp_path / "got.json")],
                   cwd=folder, env=env.run_environment(ENGINES[engine].environment(plan)), check=True, timeout=900)
    result: dict[str, Any] = json.loads((tmp_path / "got.json").read_text(encoding="utf-8"))
    return plan, stream, micro, result


def member_rows(plan: Plan, bins: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """The rows of ``bins``, one by one, as the losses scripts run them alone."""
    tokens = plan.packing.tokens if plan.packing else ()
    return [{"input_ids": tokens[i].input_ids, "labels": tokens[i].labels} for b in bins for i in b]


def assert_flattened_batches(impl: str, batches: list[dict[str, Any]], stream: list[PackedRow], micro: int) -> None:
    """Every batch is the next ``micro`` bins of the stream flattened into one row (padding-free collators)."""
    for b, batch in enumerate(batches):
        want = stream[b * micro:(b + 1) * micro]
        assert batch["input_ids"] == [[t for r in want for t in r.input_ids]], (impl, b)
        assert batch["labels"] == [[t for r in want for t in r.labels]], (impl, b)
        assert batch["position_ids"] == [[t for r in want for t in r.position_ids]], (impl, b)


def assert_bins_side_by_side(impl: str, got: dict[str, Any], plan: Plan, stream: list[PackedRow],
                             micro: int) -> list[float]:
    """A batches script's result (tests/scripts/*_packed_batches.py) for collators that keep bins as rows: every batch
    is the next ``micro`` bins of the stream in order (so max_steps of them), position ids and no attention mask, each
    token's loss in the first batch equal to its row's alone, and an all-ones mask differs. Returns the first
    batch's trained tokens' losses (their mean is the step's loss)."""
    assert got["keys"] == ["input_ids", "labels", "position_ids"], impl
    assert got["max_steps"] == plan.max_steps == len(got["batches"]) == len(stream) // micro
    handed = [(b["input_ids"][r], b["labels"][r], b["position_ids"][r])
              for b in got["batches"] for r in range(len(b["input_ids"]))]
    for (ids, labels, positions), want in zip(handed, stream, strict=True):
        n = len(want.input_ids)
        assert (ids[:n], labels[:n], positions[:n]) == (want.input_ids, want.labels, want.position_ids), impl
        assert set(labels[n:]) <= {-100}  # padding is never trained
    separate = [t for row in got["separate"] for t in row]
    packed = [t for r, row in enumerate(got["packed"]) for t in row[:len(stream[r].input_ids)]]
    control = [t for r, row in enumerate(got["control"]) for t in row[:len(stream[r].input_ids)]]
    return assert_rows_kept_apart(impl, separate, packed, control)


def assert_each_row_alone(impl: str, got: dict[str, Any]) -> None:
    """The losses scripts' per-row form (``separate``: one list per row; ``packed`` / ``control``: the bins' tokens
    in order): each row in its bin has its losses alone, its first token unpredicted, and the control differs."""
    offset, compared, control_gap = 0, 0, 0.0
    for row_losses in got["separate"]:
        packed = got["packed"][offset:offset + len(row_losses)]
        control = got["control"][offset:offset + len(row_losses)]
        assert packed[0] is None  # the row's first token is never predicted from the previous row
        for t in range(1, len(row_losses)):
            assert (row_losses[t] is None) == (packed[t] is None), (impl, offset, t)
            if row_losses[t] is not None:
                assert packed[t] == pytest.approx(row_losses[t], rel=1e-4, abs=1e-4), (impl, offset, t)
                control_gap = max(control_gap, abs(control[t] - row_losses[t]))
                compared += 1
        offset += len(row_losses)
    assert offset == len(got["packed"]) and compared > 100
    assert control_gap > 1e-3, f"{impl}: the control (rows attending across) should differ"


def assert_rows_kept_apart(impl: str, separate: list[float | None], packed: list[float | None],
                           control: list[float | None]) -> list[float]:
    """Per-token losses in the bins equal those of the rows run alone; the control (rows attending across) does
    not. Returns the trained tokens' losses (their mean is the step's loss)."""
    assert len(separate) == len(packed) == len(control)
    values: list[float] = []
    control_gap = 0.0
    for alone, in_bin, across in zip(separate, packed, control, strict=True):
        assert (alone is None) == (in_bin is None), impl
        if alone is not None:
            assert in_bin == pytest.approx(alone, rel=1e-4, abs=1e-4), impl
            assert across is not None
            control_gap = max(control_gap, abs(across - alone))
            values.append(alone)
    assert len(values) > 500 and control_gap > 1e-2, (impl, len(values), control_gap)
    return values
