"""`qwenrecipes bench`: run engines in turn on the same recipe and the same tokens, and compare them.

Fairness rules the code enforces (each one is written into every result row's ``fairness`` notes):

* Every engine gets the same plan: qwenrecipes prepares, filters and orders the rows itself (plan.train_stream),
  so step k of every engine consumes the same rows. The bench forces ``max_steps``, ``logging_steps: 1`` (one
  timestamped log line per optimizer step; the loss ``.item()`` behind it syncs the GPU, so the line's arrival
  time is the step's end), no checkpoints and no eval.
* Tokens are counted here, with the real Qwen3 tokenizer, from the rows each optimizer step consumes: the
  non-padding input tokens (``tokens_per_s``) and the supervised label tokens (``supervised_tokens_per_s``).
  Engine counters are only a cross-check (one engine counts trainable tokens, another inputs incl. padding).
* The first ``warmup`` steps (Triton JIT, autotune, allocator growth) are excluded; tokens/s is the measured
  window's tokens over its wall time, p50/p95 are per-step times inside it.
* Peak memory comes from two sources: torch's own counters inside the engine process (an ``atexit`` hook put on
  the engine's PYTHONPATH as ``sitecustomize``; an engine may also log max_allocated) and an outside NVML /
  nvidia-smi sampler thread (whole GPU, CUDA context and allocator cache included).
* A gradient norm of exactly 0, a NaN/inf loss, or a throughput above the physical ceiling (the bf16 matrix
  rate over the model's FLOPs per token) means the measurement is wrong: the row is reported as ``failed``.

Layering: ``inputs`` (overrides, random model, synthetic data), ``prepare.prepare_point`` (plan + render + token
counts, CPU only), ``execute.execute_point`` (engine run through ``run.runner.execute``, which owns the process,
the log and the normalized events), ``metrics.measure`` (pure: events -> metrics), ``report.write_report``
(results.json, report.md, PNG plots); engine-specific lines live in ``engine_specific``. Library code: no
printing, no exit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.bench.execute import OnMessage, execute_point, quiet
from qwenrecipes.bench.inputs import has_weights, materialize_weights, prepare_random_model, synthetic_data
from qwenrecipes.bench.launch import Launcher
from qwenrecipes.bench.metrics import DEFAULT_PEAK_TFLOPS
from qwenrecipes.bench.prepare import prepare_point
from qwenrecipes.bench.report import load_rows, merge_rows, write_report, write_results
from qwenrecipes.bench.sampler import gpu_name
from qwenrecipes.bench.shim import write_shim
from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import QwenRecipesError

DEFAULT_STEPS = 15
DEFAULT_WARMUP = 4


@dataclass(frozen=True)
class BenchOptions:
    """What `qwenrecipes bench` was asked to run: engines, steps, overrides, model, data, launcher, limits."""

    engines: tuple[str, ...]
    out_dir: Path
    steps: int = DEFAULT_STEPS
    warmup: int = DEFAULT_WARMUP
    label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    launcher: Launcher = field(default_factory=Launcher)
    model: str | None = None  # "random:qwen3-4b" or a folder; overrides model.name_or_path
    synthetic_data: str | None = None  # "96x2048"; overrides data.train.path
    memory_cap_gb: float | None = None
    config_patches: dict[str, Any] = field(default_factory=dict)
    peak_tflops: float = DEFAULT_PEAK_TFLOPS
    append: bool = True
    stall_timeout: float = 600.0


def _default_label(options: BenchOptions, recipe_path: Path) -> str:
    if options.label:
        return options.label
    parts = [recipe_path.stem]
    for key, value in sorted(options.overrides.items()):
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))[:80]


def run_bench(recipe_path: str | Path, options: BenchOptions, on_message: OnMessage = quiet) -> list[dict[str, Any]]:
    """Run every engine in turn on one recipe (+ overrides) and write results.json, report.md and plots."""
    from qwenrecipes.paths import qwenrecipes_home

    recipe_path = Path(recipe_path)
    if options.warmup < 1 or options.steps < options.warmup + 2:
        raise QwenRecipesError(f"--steps {options.steps} with --warmup {options.warmup}: need warmup >= 1 and at "
                               "least 2 measured steps after it")
    unknown = [e for e in options.engines if e not in ENGINES]
    if unknown:
        raise QwenRecipesError(f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(ENGINES)}")
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(options.overrides)
    if options.model:
        if options.model.startswith("random:"):
            model_dir = prepare_random_model(options.model, qwenrecipes_home() / "models")
        else:
            model_dir = Path(options.model).expanduser()
        overrides["model.name_or_path"] = str(model_dir.resolve())
    if options.synthetic_data:
        overrides["data.train.path"] = str(synthetic_data(options.synthetic_data, out_dir).resolve())
        overrides.setdefault("data.train.format", "messages")
    label = _default_label(options, recipe_path)
    shim = write_shim(out_dir)
    gpu = gpu_name() if options.target != "cpu" else "cpu"
    rows: list[dict[str, Any]] = []
    for engine in options.engines:
        on_message(f"{engine}/{label}: preparing")
        point = prepare_point(recipe_path, engine, label, out_dir, overrides=overrides, steps=options.steps,
                              target=options.target, launcher=options.launcher, shim=shim,
                              memory_cap_gb=options.memory_cap_gb, config_patches=options.config_patches or None)
        model_dir = Path(point.info["model_path"])
        if point.error is None and model_dir.is_dir() and not has_weights(model_dir):
            on_message(f"{engine}/{label}: random-initialising the weights of {model_dir} (once per machine)")
            env = {k: v for k, v in point.env.items() if k != "QWENRECIPES_BENCH_MEMORY_CAP_GB"}
            on_message(materialize_weights(model_dir, point.python, env))
        on_message(f"{engine}/{label}: running {' '.join(point.argv) or '(not runnable)'}")
        row = execute_point(point, warmup=options.warmup, gpu=gpu, peak_tflops=options.peak_tflops,
                            stall_timeout=options.stall_timeout, on_message=on_message)
        row["launcher"] = options.launcher.describe()
        rows.append(row)
        on_message(f"{engine}/{label}: {row['status']} tokens/s={row.get('tokens_per_s')} "
                   f"p50={row.get('step_time_p50')} peak={row.get('peak_vram_gb')} GiB")
        # Write after each engine so a later crash (or the device's time limit) loses nothing already measured.
        write_results(out_dir, merge_rows(load_rows(out_dir), rows) if options.append else rows)
    all_rows = merge_rows(load_rows(out_dir), rows) if options.append else rows
    write_report(out_dir, all_rows)
    return rows
