"""`validate --native` for TRL: TrlParser over the same dataclasses `trl sft` uses, run inside the TRL env with the
render folder as cwd. On a host without a GPU, mixed precision is switched off first (TRL refuses bf16 there in
argument parsing, which says nothing about the config itself).

With ``distributed_type: DEEPSPEED`` in accelerate_config.yaml, the DeepSpeed config is what `accelerate launch`
builds from it (accelerate's DeepSpeedPlugin over the same keys and mixed precision), parsed by DeepSpeed itself
with trl_config.yaml's batch, clipping and precision values (engines/deepspeed.py)."""

from qwenrecipes.engines.deepspeed import NATIVE_CHECK as ZERO_CONFIG_CHECK

NATIVE_CHECK = ZERO_CONFIG_CHECK + """
import json, os, torch, yaml
from trl import TrlParser, ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig
args = ["--config", "trl_config.yaml"]
if not torch.cuda.is_available():
    args += ["--bf16", "false", "--fp16", "false", "--use_cpu", "true"]
try:
    TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(args=args)
    launch = yaml.safe_load(open("accelerate_config.yaml")) if os.path.exists("accelerate_config.yaml") else {}
    if launch.get("distributed_type") == "DEEPSPEED":
        from accelerate.utils import DeepSpeedPlugin
        plugin = DeepSpeedPlugin(**launch["deepspeed_config"])
        plugin.set_mixed_precision(launch.get("mixed_precision", "no"))
        raw = yaml.safe_load(open("trl_config.yaml"))
        check_deepspeed(plugin.deepspeed_config, {key: raw.get(key) for key in HF_TRAIN_KEYS},
                        raw["model_name_or_path"])
    print(json.dumps({"ok": True}))
except BaseException as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
"""
