"""Which hardware a recipe trains on, and whether this machine is that hardware.

A recipe is resolved for the hardware it is written for, not for the machine that happens to render it: people
write and render configs on a laptop and train on a GPU server. So validate/render/explain/check resolve for the
recipe's target (`hardware.target`, or what its settings imply), and only the commands that train here (`run`,
`bench`) compare that target with this machine (check_machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe import memory
from qwenrecipes.recipe.load import Recipe

TARGETS = ("cuda", "cpu")
EIGHT_BIT_OPTIMIZERS = {"adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"}
NVIDIA_SMI_TIMEOUT_S = 10.0
# A declared card this much larger than the detected one is a recipe written for another GPU (the estimate's
# margin already absorbs rounding between nvidia-smi's MiB and the recipe's GB).
MEMORY_SLACK = 1.02


@dataclass(frozen=True)
class TargetChoice:
    target: str  # "cuda" | "cpu"
    source: str  # "override" (--target) | "declared" (hardware.target) | "implied" (GPU-only settings) | "machine"
    why: str  # the settings or fact that decided it, for messages and plan.json

    def describe(self) -> str:
        return {"override": f"--target {self.target}", "declared": f"hardware.target: {self.target}",
                "implied": f"implied by {self.why}", "machine": f"this machine: {self.why}"}[self.source]


def detect_target() -> str:
    """'cuda' when an NVIDIA GPU is visible, else 'cpu'. Cheap: no torch import."""
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def detect_gpu_count() -> int:
    """GPUs nvidia-smi lists (0 without nvidia-smi or when it fails), narrowed by CUDA_VISIBLE_DEVICES."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    listed = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return min(listed, len([v for v in visible.split(",") if v.strip()]))
    return listed


def gpu_settings(recipe: Recipe) -> list[str]:
    """The recipe's settings that only make sense on a CUDA GPU, as `field: value` (empty: none)."""
    training, method, distributed = recipe.training, recipe.method, recipe.distributed
    found = []
    if training["precision"] in ("bf16", "fp16"):
        found.append(f"training.precision: {training['precision']}")
    if method["type"] == "qlora":
        found.append("method.type: qlora")
    if training["optimizer"] in EIGHT_BIT_OPTIMIZERS:
        found.append(f"training.optimizer: {training['optimizer']}")
    if recipe.hardware.get("gpu_memory_gb") is not None:
        found.append(f"hardware.gpu_memory_gb: {recipe.hardware['gpu_memory_gb']:g}")
    if distributed["gpus"] > 1:
        found.append(f"distributed.gpus: {distributed['gpus']}")
    if distributed["strategy"] != "none":
        found.append(f"distributed.strategy: {distributed['strategy']}")
    if recipe.model["attn"] == "flash_attention_2":
        found.append("model.attn: flash_attention_2")
    if training["liger_kernel"] is True:
        found.append("training.liger_kernel: true")
    return found


def resolve_target(recipe: Recipe, override: str | None = None) -> TargetChoice:
    """--target, else hardware.target, else cuda when a GPU-only setting is present, else this machine's."""
    if override is not None:
        return TargetChoice(override, "override", "--target")
    declared = recipe.hardware.get("target")
    if declared is not None:
        return TargetChoice(str(declared), "declared", "hardware.target")
    implied = gpu_settings(recipe)
    if implied:
        return TargetChoice("cuda", "implied", ", ".join(implied))
    machine = detect_target()
    return TargetChoice(machine, "machine", "nvidia-smi found" if machine == "cuda" else "no nvidia-smi")


def machine_problems(recipe: Recipe, choice: TargetChoice) -> list[Problem]:
    """What this machine lacks to train `recipe` as resolved for `choice`, each with what to do."""
    file = str(recipe.source)
    if choice.target != "cuda":
        return []
    gpus = detect_gpu_count()
    if gpus == 0:
        field = {"declared": "hardware.target", "implied": choice.why.split(":")[0]}.get(choice.source, "")
        return [Problem(file, field, (
            f"this recipe trains on a CUDA GPU ({choice.describe()}) and this machine has none (no working "
            "nvidia-smi). Render it here and train on a GPU host (`qwenrecipes render RECIPE -e ENGINE -o DIR`, "
            "copy DIR, run its COMMAND), or make a CPU variant: hardware.target: cpu, training.precision: fp32, "
            "training.optimizer: adamw_torch, method.type: lora (not qlora), distributed.gpus: 1"))]
    problems = []
    wanted = recipe.distributed["gpus"]
    if wanted > gpus:
        problems.append(Problem(file, "distributed.gpus", (
            f"the recipe trains on {wanted} GPUs and this machine shows {gpus} (nvidia-smi -L, "
            f"CUDA_VISIBLE_DEVICES): run it on a host with {wanted} GPUs or set distributed.gpus: {gpus}")))
    declared = recipe.hardware.get("gpu_memory_gb")
    detected = memory.detect_gpu_memory_gb()
    if declared is not None and detected is not None and declared > detected * MEMORY_SLACK:
        problems.append(Problem(file, "hardware.gpu_memory_gb", (
            f"the recipe is sized for a {declared:g} GB GPU and this one has {detected:g} GB: set "
            f"hardware.gpu_memory_gb: {detected:g} (or remove it to use what nvidia-smi reports) so checkpointing "
            "and the micro-batch are chosen for this card")))
    return problems


def check_machine(recipe: Recipe, target: str | None = None) -> TargetChoice:
    """Raise RecipeError (exit 2) naming what this machine lacks to train `recipe`; return the target chosen.
    Called by `run` and `bench` only: every other command works for any target on any machine."""
    choice = resolve_target(recipe, target)
    problems = machine_problems(recipe, choice)
    if problems:
        raise RecipeError(problems)
    return choice
