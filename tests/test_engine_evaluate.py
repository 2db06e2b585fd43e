"""Real runs: TRL trains the tiny model (a few steps), then `qwenrecipes eval` scores it against its base in the
trl env, lm-evaluation-harness runs a local task on base + adapter, and a 2-point sweep runs and resumes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from qwenrecipes.evaluate.sweep import absolutize
from qwenrecipes.recipe.load import load_recipe_document
from qwenrecipes.run.envs import env_for
from tests.conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.engine
LOCAL_TASKS = REPO / "tests" / "fixtures" / "lm_eval"


def _needs_trl() -> None:
    try:
        env_for("trl")
    except Exception as exc:  # any reason the env is unusable is a reason to skip
        pytest.skip(f"trl env not installed: {exc}")


def tiny_recipe(folder: Path, steps: int) -> Path:
    """tiny-cpu with a held-out split, a few steps and no intermediate checkpoints."""
    document = copy.deepcopy(absolutize(load_recipe_document(TINY), TINY))
    document["data"]["val_fraction"] = 0.1
    document["training"].update(max_steps=steps, warmup_steps=1, save_steps=None)
    path = folder / "tiny-eval.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _needs_trl()
    from qwenrecipes.run.runner import run_recipe

    folder = tmp_path_factory.mktemp("eval")
    result = run_recipe(tiny_recipe(folder, 6), "trl", run_dir=folder / "runs" / "tiny-trl", target="cpu")
    assert result.status == "ok", result.summary
    return result.run_dir


def test_eval_scores_the_run_against_its_base(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["eval", str(trained), "--samples", "2", "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    document = json.loads((trained / "eval.json").read_text(encoding="utf-8"))
    base, run = document["models"]
    assert base["name"] == "base" and base["run_dir"] is None and run["engine"] == "trl"
    # The same tokens and mask for both: identical trained-token counts, one loss per held-out row.
    assert base["tokens"] == run["tokens"] == document["heldout"]["tokens"] > 0
    assert len(base["row_losses"]) == len(run["row_losses"]) == document["heldout"]["rows"] == 30
    assert run["loss"] < base["loss"], "6 steps at lr 1e-3 must lower the held-out loss of a random model"
    assert len(run["generations"]) == 2 and all(g["prompt"].endswith("<|im_start|>assistant\n")
                                                for g in run["generations"])
    report = (trained / "report.md").read_text(encoding="utf-8")
    assert "per-sample change" in report and "Greedy generations" in report
    assert (trained / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "perplexity" in out and "base" in out

    code, out, err = run_cli(["compare", str(trained), "-o", str(trained / "compare.png")], capsys)
    assert code == 0, err
    assert "held-out loss" in out and f"{run['loss']:.4f}" in out


def test_lm_eval_local_task_on_base_and_adapter(trained: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "bench"
    code, _out, err = run_cli(["eval", str(trained), "--samples", "0", "--tasks", "qr_tiny_mc,qr_tiny_gen",
                              "--include-path", str(LOCAL_TASKS), "--limit", "3", "-o", str(out_dir)], capsys)
    assert code == 0, err
    benchmarks = json.loads((out_dir / "eval.json").read_text(encoding="utf-8"))["benchmarks"]
    assert benchmarks["lm_eval"] == "0.4.13"
    for name in ("base", "tiny-trl"):
        results = benchmarks["models"][name]["results"]
        assert 0.0 <= results["qr_tiny_mc"]["acc,none"] <= 1.0
        assert "exact_match,none" in results["qr_tiny_gen"]
    assert "qr_tiny_mc" in (out_dir / "report.md").read_text(encoding="utf-8")


def test_two_point_sweep_runs_scores_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_trl()
    recipe, out_dir = tiny_recipe(tmp_path, 3), tmp_path / "sweep"
    args = ["sweep", str(recipe), "-e", "trl", "--grid", "training.learning_rate=1e-4,1e-3", "-o", str(out_dir)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "best: learning_rate=" in out
    state = json.loads((out_dir / "sweep.json").read_text(encoding="utf-8"))
    points = list(state["points"].values())
    assert [p["status"] for p in points] == ["done", "done"]
    assert all(isinstance(p["loss"], float) for p in points)
    best = min(points, key=lambda p: p["loss"])
    best_recipe = yaml.safe_load((out_dir / "best.yaml").read_text(encoding="utf-8"))
    assert best_recipe["training"]["learning_rate"] == best["overrides"]["training.learning_rate"]
    assert (out_dir / "sweep.png").is_file() and "| done |" in (out_dir / "sweep.md").read_text(encoding="utf-8")
    events = [Path(p["run_dir"]) / "events.jsonl" for p in points]
    stamps = [e.stat().st_mtime_ns for e in events]

    # Rerunning the same command resumes: every point is done, nothing trains again.
    code, _out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "2 of 2 points already done" in err
    assert [e.stat().st_mtime_ns for e in events] == stamps


def test_optuna_search_one_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_trl()
    pytest.importorskip("optuna")
    out_dir = tmp_path / "search"
    code, out, err = run_cli(["sweep", str(tiny_recipe(tmp_path, 2)), "-e", "trl", "--search", "optuna",
                              "--trials", "1", "--param", "method.lora.r=4:8", "-o", str(out_dir)], capsys)
    assert code == 0, err
    (point,) = json.loads((out_dir / "sweep.json").read_text(encoding="utf-8"))["points"].values()
    assert point["status"] == "done" and 4 <= point["overrides"]["method.lora.r"] <= 8
    assert (out_dir / "optuna.db").is_file() and (out_dir / "best.yaml").is_file() and "best: r=" in out
