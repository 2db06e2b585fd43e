"""`validate --native` for LLaMA-Factory: its own argument parser (get_train_args), run inside its env with the
render folder as cwd. On a host without a GPU, mixed precision is switched off first: LLaMA-Factory refuses bf16
on a CPU host in argument parsing, which says nothing about the config itself. The ``deepspeed`` file is parsed
by DeepSpeed itself instead (engines/deepspeed.py), with the config's own batch, clipping and precision values."""

from qwenrecipes.engines.deepspeed import NATIVE_CHECK as ZERO_CONFIG_CHECK

NATIVE_CHECK = ZERO_CONFIG_CHECK + """
import json, yaml, torch
from llamafactory.hparams import get_train_args
raw = yaml.safe_load(open("llamafactory.yaml"))
original = dict(raw)
if not torch.cuda.is_available():
    raw.update({"bf16": False, "fp16": False, "pure_bf16": False, "quantization_bit": None, "deepspeed": None})
try:
    get_train_args(raw)
    if original.get("deepspeed"):
        check_deepspeed(json.load(open(original["deepspeed"])), {key: original.get(key) for key in HF_TRAIN_KEYS},
                        original["model_name_or_path"])
    print(json.dumps({"ok": True}))
except BaseException as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
"""
