"""`run`'s pre-flight for multi-process and multi-node recipes (exit 2, before anything is written): what the
engine's launcher cannot run, a resume with another world size, and this node's rendezvous values."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from qwenrecipes.engines.base import Engine
from qwenrecipes.errors import Problem, QwenRecipesError, RecipeError
from qwenrecipes.recipe.plan import Plan
from qwenrecipes.render.multinode import expand_node_variables

PLAN_FILE = "plan.json"  # written by every render (render/folder.py): it records the run's world size


def started_world_size(run_dir: Path) -> int | None:
    """The world size a run dir was started with (its plan.json), None when unknown."""
    try:
        value = json.loads((run_dir / PLAN_FILE).read_text(encoding="utf-8")).get("world_size", 1)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def check_distributed(plan: Plan, engine: Engine, run_dir: Path, *, resume: bool) -> None:
    """Raise (exit 2) when the engine cannot launch the plan's distribution, or when resuming a run dir that
    was started with another world size."""
    problems = engine.launch_problems(plan)
    if problems:
        raise RecipeError([Problem(str(plan.recipe.source), field, reason) for field, reason in problems])
    if not resume:
        return
    started = started_world_size(run_dir)
    if started is not None and started != plan.world_size:
        # A checkpoint holds one RNG state per rank (and, under ZeRO/FSDP, optimizer shards per rank), and the
        # trainer's step count and data position are those of the old world size's effective batch.
        raise QwenRecipesError(
            f"{run_dir} was started with world size {started} (distributed.gpus x nodes) and this recipe has "
            f"{plan.world_size}: a checkpoint resumes only with the world size that wrote it (per-rank RNG and "
            "sharded optimizer state; the data position and step count of its effective batch). Resume with "
            "the original distributed settings, or --force to start over")


def node_argv(plan: Plan, argv: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """A multi-node command with this node's NODE_RANK / MASTER_ADDR / MASTER_PORT filled in."""
    if plan.recipe.distributed["nodes"] <= 1:
        return argv
    return expand_node_variables(argv, os.environ if environ is None else environ,
                                 master_port=plan.recipe.distributed["master_port"], file=str(plan.recipe.source))
