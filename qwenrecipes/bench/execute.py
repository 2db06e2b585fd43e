"""Executing a prepared bench point: the engine run through ``run.runner.execute`` (which owns the process, the log
and the normalized events) with the outside memory sampler, then the point's results row from the measured
metrics, the shim's memory line and the sanity verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qwenrecipes.bench.engine_specific import engine_distribution, engine_logged_memory_gib
from qwenrecipes.bench.launch import probe_versions
from qwenrecipes.bench.metrics import DEFAULT_PEAK_TFLOPS, ceiling_tokens_per_s, classify_status, finite, measure
from qwenrecipes.bench.prepare import PreparedPoint
from qwenrecipes.bench.sampler import MemorySampler
from qwenrecipes.bench.shim import PROFILE_MARK, memory_probe, shim_line
from qwenrecipes.recipe.memory import ModelDims, read_model_config
from qwenrecipes.run.events import Event, read_events
from qwenrecipes.run.rundir import EVENTS_FILE

OnMessage = Callable[[str], None]


def quiet(message: str) -> None:
    """Default progress callback: the library never prints."""


def execute_point(point: PreparedPoint, *, warmup: int, gpu: str, peak_tflops: float = DEFAULT_PEAK_TFLOPS,
                  stall_timeout: float = 600.0, on_message: OnMessage = quiet) -> dict[str, Any]:
    """Run one prepared point (unless preparation failed) and return its results row."""
    from qwenrecipes.run.runner import execute
    from qwenrecipes.run.spec import RunSpec

    row: dict[str, Any] = {
        "engine": point.engine, "label": point.label, "engine_version": None, "gpu": gpu, **point.info,
        "steps": point.total_steps, "warmup": warmup, "command": " ".join(point.argv),
        "run_dir": str(point.run_dir), "fairness": point.fairness,
    }
    config = read_model_config(point.info["model_path"])
    ceiling = None
    if config:
        try:
            dims = ModelDims.from_config(config)
            ceiling = ceiling_tokens_per_s(dims, int(point.info["seq_len"]), point.info["method"],
                                           bool(point.info["gradient_checkpointing"]), peak_tflops)
        except (KeyError, TypeError, ValueError):
            ceiling = None
    row["ceiling_tokens_per_s"] = round(ceiling, 1) if ceiling and gpu != "cpu" else None
    if point.error:
        row.update({"status": "failed", "error": point.error, "tokens_per_s": None, "step_time_p50": None,
                    "step_time_p95": None, "peak_vram_gb": None, "loss_first": None, "loss_last": None})
        return row
    versions = probe_versions(point.python, point.env, point.engine) or dict(point.versions)
    row["versions"] = versions
    row["engine_version"] = versions.get(engine_distribution(point.engine))
    sampler = MemorySampler() if gpu != "cpu" else None
    if sampler:
        sampler.start()
    spec = RunSpec(run_dir=point.run_dir, engine=point.engine, argv=point.argv, env=point.env,
                   output_dir=point.output_dir, logging_steps=1, total_steps=point.total_steps,
                   recipe_name=f"bench-{point.label}", versions=versions, stall_timeout=stall_timeout)
    harness_cpu0 = time.process_time()
    started = time.perf_counter()

    cpu_at_step: dict[int, float] = {}

    def forward(event: Event) -> None:
        if event.get("type") == "train":
            if isinstance(event.get("step"), int):
                cpu_at_step[event["step"]] = time.process_time() + (sampler.cpu_seconds if sampler else 0.0)
            on_message(f"  {point.engine}/{point.label} step {event.get('step')} loss={event.get('loss')}")

    try:
        result = execute(spec, on_event=forward)
        run_status, summary = result.status, result.summary
    except Exception as exc:  # the runner could not even start the engine: still a row
        run_status, summary = "failed", {"error": {"text": f"{type(exc).__name__}: {exc}"}}
    wall = time.perf_counter() - started
    harness_cpu = time.process_time() - harness_cpu0
    if sampler:
        sampler.stop()
    events = read_events(point.run_dir / EVENTS_FILE)
    metrics = measure(events, point.tokens_per_step, point.supervised_per_step, warmup=warmup)
    probe = memory_probe(events)
    error = summary.get("error") or {}
    error_text = "\n".join(str(error.get(k) or "") for k in ("reason", "text"))
    status, reasons = classify_status(run_status, error_text, metrics, ceiling if gpu != "cpu" else None)
    torch_gib = probe.get("max_allocated_gib") if probe else None
    logged_gib = engine_logged_memory_gib(metrics)
    nvml_gib = sampler.peak_mib / 1024 if sampler and sampler.peak_mib is not None else None
    # Some engines reset torch's peak counters mid-run (per logging step), so the exit hook alone can
    # under-report: take the larger of the two in-process torch figures, NVML only when neither exists.
    in_process = [v for v in (torch_gib, logged_gib) if v is not None]
    peak = max(in_process) if in_process else nvml_gib
    row.update({k: v for k, v in metrics.items() if k not in ("loss_curve",)})
    row.update({
        "status": status,
        "status_reasons": reasons,
        "peak_vram_gb": round(peak, 2) if peak is not None else None,
        "peak_vram_source": ("torch max_allocated, engine log (GiB)" if in_process and peak == logged_gib else
                             "torch max_allocated, exit hook (GiB)" if in_process else
                             "NVML whole GPU (GiB)" if nvml_gib is not None else None),
        "peak_vram_torch_allocated_gib": round(max(in_process), 2) if in_process else None,
        "peak_vram_exit_hook_gib": round(torch_gib, 2) if torch_gib is not None else None,
        "peak_vram_torch_reserved_gib": round(probe["max_reserved_gib"], 2) if probe and finite(
            probe.get("max_reserved_gib")) else None,
        "peak_vram_nvml_gib": round(nvml_gib, 2) if nvml_gib is not None else None,
        "nvml_baseline_gib": round(sampler.baseline_mib / 1024, 2) if sampler and sampler.baseline_mib else None,
        "memory_sampler": (f"{sampler.source}, {sampler.samples} samples every {sampler.interval}s" if sampler
                           else None),
        "memory_cap_gb": probe.get("cap_gb") if probe else None,
        "wall_s": round(wall, 1),
        "harness_cpu_s": round(harness_cpu + (sampler.cpu_seconds if sampler else 0.0), 3),
        "loss_curve": metrics.get("loss_curve"),
        "error": error_text.strip()[-2000:] or None if status != "ok" else None,
        "loss_meaningful": not (config and "qwenrecipes_random_init" in config),
    })
    profile = shim_line(events, PROFILE_MARK)
    if profile:
        # Traced steps run slower (profiler overhead): such a row's throughput is not a speed claim.
        row["kernel_profile"] = profile
    if ceiling and gpu != "cpu" and finite(row.get("tokens_per_s")):
        row["ceiling_fraction"] = round(row["tokens_per_s"] / ceiling, 3)
    last_step = max(cpu_at_step) if cpu_at_step else None
    if row.get("window_s") and last_step is not None and warmup in cpu_at_step:
        # The harness's own CPU time (pipe reading, parsing, event writing, memory sampling) inside the measured
        # window, against the window's wall time: an upper bound on what it can take from the engine's steps
        # (it runs in another process, on other cores; the engine only pays for writing its log line).
        row["harness_overhead_fraction"] = round((cpu_at_step[last_step] - cpu_at_step[warmup]) / row["window_s"], 5)
    return row
