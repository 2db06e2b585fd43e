"""`validate --native`: ask the engine itself, inside its own env, whether it accepts the rendered config.

Nothing trains and nothing is downloaded: each engine says how (``Engine.native_check``): a snippet run in its
env with the render folder as cwd (its own config validation or argument parser), or, for an engine that cannot
be imported on this host, a static check run here. An engine's complaint is mapped back to the recipe field it
comes from where the key is known.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.plan import Plan
from qwenrecipes.render.folder import render_plan, write_rendered

NATIVE_TIMEOUT_S = 300

# Engine keys -> the recipe field they come from, for mapping a complaint back.
ENGINE_KEY_TO_FIELD = {
    "lora_r": "method.lora.r", "lora_rank": "method.lora.r", "lora_alpha": "method.lora.alpha",
    "lora_dropout": "method.lora.dropout", "lora_target_modules": "method.lora.target_modules",
    "lora_target": "method.lora.target_modules", "learning_rate": "training.learning_rate",
    "micro_batch_size": "training.micro_batch_size", "per_device_train_batch_size": "training.micro_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps", "warmup_steps": "training.warmup_steps",
    "optimizer": "training.optimizer", "optim": "training.optimizer", "lr_scheduler": "training.scheduler",
    "lr_scheduler_type": "training.scheduler", "sequence_len": "data.max_seq_length",
    "cutoff_len": "data.max_seq_length", "max_length": "data.max_seq_length", "base_model": "model.name_or_path",
    "model_name_or_path": "model.name_or_path",
    "load_in_4bit": "method.type", "quantization_bit": "method.quantization.bits", "deepspeed": "distributed.strategy",
    "bf16": "training.precision", "fp16": "training.precision", "sample_packing": "data.packing",
    "packing": "data.packing", "seed": "training.seed", "max_steps": "training.max_steps",
    "DeepSpeed": "distributed.strategy",  # engines/deepspeed.py NATIVE_CHECK: "DeepSpeed refuses the ZeRO config"
}


def _field_for(message: str) -> str:
    for key, field in ENGINE_KEY_TO_FIELD.items():
        if re.search(rf"\b{re.escape(key)}\b", message):
            return field
    return ""


def check_folder(engine: str, folder: Path, environment: dict[str, str] | None = None) -> str | None:
    """Ask ``engine`` about an already rendered ``folder``: its complaint, or None when it accepts it.
    ``environment``: the render's own variables (Rendered.environment)."""
    check = ENGINES[engine].native_check()
    if check is None:
        return f"{engine} has no native validation: render and run it instead"
    if callable(check):  # a check that runs here (an engine that cannot be imported on this host)
        return check(folder)
    from qwenrecipes.run.envs import env_for

    env = env_for(engine)
    try:
        result = subprocess.run([str(env.python), "-c", check], cwd=folder, capture_output=True, text=True,
                                timeout=NATIVE_TIMEOUT_S, env=env.run_environment(environment or {}))
    except subprocess.TimeoutExpired:
        return f"{engine}'s own validation did not finish in {NATIVE_TIMEOUT_S} s"
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        return f"{engine}'s validator crashed (exit {result.returncode}):\n{tail}"
    verdict = json.loads(lines[-1])
    return None if verdict["ok"] else str(verdict["error"])


def native_validate(plan: Plan, engine: str) -> None:
    """Render into a temp folder and let the engine check it. Raises RecipeError with the engine's complaint."""
    rendered = render_plan(plan, engine)
    file = str(plan.recipe.source)
    if ENGINES[engine].native_check() is None:
        raise RecipeError([Problem(file, "", f"{engine} has no native validation: render and run it instead")])
    with tempfile.TemporaryDirectory(prefix=f"qwenrecipes-native-{engine}-") as tmp:
        folder = Path(tmp)
        write_rendered(plan, rendered, folder)
        error = check_folder(engine, folder, dict(rendered.environment))
    if error:
        message = f"{engine} rejects the rendered config: {error}"
        raise RecipeError([Problem(file, _field_for(error), message)])
