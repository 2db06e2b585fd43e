"""The accelerate config of a multi-process TRL run (``accelerate launch --config_file accelerate_config.yaml``)."""

from __future__ import annotations

from typing import Any

from qwenrecipes.recipe.plan import Plan


def accelerate_config(plan: Plan) -> dict[str, Any]:
    distributed = plan.recipe.distributed
    strategy = distributed["strategy"]
    mixed = {"bf16": "bf16", "fp16": "fp16"}.get(plan.precision, "no")
    # num_processes counts every node's; machine_rank and the main node's address come from the command line
    # (launchers.accelerate_args). use_cpu stays false even for CPU processes: accelerate's CPU path is a
    # single process (or mpirun); MULTI_GPU launches torchrun, and trl_config.yaml's use_cpu makes the Trainer
    # train on the CPU over gloo.
    config: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "num_machines": distributed["nodes"],
                              "machine_rank": 0, "num_processes": plan.world_size,
                              "mixed_precision": mixed, "use_cpu": False}
    if strategy.startswith("deepspeed"):
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": 3 if strategy == "deepspeed_zero3" else 2,
            "offload_optimizer_device": "cpu" if distributed["zero_offload"] else "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": plan.recipe.training["gradient_accumulation_steps"],
            "gradient_clipping": float(plan.recipe.training["max_grad_norm"]),
            "zero3_init_flag": False,
        }
    elif strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                 "fsdp_transformer_layer_cls_to_wrap": "Qwen3DecoderLayer",
                                 "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True}
    else:
        config["distributed_type"] = "MULTI_GPU"
    return config
