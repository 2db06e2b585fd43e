"""Preparing a bench point, CPU only: plan the recipe with the bench's forced settings, render it for one engine,
count each optimizer step's tokens with the real Qwen3 tokenizer, and build the engine's command and environment."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qwenrecipes.bench.engine_specific import BASELINE_ENGINE
from qwenrecipes.bench.inputs import apply_overrides, model_label
from qwenrecipes.bench.launch import Launcher, host_argv, launch_environment
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.memory import read_model_config


@dataclass
class PreparedPoint:
    """One engine x one setting, rendered and counted, ready to execute."""

    engine: str
    label: str
    run_dir: Path
    argv: list[str]
    env: dict[str, str]
    python: str
    versions: dict[str, str]
    output_dir: Path
    total_steps: int
    tokens_per_step: list[int]  # non-padding input tokens of each optimizer step (1-based step k -> [k-1])
    supervised_per_step: list[int]  # label (trained) tokens of each step
    info: dict[str, Any]  # recipe-derived row fields (model, method, seq_len, ...)
    fairness: list[str] = field(default_factory=list)
    error: str | None = None  # preparation failed (e.g. a renderer refused): the row still gets written


def step_token_counts(stream: list[list[dict[str, str]]], per_step: int, steps: int) -> tuple[list[int], list[int]]:
    """Input and supervised token counts of each optimizer step, from the rows in training order.
    Input = the plain ChatML text every engine is pinned to; supervised = assistant content + <|im_end|>
    (train_on: assistant). Counted with the real Qwen3 tokenizer, never with an engine's counter."""
    from qwenrecipes.data.prepare import chatml_text, token_lengths

    needed = stream[: per_step * steps]
    if len(needed) < per_step * steps:
        raise QwenRecipesError(f"the data holds {len(stream)} rows in training order, fewer than the "
                               f"{per_step * steps} that {steps} steps of {per_step} need")
    inputs = token_lengths([chatml_text(row) for row in needed])
    assistant_texts: list[str] = []
    owners: list[int] = []
    for index, row in enumerate(needed):
        for message in row:
            if message["role"] == "assistant":
                assistant_texts.append(message["content"] + "<|im_end|>")
                owners.append(index)
    supervised_rows = [0] * len(needed)
    for owner, count in zip(owners, token_lengths(assistant_texts), strict=True):
        supervised_rows[owner] += count
    per_input = [sum(inputs[k * per_step:(k + 1) * per_step]) for k in range(steps)]
    per_supervised = [sum(supervised_rows[k * per_step:(k + 1) * per_step]) for k in range(steps)]
    return per_input, per_supervised


def packed_step_counts(plan: Any, steps: int) -> tuple[list[int], list[int], float]:
    """Packed plans: input and supervised tokens of each step's bins (labels as handed to the engines, each
    row's first token unlabelled), and the padding share, 0 for the padding-free path the bins take."""
    from qwenrecipes.data.packing import packed_row

    per_step, bins = plan.effective_batch, plan.bin_stream or []
    if len(bins) < per_step * steps:
        raise QwenRecipesError(f"the data packs into {len(bins)} bins in training order, fewer than the "
                               f"{per_step * steps} that {steps} steps of {per_step} need")
    rows = [packed_row(plan.packing.tokens, members) for members in bins[:per_step * steps]]
    inputs = [len(r.input_ids) for r in rows]
    trained = [sum(1 for label in r.labels if label != -100) for r in rows]
    return ([sum(inputs[k * per_step:(k + 1) * per_step]) for k in range(steps)],
            [sum(trained[k * per_step:(k + 1) * per_step]) for k in range(steps)], 0.0)


def unpacked_padding(rows: list[list[dict[str, str]]], micro_batch: int) -> float:
    """Padding share of unpacked training: each micro-batch padded to its longest row (dynamic padding)."""
    from qwenrecipes.data.packing import padding_fraction
    from qwenrecipes.data.prepare import chatml_text, token_lengths

    return round(padding_fraction(token_lengths([chatml_text(row) for row in rows]), micro_batch), 4)


BENCH_FORCED: dict[str, Any] = {
    "training.logging_steps": 1,
    "training.save_steps": None,
    "training.eval_steps": None,
    "data.val_fraction": 0.0,
    "data.eval": None,
}

FAIRNESS_COMMON = [
    "same rows in the same order for every engine (qwenrecipes prepares and orders the data; engines read it "
    "sequentially)",
    "tokens counted by qwenrecipes with the Qwen3 tokenizer from each step's rows, not by the engine",
    "logging every step (the loss .item() syncs the GPU each step in every engine alike); no checkpoints, no eval",
    "warm-up steps excluded from tokens/s and step-time percentiles",
]


def patch_main_config(run_dir: Path, engine: str, patches: dict[str, Any]) -> None:
    """Tuning experiments only: set top-level keys of the engine's rendered YAML config (what a renderer change
    would do), so a setting can be measured before the renderer learns it. Rows record the patches."""
    from qwenrecipes.render.folder import get_engine

    main = run_dir / get_engine(engine).main_file
    if main.suffix not in (".yaml", ".yml"):
        raise QwenRecipesError(f"--patch-config works on YAML configs; {engine}'s main file is {main.name}")
    document = yaml.safe_load(main.read_text(encoding="utf-8")) or {}
    document.update(patches)
    main.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")


def prepare_point(recipe_path: Path, engine: str, label: str, out_dir: Path, *, overrides: dict[str, Any],
                  steps: int, target: str | None, launcher: Launcher, shim: Path,
                  memory_cap_gb: float | None = None, config_patches: dict[str, Any] | None = None) -> PreparedPoint:
    """Plan the recipe with the bench's forced settings, render it for ``engine`` into out_dir/runs/<engine>-<label>
    and count each step's tokens. A renderer or plan failure is kept as ``error`` so the row still appears."""
    from qwenrecipes.engines.base import HF_OFFLINE
    from qwenrecipes.recipe.load import build_recipe, load_recipe_document
    from qwenrecipes.recipe.plan import make_plan
    from qwenrecipes.render.folder import render_plan, write_rendered
    from qwenrecipes.render.resolve import resolve_for_engine

    run_dir = out_dir / "runs" / f"{engine}-{label}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    document = apply_overrides(load_recipe_document(recipe_path),
                               {**overrides, **BENCH_FORCED, "training.max_steps": steps,
                                # the one forced value a tuning run may change: logging every k steps measures what
                                # the per-step loss sync itself costs (timing then needs `warmup` divisible by k)
                                "training.logging_steps": overrides.get("training.logging_steps", 1)})
    recipe = build_recipe(document, recipe_path.resolve())
    plan = make_plan(recipe, target=target)
    config = read_model_config(plan.model_path)
    # The settings this engine really gets (auto checkpointing/Liger, a micro-batch split to fit the GPU).
    try:
        resolved = resolve_for_engine(plan, engine)
    except QwenRecipesError:
        resolved = plan  # render_plan below raises the same error, recorded on the row
    training = resolved.recipe.training
    info = {
        "model": model_label(config, plan.model_path),
        "model_path": plan.model_path,
        "method": recipe.method["type"],
        "seq_len": recipe.data["max_seq_length"],
        "micro_batch": training["micro_batch_size"],
        "grad_accum": training["gradient_accumulation_steps"],
        "gradient_checkpointing": training["gradient_checkpointing"] is True,
        "precision": plan.precision,
        "attn": recipe.model["attn"],
        "liger_kernel": training["liger_kernel"] is True,
        "packing": bool(recipe.data["packing"]),
        "lora_r": recipe.lora["r"] if recipe.uses_adapter else None,
        "optimizer": training["optimizer"],
        "overrides": overrides,
        "recipe": str(recipe_path),
        "memory": resolved.memory,
    }
    per_step = plan.effective_batch
    if plan.packing is not None:  # a step is effective_batch bins (data/packing.py)
        tokens, supervised, info["padding_fraction"] = packed_step_counts(plan, steps)
        info["bin_fill_pct"] = plan.packing.summary()["mean_fill_pct"]
    else:
        stream = plan.train_stream or []
        tokens, supervised = step_token_counts(stream, per_step, steps)
        info["padding_fraction"] = unpacked_padding(stream[:per_step * steps], training["micro_batch_size"])
    fairness = list(FAIRNESS_COMMON)
    try:
        rendered = render_plan(resolved, engine)  # resolved once: render_plan keeps an already resolved plan
        write_rendered(resolved, rendered, run_dir)
        if config_patches:
            patch_main_config(run_dir, engine, config_patches)
            info["config_patches"] = config_patches
            fairness.append(f"rendered {engine} config patched by the bench (not what qwenrecipes renders): "
                            + ", ".join(f"{k}={v}" for k, v in config_patches.items()))
    except Exception as exc:  # a renderer that is not there yet, or refuses the recipe: keep the row
        return PreparedPoint(engine, label, run_dir, [], {}, launcher.python, {}, run_dir, steps, tokens, supervised,
                             info, fairness, error=f"render failed: {type(exc).__name__}: {exc}")
    extra = dict(rendered.environment)
    if Path(plan.model_path).is_absolute():
        # The model and data are local: nothing to fetch, and an air-gapped host would only time out probing.
        extra.update(HF_OFFLINE)
    extra.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        env, python, versions = launch_environment(launcher, engine, extra, shim, memory_cap_gb)
    except Exception as exc:
        return PreparedPoint(engine, label, run_dir, list(rendered.argv), {}, launcher.python, {}, run_dir, steps,
                             tokens, supervised, info, fairness, error=f"engine environment: {exc}")
    argv = list(rendered.argv)
    if launcher.mode == "host":
        try:
            argv = host_argv(argv, python)
        except QwenRecipesError as exc:
            return PreparedPoint(engine, label, run_dir, argv, env, python, versions, run_dir, steps, tokens,
                                 supervised, info, fairness, error=str(exc))
    if engine != BASELINE_ENGINE:
        fairness.append(f"{engine} applies its own kernels/patches where its rendered config enables them "
                        "(that is what is being compared)")
    return PreparedPoint(engine, label, run_dir, argv, env, python, versions, run_dir / recipe.output["dir"], steps,
                         tokens, supervised, info, fairness)
