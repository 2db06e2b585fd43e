"""Launcher arguments the engines share: torchrun (Axolotl's ``--launcher torchrun``, LLaMA-Factory's
FORCE_TORCHRUN, Unsloth) and ``accelerate launch`` (TRL), for one node or several.

Every multi-process launch tees each rank's output into ``ranks/`` in the run folder and to the console with a
``[default<N>]:`` prefix (run/ranks.py keeps events to rank 0). A multi-node command names the rendezvous through
``${NODE_RANK}``, ``${MASTER_ADDR}`` and ``${MASTER_PORT}``: the rendered ``launch_node.sh`` leaves them to the
shell, and `qwenrecipes run` fills them from its environment (render/multinode.py)."""

from __future__ import annotations

from qwenrecipes.recipe.plan import Plan

RANK_LOG_DIR = "ranks"  # every rank's stdout/stderr, kept in the run folder
NODE_VARIABLES = ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
TEE_ALL = "3"  # torch.distributed.elastic Std.ALL: stdout and stderr


def placeholder(name: str) -> str:
    return "${" + name + "}"


def is_multiprocess(plan: Plan) -> bool:
    return plan.world_size > 1


def torchrun_args(plan: Plan) -> list[str]:
    """torchrun options for the plan: processes per node, every rank's output kept, and for several nodes a
    c10d rendezvous at MASTER_ADDR:MASTER_PORT (no NODE_RANK needed; the id is the recipe's name, the same on
    every node)."""
    distributed = plan.recipe.distributed
    args = [f"--nproc_per_node={distributed['gpus']}", f"--log_dir={RANK_LOG_DIR}", f"--tee={TEE_ALL}"]
    if distributed["nodes"] > 1:
        args += [f"--nnodes={distributed['nodes']}", "--rdzv_backend=c10d",
                 f"--rdzv_endpoint={placeholder('MASTER_ADDR')}:{placeholder('MASTER_PORT')}",
                 f"--rdzv_id={plan.recipe.name}"]
    else:
        args.append("--standalone")  # a free local port: two runs on one host never collide
    return args


def torchrun_environment(plan: Plan) -> dict[str, str]:
    """The same keep-every-rank's-output options for a launcher that builds the torchrun command itself
    (torchrun reads ``PET_<OPTION>`` for any option not on its command line)."""
    if not is_multiprocess(plan):
        return {}
    return {"PET_LOG_DIR": RANK_LOG_DIR, "PET_TEE": TEE_ALL}


def accelerate_args(plan: Plan) -> list[str]:
    """`accelerate launch` options besides --config_file: tee into ranks/, and for several nodes this node's
    rank and the first node's address (static rendezvous, accelerate's default)."""
    args = ["--tee", TEE_ALL, "--log_dir", RANK_LOG_DIR]
    if plan.recipe.distributed["nodes"] > 1:
        args += ["--machine_rank", placeholder("NODE_RANK"), "--main_process_ip", placeholder("MASTER_ADDR"),
                 "--main_process_port", placeholder("MASTER_PORT")]
    return args


# accelerate (the HF Trainer's launcher and backend, under the engines built on it) turns FSDP on only for
# accelerator processes: AcceleratorState switches MULTI_GPU / MULTI_XPU / MULTI_NPU / ... to FSDP, never
# MULTI_CPU. Processes on the CPU would train as plain DDP over gloo with the FSDP config ignored (seen on
# tiny-cpu with 2 processes: one engine built a DDP model, another saved a non-FSDP checkpoint, losses equal to
# the DDP run's: docs/engines.md).
CPU_FSDP_REASON = ("FSDP needs accelerator devices: accelerate (which the HF Trainer runs on) turns FSDP on only "
                   "for GPU/XPU/NPU processes, so processes on the CPU would train as plain DDP with the FSDP "
                   "config ignored; use strategy ddp on the CPU, or a CUDA target for fsdp")


def cpu_fsdp_problems(plan: Plan) -> list[tuple[str, str]]:
    """The refusal of an engine whose FSDP goes through accelerate, for a multi-process FSDP plan on the CPU."""
    if plan.target == "cpu" and plan.recipe.distributed["strategy"] == "fsdp" and is_multiprocess(plan):
        return [("distributed.strategy", CPU_FSDP_REASON)]
    return []
