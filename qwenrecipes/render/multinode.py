"""Several nodes: the files `render` adds when ``distributed.nodes > 1`` and the rendezvous values `run` fills in.

An engine's multi-node command names the rendezvous as ``${NODE_RANK}``, ``${MASTER_ADDR}`` and ``${MASTER_PORT}``
(engines/launchers.py). From that one command come:

- ``launch_node.sh``: the per-node launch, run from the render folder on every node with NODE_RANK and
  MASTER_ADDR set (the shell expands the placeholders);
- ``slurm.sbatch``: one task per node through ``srun``, MASTER_ADDR the job's first host, NODE_RANK Slurm's
  SLURM_NODEID;
- ``skypilot.yaml``: a SkyPilot task with ``num_nodes``, NODE_RANK from SKYPILOT_NODE_RANK, MASTER_ADDR the
  first of SKYPILOT_NODE_IPS.

`qwenrecipes run` on a node expands the same placeholders from its own environment (``expand_node_variables``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from qwenrecipes.engines.launchers import NODE_VARIABLES
from qwenrecipes.engines.templating import dump_yaml
from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.plan import Plan

LAUNCH_FILE = "launch_node.sh"
SBATCH_FILE = "slurm.sbatch"
SKYPILOT_FILE = "skypilot.yaml"
_PLACEHOLDER = re.compile(r"\$\{(" + "|".join(NODE_VARIABLES) + r")\}")


def shell_word(arg: str) -> str:
    """One argv element for a shell script: literal text single-quoted where needed, placeholders left to the
    shell as "${VAR}"."""
    out, last = [], 0
    for match in _PLACEHOLDER.finditer(arg):
        if match.start() > last:
            out.append(shlex.quote(arg[last:match.start()]))
        out.append(f'"${{{match.group(1)}}}"')
        last = match.end()
    if last < len(arg) or not out:
        out.append(shlex.quote(arg[last:]))
    return "".join(out)


def expand_node_variables(argv: list[str], environ: Mapping[str, str], *, master_port: int,
                          file: str = "") -> list[str]:
    """`run` on one node of a multi-node recipe: the rendezvous placeholders from this process's environment
    (MASTER_PORT defaults to the recipe's). Raises RecipeError (exit 2) naming what is missing."""
    values = {"MASTER_PORT": str(master_port), **{k: environ[k] for k in NODE_VARIABLES if environ.get(k)}}
    needed = sorted({m.group(1) for arg in argv for m in _PLACEHOLDER.finditer(arg)})
    missing = [name for name in needed if name not in values]
    if missing:
        raise RecipeError([Problem(file, "distributed.nodes", (
            f"a multi-node run needs {' and '.join(missing)} in the environment on every node (NODE_RANK 0 on "
            f"the node at MASTER_ADDR); or submit the rendered {SBATCH_FILE} / {SKYPILOT_FILE}, which set them"))])
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in argv]


def _launch_script(plan: Plan, engine: str, argv: list[str], environment: dict[str, str]) -> str:
    distributed = plan.recipe.distributed
    exports = "\n".join(f"export {key}={shlex.quote(value)}" for key, value in environment.items())
    return f"""#!/usr/bin/env bash
# Per-node launch of {plan.recipe.name} on {engine}: {distributed['nodes']} nodes x {distributed['gpus']} processes.
# Run it on every node, from this folder (the same copy on every node, or a shared filesystem), with
#   NODE_RANK    this node's rank, 0 .. {distributed['nodes'] - 1} (0 on the node at MASTER_ADDR)
#   MASTER_ADDR  the address of node 0, reachable from every node
#   MASTER_PORT  the rendezvous port (default {distributed['master_port']}, distributed.master_port)
#   ENGINE_BIN   optional: the {engine} env's bin/ (else it must be first on PATH)
# {SBATCH_FILE} and {SKYPILOT_FILE} run this script with those set.
set -euo pipefail
cd "$(dirname "$0")"
: "${{NODE_RANK:?set NODE_RANK (0..{distributed['nodes'] - 1})}}"
: "${{MASTER_ADDR:?set MASTER_ADDR (the address of node 0)}}"
export NODE_RANK MASTER_ADDR
export MASTER_PORT="${{MASTER_PORT:-{distributed['master_port']}}}"
if [ -n "${{ENGINE_BIN:-}}" ]; then export PATH="$ENGINE_BIN:$PATH"; fi
{exports}
exec {' '.join(shell_word(arg) for arg in argv)}
"""


def _sbatch(plan: Plan) -> str:
    distributed = plan.recipe.distributed
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", plan.recipe.name)
    gpus = f"#SBATCH --gpus-per-node={distributed['gpus']}\n" if plan.target == "cuda" else ""
    return f"""#!/bin/bash
# Slurm: `sbatch {SBATCH_FILE}` from this folder (on a filesystem every node sees). One task per node; each
# runs {LAUNCH_FILE}, which starts {distributed['gpus']} processes there through the engine's launcher.
#SBATCH --job-name={name}
#SBATCH --nodes={distributed['nodes']}
#SBATCH --ntasks-per-node=1
{gpus}#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-.}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR
export MASTER_PORT={distributed['master_port']}
# NODE_RANK per task: Slurm's node index. --kill-on-bad-exit: one failed node ends the job.
srun --kill-on-bad-exit=1 bash -c 'NODE_RANK="$SLURM_NODEID" exec bash ./{LAUNCH_FILE}'
"""


def _accelerators(plan: Plan) -> dict[str, int] | None:
    """Candidate GPU types with enough memory for the plan (SkyPilot picks any one of them)."""
    if plan.target != "cuda":
        return None
    gpus, memory = plan.recipe.distributed["gpus"], plan.gpu_memory_gb or 24
    names = (["H200"] if memory > 80 else ["H100", "A100-80GB", "H200"] if memory > 40
             else ["L40S", "A100", "H100"] if memory > 24 else ["L4", "A10G", "L40S"])
    return {name: gpus for name in names}


def _skypilot(plan: Plan, engine: str) -> str:
    distributed = plan.recipe.distributed
    accelerators = _accelerators(plan)
    resources: dict[str, Any] = {"accelerators": accelerators} if accelerators else {"cpus": "4+"}
    name = re.sub(r"[^a-z0-9-]", "-", plan.recipe.name.lower()).strip("-") or "qwenrecipes"
    head = dump_yaml({"name": name, "num_nodes": distributed["nodes"], "resources": resources, "workdir": "."})
    return f"""# SkyPilot: `sky launch {SKYPILOT_FILE}` from this folder (it becomes the workdir on every node).
# setup needs qwenrecipes on the nodes' image (pip install it, e.g. from your wheel).
{head}setup: |
  qwenrecipes env install {engine}
run: |
  export NODE_RANK="$SKYPILOT_NODE_RANK"
  export MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n 1)"
  export MASTER_PORT={distributed['master_port']}
  export ENGINE_BIN="$(ls -d ~/.cache/qwenrecipes/envs/{engine}-*/bin | tail -n 1)"
  bash ./{LAUNCH_FILE}
"""


def multinode_files(plan: Plan, engine: str, argv: list[str], environment: dict[str, str],
                    command_line: str) -> dict[str, str]:
    """The per-node launch script, the sbatch script and the SkyPilot task, and a COMMAND that points to the
    launch script; nothing for one node."""
    if plan.recipe.distributed["nodes"] <= 1:
        return {}
    command = (f"# {plan.recipe.distributed['nodes']} nodes: run {LAUNCH_FILE} on every node with NODE_RANK and "
               f"MASTER_ADDR set, or submit {SBATCH_FILE} (Slurm) / {SKYPILOT_FILE} (SkyPilot)\n"
               f"#   each node runs: {command_line}\n"
               f"exec bash \"$(dirname \"$0\")/{LAUNCH_FILE}\"\n")
    return {LAUNCH_FILE: _launch_script(plan, engine, argv, environment), SBATCH_FILE: _sbatch(plan),
            SKYPILOT_FILE: _skypilot(plan, engine), "COMMAND": command}
