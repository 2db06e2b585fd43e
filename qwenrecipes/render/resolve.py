"""Per-engine resolution of the memory-dependent settings: ``auto`` checkpointing and Liger, and a micro-batch
that fits the GPU. Every path renders through ``render.render_plan``, which calls ``resolve_for_engine``, so the
engine modules only ever read concrete values. The effective batch (and so the training maths) never changes:
a micro-batch that does not fit is split and gradient accumulation grows by the same factor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import Problem, QwenRecipesError, RecipeError
from qwenrecipes.recipe import memory
from qwenrecipes.recipe.plan import Plan


def _liger(plan: Plan, engine: str) -> tuple[bool, str]:
    requested = plan.recipe.training["liger_kernel"]
    if requested != "auto":
        return bool(requested), f"liger_kernel: {str(requested).lower()} in the recipe"
    method = plan.recipe.method["type"]
    if plan.target != "cuda":
        return False, "auto: off on CPU (Liger is Triton code)"
    if plan.precision not in ("bf16", "fp16"):
        return False, f"auto: off with {plan.precision} training"
    if method == "qlora":
        return False, "auto: off with qlora (Liger fails on 4-bit weights in several engines)"
    if not ENGINES[engine].supports_liger:  # its notes say why (no liger-kernel in its env); else its own kernels
        reason = ENGINES[engine].notes.get("liger_kernel", f"{engine} fuses the same ops with its own kernels")
        return False, f"auto: off for {engine}: {reason}"
    return True, "auto: on (fused linear cross-entropy: same loss, the full logits are never materialised)"


def _divisors_below(n: int) -> list[int]:
    return [d for d in range(n - 1, 0, -1) if n % d == 0]


def estimator_for(plan: Plan, engine: str, dims: memory.ModelDims, liger: bool) -> Callable[[int, bool], float]:
    """estimate(micro_batch, gradient_checkpointing) -> GiB for this plan and engine."""
    recipe = plan.recipe
    engine_obj = ENGINES[engine]
    kernels, profile = engine_obj.lora_kernels(plan), engine_obj.memory_profile
    options: dict[str, Any] = {
        "lora_r": recipe.lora["r"], "target_modules": tuple(recipe.target_modules),
        "lora_dropout": float(recipe.lora["dropout"]) if recipe.uses_adapter else 0.0,
        "modules_to_save": tuple(recipe.lora["modules_to_save"]) if recipe.uses_adapter else (),
        "dtype_bytes": memory.DTYPE_BYTES.get(plan.model_dtype, 2), "optimizer": recipe.training["optimizer"],
        "double_quant": recipe.quantization["double_quant"], "attn": recipe.model["attn"],
        "gpus": recipe.distributed["gpus"], "strategy": recipe.distributed["strategy"],
        "zero_offload": recipe.distributed["zero_offload"],
    }
    method, seq_len = recipe.method["type"], recipe.data["max_seq_length"]

    def estimate(micro_batch: int, checkpointing: bool) -> float:
        return memory.estimate_peak_gib(profile, dims, method, seq_len, micro_batch, checkpointing, liger, kernels,
                                        **options)

    return estimate


def resolve_for_engine(plan: Plan, engine: str) -> Plan:
    """The plan with concrete gradient_checkpointing / liger_kernel / micro-batch values for ``engine``.
    Raises RecipeError when even micro-batch 1 with checkpointing is estimated not to fit."""
    if plan.engine == engine:
        return plan
    if plan.engine is not None:
        raise QwenRecipesError(f"plan already resolved for {plan.engine}, not {engine}: resolve the original plan")
    training = plan.recipe.training
    file = str(plan.recipe.source)
    # Packed bins the engine cannot take as given are refused, never handed to its own packer (data/packing.py).
    refused = ENGINES[engine].packing_problems(plan)
    if refused:
        raise RecipeError([Problem(file, field, f"{engine}: {reason}") for field, reason in refused])
    liger, liger_why = _liger(plan, engine)
    checkpointing = training["gradient_checkpointing"]
    micro, accumulation = training["micro_batch_size"], training["gradient_accumulation_steps"]
    why: dict[str, str] = {"liger_kernel": liger_why}
    warnings: list[str] = []
    record: dict[str, Any] = {"engine": engine, "gpu_memory_gb": plan.gpu_memory_gb,
                              "gpu_memory_source": plan.gpu_memory_source}
    dims = memory.model_dims(plan.model_path) if plan.target == "cuda" else None

    if plan.target != "cuda":
        if checkpointing == "auto":
            checkpointing = False
            why["gradient_checkpointing"] = "auto: off on CPU (no GPU memory to save)"
    elif dims is None:
        if checkpointing == "auto":
            checkpointing = True
            why["gradient_checkpointing"] = "auto: on (no memory estimate for this model)"
        warnings.append(f"no memory estimate for {plan.model_path!r} (no config.json, not a known Qwen id): "
                        f"the micro-batch is kept and gradient_checkpointing is {'on' if checkpointing else 'off'}")
    else:
        gb = float(plan.gpu_memory_gb or memory.ASSUMED_GPU_MEMORY_GB)
        limit = f"{memory.gib_of_gb(gb):.1f} GiB ({gb:g} GB, {plan.gpu_memory_source})"
        estimate = estimator_for(plan, engine, dims, liger)
        without = estimate(micro, False)
        if checkpointing == "auto":
            checkpointing = not memory.fits(without, gb)
            why["gradient_checkpointing"] = (
                f"auto: {'on' if checkpointing else 'off'}: {without:.1f} GiB estimated without it at micro-batch "
                f"{micro} {'does not fit' if checkpointing else 'fits'} {limit} with margin")
        elif checkpointing is False and not memory.fits(without, gb):
            warnings.append(f"training.gradient_checkpointing: false is kept, but {engine} is estimated at "
                            f"{without:.1f} GiB without it, more than {limit} with margin: it may run out of memory "
                            "(use auto or true)")
        if checkpointing is True:
            peak = estimate(micro, True)
            if not memory.fits(peak, gb):
                smaller = next((d for d in _divisors_below(micro) if memory.fits(estimate(d, True), gb)), None)
                if smaller is None:
                    one = estimate(1, True)
                    raise RecipeError([Problem(file, "training.micro_batch_size",
                                               f"{engine}: micro-batch 1 with gradient checkpointing is estimated at "
                                               f"{one:.1f} GiB peak, more than {limit} with margin (x"
                                               f"{memory.FIT_FACTOR:g} + {memory.FIT_HEADROOM_GIB:g} GiB): use qlora, "
                                               "a shorter data.max_seq_length, or a GPU with more memory "
                                               "(hardware.gpu_memory_gb)")])
                factor = micro // smaller
                split = estimate(smaller, True)
                warnings.append(f"training.micro_batch_size: {micro} x gradient_accumulation_steps {accumulation} "
                                f"is split into {smaller} x {accumulation * factor} for {engine} (same effective "
                                f"batch): estimated {peak:.1f} GiB at {micro}, {split:.1f} GiB at {smaller}, "
                                f"for {limit}")
                why["micro_batch_size"] = why["gradient_accumulation_steps"] = (
                    f"split {micro} x {accumulation} into {smaller} x {accumulation * factor} to fit {limit}: "
                    f"{peak:.1f} -> {split:.1f} GiB estimated")
                micro, accumulation, peak = smaller, accumulation * factor, split
        else:
            peak = without
        record.update({"estimated_peak_gib": round(peak, 1), "limit_gib": round(memory.gib_of_gb(gb), 1),
                       "fits": memory.fits(peak, gb)})
        kept = f"{micro} x {accumulation} as in the recipe: {peak:.1f} GiB estimated for {limit}"
        why.setdefault("micro_batch_size", kept)
        why.setdefault("gradient_accumulation_steps", kept)
    chosen = {"gradient_checkpointing": bool(checkpointing), "liger_kernel": liger, "micro_batch_size": micro,
              "gradient_accumulation_steps": accumulation}
    why.setdefault("gradient_checkpointing", f"gradient_checkpointing: {str(checkpointing).lower()} in the recipe")
    why.setdefault("micro_batch_size", f"{micro} x {accumulation} as in the recipe")
    why.setdefault("gradient_accumulation_steps", f"{micro} x {accumulation} as in the recipe")
    record.update(chosen)
    record["why"] = why
    raw = copy.deepcopy(plan.recipe.raw)
    raw["training"].update(chosen)
    return replace(plan, recipe=replace(plan.recipe, raw=raw), engine=engine, memory=record,
                   warnings=[*plan.warnings, *warnings])


def resolve_engines(plan: Plan, engines: list[str]) -> dict[str, Plan | RecipeError]:
    """Each engine's resolved plan, or the RecipeError that engine's resolution raised."""
    out: dict[str, Plan | RecipeError] = {}
    for engine in engines:
        try:
            out[engine] = resolve_for_engine(plan, engine)
        except RecipeError as exc:
            out[engine] = exc
    return out


def memory_lines(resolved: dict[str, Plan | RecipeError]) -> list[str]:
    """One line per engine: the estimate and the settings chosen (what `validate` prints)."""
    lines = []
    for engine, result in resolved.items():
        if isinstance(result, RecipeError) or result.memory is None:
            continue
        m = result.memory
        settings = (f"checkpointing {'on' if m['gradient_checkpointing'] else 'off'}, "
                    f"liger {'on' if m['liger_kernel'] else 'off'}, "
                    f"micro-batch {m['micro_batch_size']} x accumulation {m['gradient_accumulation_steps']}")
        if "estimated_peak_gib" in m:
            where = (f"~{m['estimated_peak_gib']} GiB estimated, {m['limit_gib']} GiB usable of "
                     f"{m['gpu_memory_gb']:g} GB ({m['gpu_memory_source']})")
        else:
            where = "no GPU" if m["gpu_memory_gb"] is None else "no estimate"
        lines.append(f"{engine}: {where}: {settings}")
    return lines
