"""The DeepSpeed ZeRO config shared by the engines that launch through the HF Trainer's DeepSpeed integration
(``deepspeed.json`` beside the engine config)."""

from __future__ import annotations

from typing import Any

from qwenrecipes.recipe.plan import Plan

DEEPSPEED_FILE = "deepspeed.json"


def deepspeed_config(plan: Plan) -> dict[str, Any] | None:
    """A DeepSpeed ZeRO config for the strategy, or None. Batch, clipping and precision are "auto" so the
    HF Trainer fills them from the same explicit values as the engine config (one source of truth)."""
    strategy = plan.recipe.distributed["strategy"]
    if not strategy.startswith("deepspeed_zero"):
        return None
    stage = int(strategy.removeprefix("deepspeed_zero"))
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if plan.recipe.distributed["zero_offload"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
