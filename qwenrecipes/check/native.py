"""`validate --native`: ask the engine itself, inside its own env, whether it accepts the rendered config.

Nothing trains and nothing is downloaded: Axolotl's pydantic config validation, LLaMA-Factory's argument
parser, TRL's TrlParser. Unsloth cannot even be imported without a GPU, so its script gets a static check
(it compiles and calls only what the template writes). An engine's complaint is mapped back to the recipe
field it comes from where the key is known.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tempfile
from pathlib import Path

from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.plan import Plan
from qwenrecipes.render.folder import render_plan, write_rendered

NATIVE_TIMEOUT_S = 300

# Runs inside the engine env with the render folder as cwd; prints one JSON line {"ok": bool, "error": str}.
# On a host without a GPU, configs rendered for CUDA are checked with mixed precision switched off: the engines
# refuse bf16 on a CPU host in argument parsing, which says nothing about the config itself.
SNIPPETS: dict[str, str] = {
    "axolotl": """
import json, yaml
from axolotl.integrations.config import merge_input_args
from axolotl.utils.config import prepare_plugins, validate_config
from axolotl.utils.dict import DictDefault
raw = yaml.safe_load(open("axolotl.yaml"))
prepare_plugins(DictDefault(raw))  # plugins (e.g. Liger) add their own keys to the schema, as in `axolotl train`
fields = merge_input_args()[1].model_fields
known = set(fields) | {f.alias for f in fields.values() if f.alias}
unknown = sorted(set(raw) - known)  # validate_config accepts unknown keys silently
try:
    if unknown:
        raise ValueError("unknown keys: " + ", ".join(unknown))
    validate_config(DictDefault(raw))
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
""",
    "llamafactory": """
import json, yaml, torch
from llamafactory.hparams import get_train_args
raw = yaml.safe_load(open("llamafactory.yaml"))
if not torch.cuda.is_available():
    raw.update({"bf16": False, "fp16": False, "pure_bf16": False, "quantization_bit": None, "deepspeed": None})
try:
    get_train_args(raw)
    print(json.dumps({"ok": True}))
except BaseException as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
""",
    "trl": """
import json, torch
from trl import TrlParser, ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig
args = ["--config", "trl_config.yaml"]
if not torch.cuda.is_available():
    args += ["--bf16", "false", "--fp16", "false", "--use_cpu", "true"]
try:
    TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(args=args)
    print(json.dumps({"ok": True}))
except BaseException as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
""",
}

# The calls the Unsloth template writes; anything else in the script means it was not ours.
UNSLOTH_CALLS = {
    "os.environ.setdefault", "argparse.ArgumentParser", "cli.add_argument", "cli.parse_args", "int",
    "os.environ.get", "SystemExit", "FastLanguageModel.from_pretrained", "getattr", "FastLanguageModel.get_peft_model",
    "load_dataset", "SFTConfig", "SFTTrainer", "train_on_responses_only", "trainer.train", "trainer.save_model",
    "main", "BitsAndBytesConfig",
}

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
}


def _field_for(message: str) -> str:
    for key, field in ENGINE_KEY_TO_FIELD.items():
        if re.search(rf"\b{re.escape(key)}\b", message):
            return field
    return ""


def _static_unsloth(folder: Path) -> str | None:
    script = folder / "train_unsloth.py"
    text = script.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text)
        compile(tree, str(script), "exec")
    except SyntaxError as exc:
        return f"train_unsloth.py does not compile: {exc}"
    names = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    unexpected = sorted(names - UNSLOTH_CALLS)
    return f"unexpected calls in train_unsloth.py: {', '.join(unexpected)}" if unexpected else None


def native_validate(plan: Plan, engine: str) -> None:
    """Render into a temp folder and let the engine check it. Raises RecipeError with the engine's complaint."""
    rendered = render_plan(plan, engine)
    file = str(plan.recipe.source)
    with tempfile.TemporaryDirectory(prefix=f"qwenrecipes-native-{engine}-") as tmp:
        folder = Path(tmp)
        write_rendered(plan, rendered, folder)
        if engine == "unsloth":
            error = _static_unsloth(folder)
        else:
            from qwenrecipes.run.envs import env_for

            env = env_for(engine)
            try:
                result = subprocess.run([str(env.python), "-c", SNIPPETS[engine]], cwd=folder, capture_output=True,
                                        text=True, timeout=NATIVE_TIMEOUT_S,
                                        env=env.run_environment(rendered.environment))
            except subprocess.TimeoutExpired:
                error = f"{engine}'s own validation did not finish in {NATIVE_TIMEOUT_S} s"
            else:
                lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
                if not lines:
                    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
                    error = f"{engine}'s validator crashed (exit {result.returncode}):\n{tail}"
                else:
                    verdict = json.loads(lines[-1])
                    error = None if verdict["ok"] else verdict["error"]
    if error:
        message = f"{engine} rejects the rendered config: {error}"
        raise RecipeError([Problem(file, _field_for(error), message)])
