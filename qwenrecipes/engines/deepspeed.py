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


# `validate --native`: a function engines put in front of their own native snippet (it runs inside the engine env,
# which has deepspeed from its lock). The "auto" values are resolved the way the HF Trainer does it, with
# transformers' HfTrainerDeepSpeedConfig (trainer_config_process, then trainer_config_finalize with the model's
# hidden size), from the training values of the engine's own config, so a value that disagrees with the engine
# config is refused as the Trainer would refuse it; DeepSpeed's own DeepSpeedConfig then parses the result.
# World size is 1 here (no process group): "auto" batch sizes are filled consistently for it.
# The model's config.json is read from disk only (local_files_only); a hub model not in the cache leaves the
# hidden size to a stand-in, which changes only the bucket sizes' numbers, not what DeepSpeed accepts.
NATIVE_CHECK = '''
# The TrainingArguments an engine config names with the HF Trainer's own keys.
HF_TRAIN_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm", "learning_rate",
                 "bf16", "fp16", "max_steps")


def check_deepspeed(config, train, model):
    """Raise with DeepSpeed's (or the Trainer's) own message if it would refuse ``config`` (a dict)."""
    import tempfile, types
    from transformers import AutoConfig, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
    from deepspeed.runtime.config import DeepSpeedConfig
    train = {key: value for key, value in train.items() if value is not None}
    precision = {key: bool(train.pop(key, False)) for key in ("bf16", "fp16")}
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="qwenrecipes-ds-"), use_cpu=True, report_to=[],
                             **train)
    for key, value in precision.items():  # after __init__: TrainingArguments refuses bf16/fp16 on a CPU host
        setattr(args, key, value)
    try:
        model_config = AutoConfig.from_pretrained(model, local_files_only=True)
    except Exception:
        model_config = types.SimpleNamespace(hidden_size=4096)
    hf_config = HfTrainerDeepSpeedConfig(config)
    hf_config.trainer_config_process(args)
    hf_config.trainer_config_finalize(args, types.SimpleNamespace(config=model_config), max(args.max_steps, 1))
    try:
        DeepSpeedConfig(hf_config.config)
    except Exception as exc:
        raise ValueError(f"DeepSpeed refuses the ZeRO config: {type(exc).__name__}: {exc}") from None
'''
