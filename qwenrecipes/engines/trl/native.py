"""`validate --native` for TRL: TrlParser over the same dataclasses `trl sft` uses, run inside the TRL env with the
render folder as cwd. On a host without a GPU, mixed precision is switched off first (TRL refuses bf16 there in
argument parsing, which says nothing about the config itself)."""

SNIPPET = """
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
"""
