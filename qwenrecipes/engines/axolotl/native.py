"""`validate --native` for Axolotl: its own pydantic config validation, run inside the Axolotl env with the render
folder as cwd. Prints one JSON line {"ok": bool, "error": str}."""

SNIPPET = """
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
"""
