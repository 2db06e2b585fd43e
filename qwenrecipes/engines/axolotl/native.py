"""`validate --native` for Axolotl: its own pydantic config validation, run inside the Axolotl env with the render
folder as cwd. Prints one JSON line {"ok": bool, "error": str}. A ``deepspeed:`` file is then parsed by DeepSpeed
itself (engines/deepspeed.py), with the config's batch, clipping and precision as Axolotl hands them to the Trainer."""

from qwenrecipes.engines.deepspeed import NATIVE_CHECK as ZERO_CONFIG_CHECK

NATIVE_CHECK = ZERO_CONFIG_CHECK + """
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
    if raw.get("deepspeed"):
        train = {"per_device_train_batch_size": raw.get("micro_batch_size"),
                 "gradient_accumulation_steps": raw.get("gradient_accumulation_steps"),
                 "max_grad_norm": raw.get("max_grad_norm"), "learning_rate": raw.get("learning_rate"),
                 "bf16": raw.get("bf16") in (True, "auto"), "fp16": raw.get("fp16") is True,
                 "max_steps": raw.get("max_steps")}
        check_deepspeed(json.load(open(raw["deepspeed"])), train, raw["base_model"])
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
"""
