"""What a bench point trains on: ``--set`` overrides of the recipe, a random-init model with the real Qwen3
architecture and tokenizer (``random:qwen3-4b``, weights materialized on the training machine), and exact-length
synthetic ChatML data (``--synthetic-data 96x2048``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from qwenrecipes.errors import QwenRecipesError


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.micro_batch_size=8", "model.attn=sdpa"]`` -> {dotted path: YAML-parsed value}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
            raise QwenRecipesError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. training.micro_batch_size=8")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def apply_overrides(document: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the recipe document with dotted-path values set (sections created as needed)."""
    out = json.loads(json.dumps(document))
    for dotted, value in overrides.items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[last] = value
    return out


def model_label(config: dict[str, Any] | None, fallback: str) -> str:
    """"Qwen3-4B" for the real dims (random-init or not); the path's name otherwise."""
    if config:
        from qwenrecipes.data.tiny import QWEN3_PRESETS, RANDOM_INIT_KEY

        for name, dims in QWEN3_PRESETS.items():
            if (dims.hidden_size, dims.num_hidden_layers, dims.intermediate_size) == (
                    config.get("hidden_size"), config.get("num_hidden_layers"), config.get("intermediate_size")):
                label = {"tiny-qwen3": "tiny-Qwen3"}.get(name, name.replace("qwen3-", "Qwen3-").upper()
                                                          .replace("QWEN3-", "Qwen3-"))
                random = RANDOM_INIT_KEY in config or "random" in fallback
                return label + (" (random init)" if random else "")
    return Path(fallback).name or fallback


def prepare_random_model(spec: str, cache_dir: Path) -> Path:
    """``random:qwen3-4b`` -> a folder with config + real Qwen3 tokenizer (weights come from
    ``materialize_weights`` on the machine that trains: no multi-GB file is ever shipped)."""
    from qwenrecipes.data.tiny import build_random_qwen3

    preset = spec.split(":", 1)[1]
    folder = cache_dir / f"random-{preset}-s0"
    if not (folder / "config.json").is_file():
        try:
            build_random_qwen3(folder, preset=preset, seed=0)
        except QwenRecipesError:
            if not (folder / "config.json").is_file():  # another bench won the race: same content
                raise
    return folder


_MATERIALIZE = r"""
import json, os, shutil, sys, tempfile, time
import torch
from transformers import AutoConfig, AutoModelForCausalLM
folder = sys.argv[1]
cfg = json.load(open(os.path.join(folder, "config.json")))
seed = int((cfg.get("qwenrecipes_random_init") or {}).get("seed", 0))
torch.manual_seed(seed)
t = time.time()
config = AutoConfig.from_pretrained(folder)
device = "cuda" if torch.cuda.is_available() else "cpu"
with torch.device(device):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(folder)))
model.save_pretrained(tmp)
# Keep our config.json (written for every engine's transformers); take only the weight files.
for name in os.listdir(tmp):
    if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        os.replace(os.path.join(tmp, name), os.path.join(folder, name))
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps({"materialized": folder, "device": device, "seconds": round(time.time() - t, 1),
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def has_weights(model_dir: Path) -> bool:
    return any(p.name.endswith(".safetensors") for p in model_dir.glob("*.safetensors"))


def materialize_weights(model_dir: Path, python: str, env: dict[str, str], timeout: float = 900.0) -> str:
    """Random-init the weights of a config-only model folder with ``from_config`` (bf16, on the GPU when
    there is one) in the engine's interpreter, once per machine. Returns the snippet's JSON line."""
    if has_weights(model_dir):
        return "present"
    proc = subprocess.run([python, "-c", _MATERIALIZE, str(model_dir)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise QwenRecipesError(f"could not materialize random weights in {model_dir}: {' | '.join(tail)}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "ok"


def synthetic_data(spec: str, out_dir: Path, seed: int = 0) -> Path:
    """``96x2048`` -> out_dir/data/synthetic-96x2048-s0.jsonl: exact-length ChatML rows (real Qwen3 tokenizer);
    ``4000xlmsys:4096``: row lengths drawn from a lognormal fitted to LMSYS-Chat-1M, at most 4096 tokens
    (data/lengths.py: the source and the numbers)."""
    match = re.fullmatch(r"(\d+)x(?:(\d+)|lmsys:(\d+))", spec.strip())
    if not match:
        raise QwenRecipesError(f"--synthetic-data {spec!r}: expected ROWSxTOKENS (e.g. 96x2048) or "
                               "ROWSxlmsys:MAX_TOKENS (e.g. 4000xlmsys:4096, realistic chat lengths)")
    rows = int(match.group(1))
    lengths: int | list[int]
    if match.group(2):
        lengths = int(match.group(2))
        path = out_dir / "data" / f"synthetic-{rows}x{lengths}-s{seed}.jsonl"
    else:
        from qwenrecipes.data.lengths import lmsys_lengths

        cap = int(match.group(3))
        try:
            lengths = lmsys_lengths(rows, cap, seed)
        except ValueError as exc:
            raise QwenRecipesError(f"--synthetic-data {spec!r}: {exc}") from None
        path = out_dir / "data" / f"synthetic-{rows}xlmsys{cap}-s{seed}.jsonl"
    if not path.is_file():
        from qwenrecipes.data.synthetic import synthetic_chatml_rows, write_jsonl

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_jsonl(tmp, synthetic_chatml_rows(rows, lengths, seed))
        os.replace(tmp, path)
    return path
