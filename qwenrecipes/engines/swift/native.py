"""`validate --native` for ms-swift: its own argument parsing, run inside its env with the render folder as cwd:
``parse_yaml_args`` (the YAML -> argv expansion `swift sft` does) then ``parse_args(SftArguments, ...)``, whose
__post_init__ resolves the template, learning rate and accumulation and reads the model's config.json (no weights).
Unknown keys come back as leftover arguments, which swift itself would refuse.

__post_init__ creates output_dir, so it points at a scratch folder. On a host without a GPU, what swift refuses
there for reasons that say nothing about the config (bf16/fp16, 4-bit, DeepSpeed, FSDP) is taken out first, from a
copy of the YAML (an argv value cannot be None). The ``deepspeed`` file is parsed by DeepSpeed itself instead
(engines/deepspeed.py), with the config's own batch, clipping and precision values."""

from qwenrecipes.engines.deepspeed import NATIVE_CHECK as ZERO_CONFIG_CHECK

NATIVE_CHECK = ZERO_CONFIG_CHECK + """
import json, os, tempfile
os.environ.setdefault("USE_HF", "1"); os.environ.setdefault("HF_HUB_OFFLINE", "1")
try:
    import torch, yaml
    from swift.cli.main import parse_yaml_args
    from swift.arguments import SftArguments
    from swift.utils import parse_args
    scratch = tempfile.mkdtemp(prefix="qwenrecipes-native-")
    with open("swift_sft.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    original = dict(config)
    config["output_dir"] = os.path.join(scratch, "output")
    if not torch.cuda.is_available():
        config.update({"bf16": False, "fp16": False})
        for key in ("quant_method", "quant_bits", "deepspeed", "fsdp"):
            config.pop(key, None)
    copy = os.path.join(scratch, "swift_sft.yaml")
    with open(copy, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    argv = [copy]
    parse_yaml_args(argv)
    args, rest = parse_args(SftArguments, argv)
    if rest:
        raise ValueError(f"swift does not know these arguments: {rest}")
    if original.get("deepspeed"):
        check_deepspeed(json.load(open(original["deepspeed"])), {key: original.get(key) for key in HF_TRAIN_KEYS},
                        original["model"])
    print(json.dumps({"ok": True}))
except BaseException as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
"""
