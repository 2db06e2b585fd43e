"""`qwenrecipes bench`: the harness end to end on CPU.

* The engine test runs the real TRL engine (its qwenrecipes env) on the tiny model: results.json complete,
  report.md and the three plots written. Marked `engine`; skipped when the TRL env is not installed.
* The other tests drive the same prepare -> execute -> report path with a fake engine process that prints
  HF-style log lines, so the timing, token counting and sanity rules are checked in every CI run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qwenrecipes.bench.execute import execute_point
from qwenrecipes.bench.inputs import parse_overrides
from qwenrecipes.bench.launch import Launcher, host_argv
from qwenrecipes.bench.metrics import ceiling_tokens_per_s, classify_status, measure
from qwenrecipes.bench.prepare import PreparedPoint, prepare_point
from qwenrecipes.bench.report import ROW_FIELDS, write_report
from qwenrecipes.bench.runner import BenchOptions, run_bench
from qwenrecipes.bench.shim import write_shim
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.memory import ModelDims

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny-cpu.yaml"

FAKE_ENGINE = r'''
import json, sys, time
mode = sys.argv[1]
steps = int(sys.argv[2])
for step in range(1, steps + 1):
    time.sleep(0.05)
    loss = float("nan") if mode == "nan" and step == 3 else 2.0 - 0.05 * step
    grad = 0.0 if mode == "zero-grad" else 1.5
    print(str({"loss": f"{loss}", "grad_norm": grad, "learning_rate": 1e-4, "epoch": step / steps}), flush=True)
if mode == "oom":
    print("Traceback (most recent call last):", flush=True)
    print('  File "train.py", line 1, in <module>', flush=True)
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(1)
print(str({"train_runtime": 1.0, "train_samples_per_second": 1.0, "train_steps_per_second": 1.0,
           "train_loss": 1.0}), flush=True)
'''


def _fake_point(tmp_path: Path, mode: str, steps: int = 8) -> PreparedPoint:
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE, encoding="utf-8")
    shim = write_shim(tmp_path)
    point = prepare_point(TINY_RECIPE, "trl", f"fake-{mode}", tmp_path, overrides={}, steps=steps, target="cpu",
                          launcher=Launcher(mode="host", python=sys.executable), shim=shim)
    assert point.error is None, point.error
    point.argv = [sys.executable, str(script), mode, str(steps)]
    return point


def test_parse_overrides() -> None:
    assert parse_overrides(["training.micro_batch_size=8", "training.gradient_checkpointing=false",
                            "model.attn=sdpa"]) == {"training.micro_batch_size": 8,
                                                    "training.gradient_checkpointing": False, "model.attn": "sdpa"}
    with pytest.raises(QwenRecipesError):
        parse_overrides(["micro_batch_size"])


def test_ceiling_matches_the_issue() -> None:
    """790 TFLOP/s over Qwen3-4B's FLOPs per token: ~43.6k tok/s LoRA without checkpointing, ~30.3k with."""
    from qwenrecipes.data.tiny import QWEN3_PRESETS, qwen3_config

    dims = ModelDims.from_config(qwen3_config(QWEN3_PRESETS["qwen3-4b"], dtype="bfloat16"))
    assert 42_000 < ceiling_tokens_per_s(dims, 2048, "lora", False) < 46_000
    assert 29_000 < ceiling_tokens_per_s(dims, 2048, "lora", True) < 32_000


def test_measure_window_and_percentiles() -> None:
    events = [{"type": "train", "step": s, "t": 100.0 + s * 0.5 + (1.5 if s == 1 else 0.0), "loss": 2.0,
               "grad_norm": 1.0} for s in range(1, 11)]
    metrics = measure(events, [1000] * 10, [900] * 10, warmup=4)
    assert metrics["steps_measured"] == "5..10"
    assert metrics["tokens_per_s"] == pytest.approx(6000 / 3.0)
    assert metrics["supervised_tokens_per_s"] == pytest.approx(5400 / 3.0)
    assert metrics["step_time_p50"] == pytest.approx(0.5)
    status, reasons = classify_status("ok", "", metrics, ceiling=1_000.0)
    assert status == "failed" and "ceiling" in reasons[0]


def test_measure_with_sparse_logging() -> None:
    """logging_steps 5 (no per-step loss sync): unlogged steps still count their tokens, intervals their time."""
    events = [{"type": "train", "step": s, "t": 100.0 + s * 0.4, "loss": 2.0, "grad_norm": 1.0}
              for s in range(5, 26, 5)]
    metrics = measure(events, [1000] * 25, [900] * 25, warmup=5)
    assert metrics["steps_measured"] == "6..25"
    assert metrics["tokens_per_s"] == pytest.approx(20_000 / 8.0)
    assert metrics["step_time_p50"] == pytest.approx(0.4)
    assert metrics["tokens_per_step"] == pytest.approx(1000)


def test_fake_engine_end_to_end(tmp_path: Path) -> None:
    rows = [execute_point(_fake_point(tmp_path, mode), warmup=2, gpu="cpu")
            for mode in ("ok", "nan", "zero-grad", "oom")]
    by_label = {r["label"]: r for r in rows}
    ok = by_label["fake-ok"]
    assert ok["status"] == "ok", ok.get("status_reasons")
    assert ok["steps_measured"] == "3..8"
    # tiny-cpu: micro-batch 4 x accumulation 1; every step's tokens were counted by qwenrecipes.
    assert ok["tokens_per_step"] > 0 and ok["tokens_per_s"] > 0
    assert 0.03 < ok["step_time_p50"] < 0.5
    assert ok["loss_first"] == pytest.approx(1.95) and ok["loss_last"] == pytest.approx(1.6)
    assert by_label["fake-nan"]["status"] == "failed"
    assert by_label["fake-zero-grad"]["status"] == "failed"
    assert by_label["fake-oom"]["status"] == "oom"
    paths = write_report(tmp_path / "report", rows)
    document = json.loads(paths["results"].read_text())
    for row in document["rows"]:
        for name in ROW_FIELDS:
            assert name in row, name
    text = paths["report"].read_text()
    assert "fake-ok" in text and "Winners" in text
    for name in ("throughput", "loss"):
        assert paths[name].stat().st_size > 1000
    # CPU: no GPU memory was measured, so no empty memory plot and no "least memory" winner at 0.0 GiB.
    assert "memory" not in paths and not (tmp_path / "report" / "memory.png").exists()
    assert "least memory" not in text and "GPU memory not measured (CPU run)" in text
    gpu_rows = [{**r, "peak_vram_gb": 3.5 + i} for i, r in enumerate(rows)]
    paths = write_report(tmp_path / "gpu-report", gpu_rows)
    assert paths["memory"].stat().st_size > 1000
    assert "(3.5 GiB)" in paths["report"].read_text().split("least memory")[1]


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(QwenRecipesError):
        run_bench(TINY_RECIPE, BenchOptions(engines=("nope",), out_dir=tmp_path))


def _trl_env_installed() -> bool:
    from qwenrecipes.run import envs

    try:
        envs.env_for("trl")
    except Exception:
        return False
    return True


@pytest.mark.engine
@pytest.mark.skipif(not _trl_env_installed(), reason="the trl engine env is not installed "
                                                      "(qwenrecipes env install trl)")
def test_bench_tiny_trl_cpu(tmp_path: Path) -> None:
    """The real harness on the real TRL engine, tiny model, CPU: the CI proof that `bench` works end to end."""
    from click.testing import CliRunner

    from qwenrecipes.cli.bench import bench as bench_command

    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_command, [str(TINY_RECIPE), "--engines", "trl", "--steps", "8", "--warmup",
                                                "2", "--target", "cpu", "-o", str(out), "--label", "tiny-cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    (row,) = document["rows"]
    assert row["status"] == "ok", (row.get("status_reasons"), row.get("error"))
    for name in ROW_FIELDS:
        assert name in row, name
    assert row["engine_version"] and row["tokens_per_s"] > 0 and row["step_time_p95"] >= row["step_time_p50"]
    assert row["loss_first"] is not None and row["loss_last"] is not None
    assert (out / "report.md").is_file()
    for name in ("throughput.png", "loss.png"):
        assert (out / name).stat().st_size > 1000
    assert not (out / "memory.png").exists()  # a CPU run measures no GPU memory


def test_host_argv_rewrites_a_chained_engine_command() -> None:
    """LLaMA-Factory's token handoff runs `python load_tokens.py llamafactory-cli train ...` (the script execs the
    rest): with a bundle on the host interpreter, the console script in the tail needs its module form too (an
    offline bundle has no console scripts; device call 11 failed on it)."""
    from qwenrecipes.engines import ENGINES
    from qwenrecipes.recipe.plan import plan_recipe

    plan = plan_recipe(Path(__file__).parent.parent / "recipes" / "tiny-cpu.yaml", target="cpu")
    command = ENGINES["llamafactory"].command(plan)
    assert command[:3] == ["python", "load_tokens.py", "llamafactory-cli"]
    assert host_argv(command, "/host/python3") == [
        "/host/python3", "load_tokens.py", "/host/python3", "-m", "llamafactory.cli", *command[3:]]
    assert host_argv(["python", "train_trl.py", "--config", "x.yaml"], "/p") == ["/p", "train_trl.py", "--config",
                                                                               "x.yaml"]
