"""`qwenrecipes bench`: run engines in turn on the same recipe and the same tokens, and compare them.

Fairness rules the code enforces (each one is written into every result row's ``fairness`` notes):

* Every engine gets the same plan: qwenrecipes prepares, filters and orders the rows itself (plan.train_stream),
  so step k of every engine consumes the same rows. The bench forces ``max_steps``, ``logging_steps: 1`` (one
  timestamped log line per optimizer step; the loss ``.item()`` behind it syncs the GPU, so the line's arrival
  time is the step's end), no checkpoints and no eval.
* Tokens are counted here, with the real Qwen3 tokenizer, from the rows each optimizer step consumes: the
  non-padding input tokens (``tokens_per_s``) and the supervised label tokens (``supervised_tokens_per_s``).
  Engine counters are only a cross-check (Axolotl counts trainable tokens, LLaMA-Factory inputs incl. padding).
* The first ``warmup`` steps (Triton JIT, autotune, allocator growth) are excluded; tokens/s is the measured
  window's tokens over its wall time, p50/p95 are per-step times inside it.
* Peak memory comes from two sources: torch's own counters inside the engine process (an ``atexit`` hook put on
  the engine's PYTHONPATH as ``sitecustomize``; Axolotl also logs max_allocated) and an outside NVML /
  nvidia-smi sampler thread (whole GPU, CUDA context and allocator cache included).
* A gradient norm of exactly 0, a NaN/inf loss, or a throughput above the physical ceiling (the bf16 matrix
  rate over the model's FLOPs per token) means the measurement is wrong: the row is reported as ``failed``.

Layering: ``prepare_point`` (plan + render + token counts, CPU only), ``execute_point`` (engine run through
``runner.execute``, which owns the process, the log and the normalized events), ``measure`` (pure: events ->
metrics), ``write_report`` (results.json, report.md, PNG plots). Library code: no printing, no exit.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.memory import ModelDims, read_model_config
from qwenrecipes.run.events import Event, read_events

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
MEMORY_MARK = "QWENRECIPES_BENCH_MEMORY "
PROFILE_MARK = "QWENRECIPES_BENCH_PROFILE "
SHIM_DIR = ".bench-shim"
BASELINE_ENGINE = "trl"
DEFAULT_STEPS = 15
DEFAULT_WARMUP = 4
# bf16 dense matrix rate measured on the H200 benchmark host (KINDS.md: 769-798 TFLOP/s on random data).
DEFAULT_PEAK_TFLOPS = 790.0
ROW_FIELDS = ("engine", "engine_version", "gpu", "model", "method", "seq_len", "micro_batch", "grad_accum",
              "gradient_checkpointing", "tokens_per_s", "step_time_p50", "step_time_p95", "peak_vram_gb",
              "loss_first", "loss_last", "status", "command", "fairness")
# Distributions whose versions go into each row (the engine's own first).
VERSION_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
                    "liger_kernel", "triton")
ENGINE_DISTRIBUTIONS = {"axolotl": "axolotl", "llamafactory": "llamafactory", "trl": "trl", "unsloth": "unsloth"}
_OOM_RE = re.compile(r"OutOfMemoryError|CUDA out of memory|out of memory", re.IGNORECASE)

OnMessage = Callable[[str], None]


def _quiet(message: str) -> None:
    """Default progress callback: the library never prints."""


# ------------------------------------------------------------------------------------------- overrides


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


# --------------------------------------------------------------------------------------------- model


def flops_per_token(dims: ModelDims, seq_len: int, method: str, gradient_checkpointing: bool) -> float:
    """Training FLOPs per token: 2 per weight forward, 2 more for activation grads, 2 more for weight grads
    (full fine-tuning only: LoRA's frozen base needs none, its adapters are ~0.5% extra), and one more layer
    forward with checkpointing. Causal attention: QK^T and PV cost 2*2*seq*q_dim/2 per token per layer forward,
    twice that backward. The ceiling this gives is an upper bound: real kernels never reach the matrix rate."""
    layers_fwd = 2.0 * dims.layers * dims.layer_matmul_params
    head_fwd = 2.0 * dims.vocab * dims.hidden
    attn_fwd = 2.0 * seq_len * dims.heads * dims.head_dim * dims.layers
    forward = layers_fwd + head_fwd + attn_fwd
    activation_grads = layers_fwd + head_fwd + 2.0 * attn_fwd  # attention backward: dQ, dK, dV, dP
    weight_grads = layers_fwd + head_fwd if method == "full" else 0.0
    recompute = layers_fwd + attn_fwd if gradient_checkpointing else 0.0
    return forward + activation_grads + weight_grads + recompute


def ceiling_tokens_per_s(dims: ModelDims, seq_len: int, method: str, gradient_checkpointing: bool,
                         peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> float:
    return peak_tflops * 1e12 / flops_per_token(dims, seq_len, method, gradient_checkpointing)


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
    """``96x2048`` -> out_dir/data/synthetic-96x2048-s0.jsonl: exact-length ChatML rows (real Qwen3 tokenizer)."""
    match = re.fullmatch(r"(\d+)x(\d+)", spec.strip())
    if not match:
        raise QwenRecipesError(f"--synthetic-data {spec!r}: expected ROWSxTOKENS, e.g. 96x2048")
    rows, tokens = int(match.group(1)), int(match.group(2))
    path = out_dir / "data" / f"synthetic-{rows}x{tokens}-s{seed}.jsonl"
    if not path.is_file():
        from qwenrecipes.data.synthetic import synthetic_chatml_rows, write_jsonl

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_jsonl(tmp, synthetic_chatml_rows(rows, tokens, seed))
        os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ launchers


@dataclass(frozen=True)
class Launcher:
    """How an engine process starts. ``venv``: the engine's qwenrecipes env (envs.env_for). ``host``: a given
    interpreter with offline bundle folders on PYTHONPATH (an air-gapped GPU host: `env bundle`)."""

    mode: str = "venv"  # "venv" | "host"
    python: str = "python3"
    pythonpath: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.mode == "venv":
            return "qwenrecipes engine venv"
        return f"{self.python} with PYTHONPATH={os.pathsep.join(self.pythonpath) or '(none)'}"


# Console scripts an offline bundle does not have (it is unzipped wheels): the same entry points as modules.
_CONSOLE_MODULES = {"axolotl": "axolotl.cli.main", "llamafactory-cli": "llamafactory.cli",
                    "accelerate": "accelerate.commands.accelerate_cli", "trl": "trl.cli"}


def host_argv(argv: Sequence[str], python: str) -> list[str]:
    """An engine command as the host interpreter runs it: `python X` -> `PY X`, `axolotl ...` -> `PY -m ...`."""
    head, *rest = argv
    if head in ("python", "python3"):
        return [python, *rest]
    module = _CONSOLE_MODULES.get(head)
    if module is None:
        raise QwenRecipesError(f"no module form known for the engine command {head!r}: run with the engine venv")
    return [python, "-m", module, *rest]


_SHIM = r'''"""qwenrecipes bench probe: report torch's peak CUDA memory when the engine process exits. Optional
QWENRECIPES_BENCH_MEMORY_CAP_GB caps the process's CUDA allocator (shows a recipe fits a smaller card)."""
import atexit
import json
import os
import sys

_CAP = os.environ.get("QWENRECIPES_BENCH_MEMORY_CAP_GB")
if _CAP:
    try:
        import torch as _torch

        if _torch.cuda.is_available():
            _total = _torch.cuda.get_device_properties(0).total_memory
            _torch.cuda.set_per_process_memory_fraction(min(1.0, float(_CAP) * 1024**3 / _total), 0)
    except Exception as _exc:  # never break the engine over the probe
        print("QWENRECIPES_BENCH_CAP_FAILED " + repr(_exc), file=sys.stderr, flush=True)


def _qwenrecipes_bench_report():
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        info = {"max_allocated_gib": torch.cuda.max_memory_allocated() / 1024**3,
                "max_reserved_gib": torch.cuda.max_memory_reserved() / 1024**3,
                "device": torch.cuda.get_device_name(0), "cap_gb": float(_CAP) if _CAP else None}
        sys.stderr.write("QWENRECIPES_BENCH_MEMORY " + json.dumps(info) + "\n")
        sys.stderr.flush()
    except Exception:
        pass


atexit.register(_qwenrecipes_bench_report)

# QWENRECIPES_BENCH_SDPA_PRIORITY=cudnn,flash,efficient,math: torch's scaled_dot_product_attention backend order
# for the whole process (an experiment knob: engines only choose "sdpa", torch picks the kernel behind it).
_SDPA = os.environ.get("QWENRECIPES_BENCH_SDPA_PRIORITY")
if _SDPA:
    try:
        import torch as _torch
        from torch.nn.attention import SDPBackend as _B

        _names = {"cudnn": _B.CUDNN_ATTENTION, "flash": _B.FLASH_ATTENTION, "efficient": _B.EFFICIENT_ATTENTION,
                  "math": _B.MATH}
        _order = [_names[n.strip()] for n in _SDPA.split(",") if n.strip()]
        _torch._C._set_sdp_priority_order([int(b) for b in _order])
        print("QWENRECIPES_BENCH_SDPA " + ",".join(b.name for b in _order), file=sys.stderr, flush=True)
    except Exception as _exc:
        print("QWENRECIPES_BENCH_SDPA_FAILED " + repr(_exc), file=sys.stderr, flush=True)

# QWENRECIPES_BENCH_PROFILE=FIRST:COUNT traces optimizer steps FIRST..FIRST+COUNT-1 with torch.profiler (any engine:
# the trigger is a global optimizer-step hook) and prints GPU kernel time per step by kind: where a step goes.
_PROFILE = os.environ.get("QWENRECIPES_BENCH_PROFILE")
if _PROFILE:
    try:
        import re as _re
        import time as _time

        import torch as _torch
        from torch.optim.optimizer import register_optimizer_step_post_hook as _post_hook

        _first, _count = (int(x) for x in _PROFILE.split(":"))
        _kinds = [("attention", r"flash|fmha|attention|sdpa|cudnn"),
                  ("gemm", r"gemm|nvjet|cutlass|xmma|cublas|matmul|splitK|Kernel2"),
                  ("optimizer", r"multi_tensor|adam|foreach"),
                  ("triton", r"^triton|_kernel$|_fwd|_bwd|_forward|_backward"),
                  ("elementwise", r"elementwise|vectorized|reduce|copy|fill|Cat|index|where|softmax|log_softmax")]
        _prof = {"step": 0, "p": None, "t0": 0.0}

        def _summarize(prof, wall):
            total, kinds, top = 0.0, {}, []
            for evt in prof.key_averages():
                # record_function ranges (e.g. "Optimizer.step#AdamW.step") also appear on the GPU timeline as
                # user annotations spanning their kernels: counting them would count those kernels twice.
                annotation = (getattr(evt, "is_user_annotation", False)
                              or evt.key.startswith(("Optimizer.", "ProfilerStep")))
                if str(getattr(evt, "device_type", "")).endswith("CUDA") and not annotation:
                    us = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
                    total += us
                    kind = next((k for k, rx in _kinds if _re.search(rx, evt.key, _re.I)), "other")
                    kinds[kind] = kinds.get(kind, 0.0) + us
                    top.append((us, evt.key[:90], evt.count))
            top.sort(reverse=True)
            ms = 1000.0 * _count
            return {"steps": _count, "wall_ms_per_step": round(wall * 1000 / _count, 2),
                    "kernel_ms_per_step": round(total / ms, 2),
                    "by_kind_ms_per_step": {k: round(v / ms, 2) for k, v in sorted(kinds.items(), key=lambda x: -x[1])},
                    "top_kernels": [[name, round(us / ms, 3), round(n / _count, 1)] for us, name, n in top[:20]]}

        def _sync():
            if _torch.cuda.is_available():
                _torch.cuda.synchronize()

        def _on_step(optimizer, args, kwargs):
            _prof["step"] += 1
            if _prof["step"] == _first - 1:
                _sync()
                p = _torch.profiler.profile(activities=[_torch.profiler.ProfilerActivity.CPU,
                                                        _torch.profiler.ProfilerActivity.CUDA])
                p.__enter__()
                _prof["p"], _prof["t0"] = p, _time.perf_counter()
            elif _prof["step"] == _first - 1 + _count and _prof["p"] is not None:
                _sync()
                wall = _time.perf_counter() - _prof["t0"]
                p, _prof["p"] = _prof["p"], None
                p.__exit__(None, None, None)
                print("QWENRECIPES_BENCH_PROFILE " + json.dumps(_summarize(p, wall)), file=sys.stderr, flush=True)

        _post_hook(_on_step)
    except Exception as _exc:
        print("QWENRECIPES_BENCH_PROFILE_FAILED " + repr(_exc), file=sys.stderr, flush=True)
'''


def write_shim(out_dir: Path) -> Path:
    folder = out_dir / SHIM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SHIM, encoding="utf-8")
    return folder


def launch_environment(launcher: Launcher, engine: str, extra: dict[str, str], shim: Path,
                       memory_cap_gb: float | None) -> tuple[dict[str, str], str, dict[str, str]]:
    """(environment, python, versions-from-marker) for one engine run."""
    from qwenrecipes.run import envs

    if launcher.mode == "venv":
        engine_env = envs.env_for(engine)  # raises with the install hint when missing
        env = engine_env.run_environment(extra)
        python = str(engine_env.python)
        versions = dict(engine_env.versions)
    else:
        # The host interpreter as it is, minus anything that would pull in another interpreter's packages.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")}
        env.update(envs.base_environment())
        env.update(extra)
        python = launcher.python
        versions = {}
    env["PYTHONUNBUFFERED"] = "1"  # one line per step as it happens: the step timestamps depend on it
    env["PYTHONPATH"] = os.pathsep.join([str(shim), *launcher.pythonpath])
    if memory_cap_gb:
        env["QWENRECIPES_BENCH_MEMORY_CAP_GB"] = f"{memory_cap_gb:g}"
    return env, python, versions


_VERSIONS_SNIPPET = r"""
import importlib.metadata as md, json, os, sys
out = {}
for name in sys.argv[1:]:
    try:
        dist = md.distribution(name)
    except Exception:
        continue
    where = ""
    try:
        loc = os.path.realpath(str(dist.locate_file("")))
        if any(loc.startswith(os.path.realpath(p)) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p):
            where = " (bundle)"
    except Exception:
        pass
    out[name] = dist.version + where
print(json.dumps(out))
"""


def probe_versions(python: str, env: dict[str, str], engine: str) -> dict[str, str]:
    names = [ENGINE_DISTRIBUTIONS.get(engine, engine), *VERSION_PACKAGES]
    try:
        proc = subprocess.run([python, "-c", _VERSIONS_SNIPPET, *names], env=env, capture_output=True, text=True,
                              timeout=120)
        value = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, IndexError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def gpu_name() -> str:
    """The device name as nvidia-smi prints it ("NVIDIA H200"), or "cpu"."""
    if not shutil.which("nvidia-smi"):
        return "cpu"
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i",
                               os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "unknown GPU"


# ------------------------------------------------------------------------------------------- sampler


class MemorySampler(threading.Thread):
    """Whole-GPU memory in use, polled from outside the engine: NVML when importable (cheap, in-process),
    else `nvidia-smi`. Peak and baseline in MiB; ``samples`` counts successful reads."""

    def __init__(self, device_index: int = 0, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.device_index = device_index
        self.interval = interval
        self.peak_mib: float | None = None
        self.baseline_mib: float | None = None
        self.samples = 0
        self.source = "none"
        self.cpu_seconds = 0.0  # the sampler's own cost, for the harness-overhead figure
        self._stop_event = threading.Event()
        self._read: Callable[[], float | None] = self._pick_reader()

    def _pick_reader(self) -> Callable[[], float | None]:
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self.source = "nvml"

            def read_nvml() -> float | None:
                return float(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / 2**20

            return read_nvml
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"

            def read_smi() -> float | None:
                try:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-i", str(self.device_index)], capture_output=True, text=True, timeout=10)
                    return float(out.stdout.strip().splitlines()[0])
                except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                    return None

            return read_smi

        def read_none() -> float | None:
            return None

        return read_none

    def read(self) -> float | None:
        return self._read()

    def run(self) -> None:
        self.baseline_mib = self.read()
        while not self._stop_event.is_set():
            start = time.thread_time()
            value = self.read()
            self.cpu_seconds += time.thread_time() - start
            if value is not None:
                self.samples += 1
                self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


# ------------------------------------------------------------------------------------------ prepare


@dataclass
class PreparedPoint:
    """One engine x one setting, rendered and counted, ready to execute."""

    engine: str
    label: str
    run_dir: Path
    argv: list[str]
    env: dict[str, str]
    python: str
    versions: dict[str, str]
    output_dir: Path
    total_steps: int
    tokens_per_step: list[int]  # non-padding input tokens of each optimizer step (1-based step k -> [k-1])
    supervised_per_step: list[int]  # label (trained) tokens of each step
    info: dict[str, Any]  # recipe-derived row fields (model, method, seq_len, ...)
    fairness: list[str] = field(default_factory=list)
    error: str | None = None  # preparation failed (e.g. a renderer refused): the row still gets written


def step_token_counts(stream: list[list[dict[str, str]]], per_step: int, steps: int) -> tuple[list[int], list[int]]:
    """Input and supervised token counts of each optimizer step, from the rows in training order.
    Input = the plain ChatML text every engine is pinned to; supervised = assistant content + <|im_end|>
    (train_on: assistant). Counted with the real Qwen3 tokenizer, never with an engine's counter."""
    from qwenrecipes.data.prepare import chatml_text, token_lengths

    needed = stream[: per_step * steps]
    if len(needed) < per_step * steps:
        raise QwenRecipesError(f"the data holds {len(stream)} rows in training order, fewer than the "
                               f"{per_step * steps} that {steps} steps of {per_step} need")
    inputs = token_lengths([chatml_text(row) for row in needed])
    assistant_texts: list[str] = []
    owners: list[int] = []
    for index, row in enumerate(needed):
        for message in row:
            if message["role"] == "assistant":
                assistant_texts.append(message["content"] + "<|im_end|>")
                owners.append(index)
    supervised_rows = [0] * len(needed)
    for owner, count in zip(owners, token_lengths(assistant_texts), strict=True):
        supervised_rows[owner] += count
    per_input = [sum(inputs[k * per_step:(k + 1) * per_step]) for k in range(steps)]
    per_supervised = [sum(supervised_rows[k * per_step:(k + 1) * per_step]) for k in range(steps)]
    return per_input, per_supervised


BENCH_FORCED: dict[str, Any] = {
    "training.logging_steps": 1,
    "training.save_steps": None,
    "training.eval_steps": None,
    "data.val_fraction": 0.0,
    "data.eval": None,
}

FAIRNESS_COMMON = [
    "same rows in the same order for every engine (qwenrecipes prepares and orders the data; engines read it "
    "sequentially)",
    "tokens counted by qwenrecipes with the Qwen3 tokenizer from each step's rows, not by the engine",
    "logging every step (the loss .item() syncs the GPU each step in every engine alike); no checkpoints, no eval",
    "warm-up steps excluded from tokens/s and step-time percentiles",
]


def patch_main_config(run_dir: Path, engine: str, patches: dict[str, Any]) -> None:
    """Tuning experiments only: set top-level keys of the engine's rendered YAML config (what a renderer change
    would do), so a setting can be measured before the renderer learns it. Rows record the patches."""
    from qwenrecipes.render.folder import get_engine

    main = run_dir / get_engine(engine).main_file
    if main.suffix not in (".yaml", ".yml"):
        raise QwenRecipesError(f"--patch-config works on YAML configs; {engine}'s main file is {main.name}")
    document = yaml.safe_load(main.read_text(encoding="utf-8")) or {}
    document.update(patches)
    main.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")


def prepare_point(recipe_path: Path, engine: str, label: str, out_dir: Path, *, overrides: dict[str, Any],
                  steps: int, target: str | None, launcher: Launcher, shim: Path,
                  memory_cap_gb: float | None = None, config_patches: dict[str, Any] | None = None) -> PreparedPoint:
    """Plan the recipe with the bench's forced settings, render it for ``engine`` into out_dir/runs/<engine>-<label>
    and count each step's tokens. A renderer or plan failure is kept as ``error`` so the row still appears."""
    from qwenrecipes.engines.base import HF_OFFLINE
    from qwenrecipes.recipe.load import build_recipe, load_recipe_document
    from qwenrecipes.recipe.plan import make_plan
    from qwenrecipes.recipe.resolve import resolve_for_engine
    from qwenrecipes.render.folder import render_plan, write_rendered

    run_dir = out_dir / "runs" / f"{engine}-{label}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    document = apply_overrides(load_recipe_document(recipe_path),
                               {**overrides, **BENCH_FORCED, "training.max_steps": steps,
                                # the one forced value a tuning run may change: logging every k steps measures what
                                # the per-step loss sync itself costs (timing then needs `warmup` divisible by k)
                                "training.logging_steps": overrides.get("training.logging_steps", 1)})
    recipe = build_recipe(document, recipe_path.resolve())
    plan = make_plan(recipe, target=target)
    config = read_model_config(plan.model_path)
    # The settings this engine really gets (auto checkpointing/Liger, a micro-batch split to fit the GPU).
    try:
        resolved = resolve_for_engine(plan, engine)
    except QwenRecipesError:
        resolved = plan  # render_plan below raises the same error, recorded on the row
    training = resolved.recipe.training
    info = {
        "model": model_label(config, plan.model_path),
        "model_path": plan.model_path,
        "method": recipe.method["type"],
        "seq_len": recipe.data["max_seq_length"],
        "micro_batch": training["micro_batch_size"],
        "grad_accum": training["gradient_accumulation_steps"],
        "gradient_checkpointing": training["gradient_checkpointing"] is True,
        "precision": plan.precision,
        "attn": recipe.model["attn"],
        "liger_kernel": training["liger_kernel"] is True,
        "packing": bool(recipe.data["packing"]),
        "lora_r": recipe.lora["r"] if recipe.uses_adapter else None,
        "optimizer": training["optimizer"],
        "overrides": overrides,
        "recipe": str(recipe_path),
        "memory": resolved.memory,
    }
    per_step = plan.effective_batch
    stream = plan.train_stream or []
    tokens, supervised = step_token_counts(stream, per_step, steps)
    fairness = list(FAIRNESS_COMMON)
    try:
        rendered = render_plan(resolved, engine)  # resolved once: render_plan keeps an already resolved plan
        write_rendered(resolved, rendered, run_dir)
        if config_patches:
            patch_main_config(run_dir, engine, config_patches)
            info["config_patches"] = config_patches
            fairness.append(f"rendered {engine} config patched by the bench (not what qwenrecipes renders): "
                            + ", ".join(f"{k}={v}" for k, v in config_patches.items()))
    except Exception as exc:  # a renderer that is not there yet, or refuses the recipe: keep the row
        return PreparedPoint(engine, label, run_dir, [], {}, launcher.python, {}, run_dir, steps, tokens, supervised,
                             info, fairness, error=f"render failed: {type(exc).__name__}: {exc}")
    extra = dict(rendered.environment)
    if Path(plan.model_path).is_absolute():
        # The model and data are local: nothing to fetch, and an air-gapped host would only time out probing.
        extra.update(HF_OFFLINE)
    extra.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        env, python, versions = launch_environment(launcher, engine, extra, shim, memory_cap_gb)
    except Exception as exc:
        return PreparedPoint(engine, label, run_dir, list(rendered.argv), {}, launcher.python, {}, run_dir, steps,
                             tokens, supervised, info, fairness, error=f"engine environment: {exc}")
    argv = list(rendered.argv)
    if launcher.mode == "host":
        try:
            argv = host_argv(argv, python)
        except QwenRecipesError as exc:
            return PreparedPoint(engine, label, run_dir, argv, env, python, versions, run_dir, steps, tokens,
                                 supervised, info, fairness, error=str(exc))
    if engine != BASELINE_ENGINE:
        fairness.append(f"{engine} applies its own kernels/patches where its rendered config enables them "
                        "(that is what is being compared)")
    return PreparedPoint(engine, label, run_dir, argv, env, python, versions, run_dir / recipe.output["dir"], steps,
                         tokens, supervised, info, fairness)


# ------------------------------------------------------------------------------------------ measure


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 10-20 steps it is the honest choice)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def measure(events: list[Event], tokens_per_step: Sequence[int], supervised_per_step: Sequence[int], *,
            warmup: int) -> dict[str, Any]:
    """Pure: normalized events -> timing, loss and sanity figures. Steps are 1-based; the window is steps
    warmup+1..last, timed from the end of step ``warmup`` (its log line) to the end of the last step."""
    train = sorted((e for e in events if e.get("type") == "train" and isinstance(e.get("step"), int)),
                   key=lambda e: e["step"])
    by_step: dict[int, Event] = {}
    for event in train:
        by_step.setdefault(event["step"], event)
    steps = sorted(by_step)
    out: dict[str, Any] = {"steps_logged": len(steps)}
    losses = [by_step[s].get("loss") for s in steps]
    out["loss_curve"] = [[s, by_step[s]["loss"] if _finite(by_step[s].get("loss")) else None] for s in steps]
    numeric_losses = [v for v in losses if _finite(v)]
    out["loss_first"] = numeric_losses[0] if numeric_losses else None
    out["loss_last"] = numeric_losses[-1] if numeric_losses else None
    out["nan_loss"] = any(v is not None and not _finite(v) for v in losses)
    grads = [by_step[s].get("grad_norm") for s in steps if "grad_norm" in by_step[s]]
    out["grad_norm_first"] = grads[0] if grads and _finite(grads[0]) else None
    out["grad_norm_zero"] = any(_finite(g) and g == 0 for g in grads)
    out["grad_norm_nan"] = any(not _finite(g) for g in grads)
    memory = [by_step[s]["memory_gb"] for s in steps if _finite(by_step[s].get("memory_gb"))]
    out["engine_logged_memory_gib"] = max(memory) if memory else None
    last = steps[-1] if steps else 0
    window = [s for s in steps if warmup < s <= last]
    out["warmup_steps_excluded"] = warmup
    if warmup in by_step and len(window) >= 2 and last <= len(tokens_per_step):
        span = by_step[last]["t"] - by_step[warmup]["t"]
        # With logging_steps > 1 (no per-step GPU sync for the loss) a logged interval of k steps counts as k steps
        # of its mean duration; the tokens are every step's in the window, logged or not.
        durations = []
        for before, step in zip([warmup, *window[:-1]], window, strict=True):
            durations += [(by_step[step]["t"] - by_step[before]["t"]) / (step - before)] * (step - before)
        tokens = sum(tokens_per_step[warmup:last])
        supervised = sum(supervised_per_step[warmup:last])
        if span <= 0:
            out["timing_error"] = "log lines of the measured steps arrived at the same instant (buffered output?)"
            return out
        out.update({
            "steps_measured": f"{warmup + 1}..{last}",
            "window_s": round(span, 4),
            "tokens_measured": tokens,
            "tokens_per_step": round(tokens / (last - warmup), 1),
            "tokens_per_s": round(tokens / span, 1),
            "supervised_tokens_per_s": round(supervised / span, 1),
            "step_time_p50": round(_percentile(durations, 50), 4),
            "step_time_p95": round(_percentile(durations, 95), 4),
            "step_time_min": round(min(durations), 4),
            "step_time_max": round(max(durations), 4),
            "step_time_stdev": round(statistics.pstdev(durations), 4),
        })
        seen = [(s, by_step[s].get("tokens_seen")) for s in (warmup, last)]
        if all(_finite(v) for _, v in seen) and seen[1][1] > seen[0][1]:
            out["engine_counter_tokens_per_s"] = round((seen[1][1] - seen[0][1]) / span, 1)
    else:
        out["timing_error"] = (f"{len(steps)} steps logged; timing needs step {warmup} and at least 2 steps after "
                               "it (lower --warmup or raise --steps)")
    return out


def memory_probe(events: list[Event]) -> dict[str, Any] | None:
    """The shim's exit line (a `raw` event): torch max_allocated / max_reserved inside the engine."""
    return shim_line(events, MEMORY_MARK)


def shim_line(events: list[Event], mark: str) -> dict[str, Any] | None:
    """The JSON payload of the shim's last line starting with ``mark`` (memory at exit, kernel profile)."""
    for event in reversed(events):
        message = event.get("message")
        if isinstance(message, str) and message.startswith(mark):
            try:
                value = json.loads(message[len(mark):])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def classify_status(run_status: str, error_text: str, metrics: dict[str, Any], ceiling: float | None,
                    ) -> tuple[str, list[str]]:
    """ok / oom / failed, with the reasons. Sanity failures override an engine that exited 0."""
    reasons: list[str] = []
    if run_status != "ok":
        if _OOM_RE.search(error_text or ""):
            return "oom", ["CUDA out of memory"]
        reasons.append(f"engine run {run_status}: {(error_text or '').strip().splitlines()[-1][:300]}"
                       if (error_text or "").strip() else f"engine run {run_status}")
    if metrics.get("nan_loss"):
        reasons.append("NaN/inf loss")
    if metrics.get("grad_norm_zero"):
        reasons.append("gradient norm 0: nothing is being trained")
    if metrics.get("grad_norm_nan"):
        reasons.append("NaN gradient norm")
    if metrics.get("timing_error"):
        reasons.append(metrics["timing_error"])
    tps = metrics.get("tokens_per_s")
    if ceiling and _finite(tps) and tps > ceiling:
        reasons.append(f"{tps:,.0f} tok/s is above the physical ceiling {ceiling:,.0f} tok/s: the timing is wrong")
    return ("failed" if reasons else "ok"), reasons


# ------------------------------------------------------------------------------------------ execute


def execute_point(point: PreparedPoint, *, warmup: int, gpu: str, peak_tflops: float = DEFAULT_PEAK_TFLOPS,
                  stall_timeout: float = 600.0, on_message: OnMessage = _quiet) -> dict[str, Any]:
    """Run one prepared point (unless preparation failed) and return its results row."""
    from qwenrecipes.run import runner

    row: dict[str, Any] = {
        "engine": point.engine, "label": point.label, "engine_version": None, "gpu": gpu, **point.info,
        "steps": point.total_steps, "warmup": warmup, "command": " ".join(point.argv),
        "run_dir": str(point.run_dir), "fairness": point.fairness,
    }
    config = read_model_config(point.info["model_path"])
    ceiling = None
    if config:
        try:
            dims = ModelDims.from_config(config)
            ceiling = ceiling_tokens_per_s(dims, int(point.info["seq_len"]), point.info["method"],
                                           bool(point.info["gradient_checkpointing"]), peak_tflops)
        except (KeyError, TypeError, ValueError):
            ceiling = None
    row["ceiling_tokens_per_s"] = round(ceiling, 1) if ceiling and gpu != "cpu" else None
    if point.error:
        row.update({"status": "failed", "error": point.error, "tokens_per_s": None, "step_time_p50": None,
                    "step_time_p95": None, "peak_vram_gb": None, "loss_first": None, "loss_last": None})
        return row
    versions = probe_versions(point.python, point.env, point.engine) or dict(point.versions)
    row["versions"] = versions
    row["engine_version"] = versions.get(ENGINE_DISTRIBUTIONS.get(point.engine, point.engine))
    sampler = MemorySampler() if gpu != "cpu" else None
    if sampler:
        sampler.start()
    spec = runner.RunSpec(run_dir=point.run_dir, engine=point.engine, argv=point.argv, env=point.env,
                          output_dir=point.output_dir, logging_steps=1, total_steps=point.total_steps,
                          recipe_name=f"bench-{point.label}", versions=versions, stall_timeout=stall_timeout)
    harness_cpu0 = time.process_time()
    started = time.perf_counter()

    cpu_at_step: dict[int, float] = {}

    def forward(event: Event) -> None:
        if event.get("type") == "train":
            if isinstance(event.get("step"), int):
                cpu_at_step[event["step"]] = time.process_time() + (sampler.cpu_seconds if sampler else 0.0)
            on_message(f"  {point.engine}/{point.label} step {event.get('step')} loss={event.get('loss')}")

    try:
        result = runner.execute(spec, on_event=forward)
        run_status, summary = result.status, result.summary
    except Exception as exc:  # the runner could not even start the engine: still a row
        run_status, summary = "failed", {"error": {"text": f"{type(exc).__name__}: {exc}"}}
    wall = time.perf_counter() - started
    harness_cpu = time.process_time() - harness_cpu0
    if sampler:
        sampler.stop()
    events = read_events(point.run_dir / runner.EVENTS_FILE)
    metrics = measure(events, point.tokens_per_step, point.supervised_per_step, warmup=warmup)
    probe = memory_probe(events)
    error = summary.get("error") or {}
    error_text = "\n".join(str(error.get(k) or "") for k in ("reason", "text"))
    status, reasons = classify_status(run_status, error_text, metrics, ceiling if gpu != "cpu" else None)
    torch_gib = probe.get("max_allocated_gib") if probe else None
    axolotl_gib = metrics.get("engine_logged_memory_gib")
    nvml_gib = sampler.peak_mib / 1024 if sampler and sampler.peak_mib is not None else None
    # Some engines reset torch's peak counters mid-run (Axolotl does, per logging step), so the exit hook alone can
    # under-report: take the larger of the two in-process torch figures, NVML only when neither exists.
    in_process = [v for v in (torch_gib, axolotl_gib) if v is not None]
    peak = max(in_process) if in_process else nvml_gib
    row.update({k: v for k, v in metrics.items() if k not in ("loss_curve",)})
    row.update({
        "status": status,
        "status_reasons": reasons,
        "peak_vram_gb": round(peak, 2) if peak is not None else None,
        "peak_vram_source": ("torch max_allocated, engine log (GiB)" if in_process and peak == axolotl_gib else
                             "torch max_allocated, exit hook (GiB)" if in_process else
                             "NVML whole GPU (GiB)" if nvml_gib is not None else None),
        "peak_vram_torch_allocated_gib": round(max(in_process), 2) if in_process else None,
        "peak_vram_exit_hook_gib": round(torch_gib, 2) if torch_gib is not None else None,
        "peak_vram_torch_reserved_gib": round(probe["max_reserved_gib"], 2) if probe and _finite(
            probe.get("max_reserved_gib")) else None,
        "peak_vram_nvml_gib": round(nvml_gib, 2) if nvml_gib is not None else None,
        "nvml_baseline_gib": round(sampler.baseline_mib / 1024, 2) if sampler and sampler.baseline_mib else None,
        "memory_sampler": (f"{sampler.source}, {sampler.samples} samples every {sampler.interval}s" if sampler
                           else None),
        "memory_cap_gb": probe.get("cap_gb") if probe else None,
        "wall_s": round(wall, 1),
        "harness_cpu_s": round(harness_cpu + (sampler.cpu_seconds if sampler else 0.0), 3),
        "loss_curve": metrics.get("loss_curve"),
        "error": error_text.strip()[-2000:] or None if status != "ok" else None,
        "loss_meaningful": not (config and "qwenrecipes_random_init" in config),
    })
    profile = shim_line(events, PROFILE_MARK)
    if profile:
        # Traced steps run slower (profiler overhead): such a row's throughput is not a speed claim.
        row["kernel_profile"] = profile
    if ceiling and gpu != "cpu" and _finite(row.get("tokens_per_s")):
        row["ceiling_fraction"] = round(row["tokens_per_s"] / ceiling, 3)
    last_step = max(cpu_at_step) if cpu_at_step else None
    if row.get("window_s") and last_step is not None and warmup in cpu_at_step:
        # The harness's own CPU time (pipe reading, parsing, event writing, memory sampling) inside the measured
        # window, against the window's wall time: an upper bound on what it can take from the engine's steps
        # (it runs in another process, on other cores; the engine only pays for writing its log line).
        row["harness_overhead_fraction"] = round((cpu_at_step[last_step] - cpu_at_step[warmup]) / row["window_s"], 5)
    return row


# ------------------------------------------------------------------------------------------ results


def load_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RESULTS_FILE
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    rows = value.get("rows") if isinstance(value, dict) else value
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A re-run of the same engine and label replaces its row; everything else is kept, in order."""
    keys = {(r.get("engine"), r.get("label")) for r in new}
    return [r for r in old if (r.get("engine"), r.get("label")) not in keys] + list(new)


def write_results(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path = out_dir / RESULTS_FILE
    document = {"schema": 1, "fields": list(ROW_FIELDS), "rows": rows,
                "notes": "loss values of a random-init model are not meaningful (speed and memory are); "
                         "peak_vram_gb is torch max_allocated where the engine process reported it"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _baseline_for(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The TRL/PEFT row with the same method, sequence length and checkpointing (the vanilla baseline)."""
    for candidate in rows:
        if (candidate.get("engine") == BASELINE_ENGINE and candidate.get("status") == "ok"
                and all(candidate.get(k) == row.get(k) for k in ("method", "seq_len", "gradient_checkpointing"))):
            return candidate
    return None


def report_markdown(rows: list[dict[str, Any]], plots: list[str]) -> str:
    lines = ["# qwenrecipes bench", ""]
    gpus = sorted({str(r.get("gpu")) for r in rows})
    models = sorted({str(r.get("model")) for r in rows})
    lines.append(f"GPU: {', '.join(gpus)}. Model: {', '.join(models)}.")
    if any(r.get("loss_meaningful") is False for r in rows):
        lines.append("The model is random-init with the real architecture and tokenizer: speed and memory are the "
                     "real model's, **loss values are not meaningful**.")
    lines += ["", "| engine | setting | method | seq | mb×ga | ckpt | tokens/s | vs TRL | step p50 s | step p95 s | "
              "peak GiB (torch) | peak GiB (NVML) | loss first→last | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = _baseline_for(r, rows)
        ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and _finite(r.get("tokens_per_s"))
                 and r.get("status") == "ok" else "—")
        status = str(r.get("status", "?"))
        if status != "ok":
            reasons = r.get("status_reasons") or [(r.get("error") or "").strip().splitlines()[-1:] or [""]][0]
            reason = "; ".join(str(x) for x in reasons if x)
            status = f"{status}: {reason[:120]}" if reason else status
        lines.append(
            f"| {r.get('engine')} {_fmt(r.get('engine_version'))} | {r.get('label')} | {r.get('method')} | "
            f"{r.get('seq_len')} | {r.get('micro_batch')}×{r.get('grad_accum')} | "
            f"{_fmt(r.get('gradient_checkpointing'))} | {_fmt(r.get('tokens_per_s'))} | {ratio} | "
            f"{_fmt(r.get('step_time_p50'), 3)} | {_fmt(r.get('step_time_p95'), 3)} | "
            f"{_fmt(r.get('peak_vram_torch_allocated_gib') or r.get('peak_vram_gb'), 1)} | "
            f"{_fmt(r.get('peak_vram_nvml_gib'), 1)} | {_fmt(r.get('loss_first'), 3)}→{_fmt(r.get('loss_last'), 3)} | "
            f"{status.replace('|', '/')} |")
    ok = [r for r in rows if r.get("status") == "ok"]
    lines += ["", "## Winners (ok rows)", ""]
    if ok:
        groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
        for r in ok:
            groups.setdefault((r.get("method"), r.get("seq_len")), []).append(r)
        for (method, seq), group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
            fastest = max(group, key=lambda r: r.get("tokens_per_s") or 0)
            lowest = min(group, key=lambda r: r.get("peak_vram_gb") or float("inf"))
            steadiest = min(group, key=lambda r: r.get("step_time_p95") or float("inf"))
            lines.append(f"- {method}, seq {seq}: fastest **{fastest['engine']}/{fastest['label']}** "
                         f"({_fmt(fastest.get('tokens_per_s'))} tok/s); least memory **{lowest['engine']}/"
                         f"{lowest['label']}** ({_fmt(lowest.get('peak_vram_gb'), 1)} GiB); lowest p95 step "
                         f"**{steadiest['engine']}/{steadiest['label']}** "
                         f"({_fmt(steadiest.get('step_time_p95'), 3)} s)")
    else:
        lines.append("- no row finished ok")
    lines += ["", "## How it was measured", ""]
    lines += [f"- {note}" for note in FAIRNESS_COMMON]
    lines.append("- peak GiB (torch) = torch.cuda.max_memory_allocated in the engine process (exit hook); "
                 "peak GiB (NVML) = whole-GPU memory in use, sampled from outside (CUDA context and allocator "
                 "cache included)")
    lines.append("- tokens/s above the physical ceiling, a gradient norm of 0 or a NaN loss mark a row failed")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_plots(out_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """throughput.png, memory.png, loss.png. matplotlib is imported here, with the Agg backend, so nothing else
    in qwenrecipes pays for it and no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r.get('engine')}\n{r.get('label')}" for r in rows]
    colors = ["tab:green" if r.get("status") == "ok" else "tab:red" for r in rows]
    written: list[str] = []
    width = max(6.0, 1.1 * len(rows) + 2)

    fig, ax = plt.subplots(figsize=(width, 4.2))
    ax.bar(names, [r.get("tokens_per_s") or 0 for r in rows], color=colors)
    ax.set_ylabel("tokens/s (qwenrecipes count, warm-up excluded)")
    ax.set_title("Throughput (red: not ok)")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(width, 4.2))
    torch_mem = [r.get("peak_vram_torch_allocated_gib") or r.get("peak_vram_gb") or 0 for r in rows]
    nvml_mem = [r.get("peak_vram_nvml_gib") or 0 for r in rows]
    xs = list(range(len(rows)))
    ax.bar([x - 0.2 for x in xs], torch_mem, width=0.4, label="torch max_allocated")
    ax.bar([x + 0.2 for x in xs], nvml_mem, width=0.4, label="NVML whole GPU")
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("GiB")
    ax.set_title("Peak GPU memory")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        curve = [(s, v) for s, v in (r.get("loss_curve") or []) if v is not None]
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".",
                    label=f"{r.get('engine')}/{r.get('label')}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    title = "Loss curves"
    if any(r.get("loss_meaningful") is False for r in rows):
        title += " (random-init model: values not meaningful)"
    ax.set_title(title, fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
    return written


def write_report(out_dir: Path, rows: list[dict[str, Any]], *, plots: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = write_results(out_dir, rows)
    plot_files = write_plots(out_dir, rows) if plots and rows else []
    report = out_dir / REPORT_FILE
    report.write_text(report_markdown(rows, plot_files), encoding="utf-8")
    return {"results": results, "report": report, **{Path(p).stem: Path(p) for p in plot_files}}


# ------------------------------------------------------------------------------------------ top level


@dataclass(frozen=True)
class BenchOptions:
    engines: tuple[str, ...]
    out_dir: Path
    steps: int = DEFAULT_STEPS
    warmup: int = DEFAULT_WARMUP
    label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    launcher: Launcher = field(default_factory=Launcher)
    model: str | None = None  # "random:qwen3-4b" or a folder; overrides model.name_or_path
    synthetic_data: str | None = None  # "96x2048"; overrides data.train.path
    memory_cap_gb: float | None = None
    config_patches: dict[str, Any] = field(default_factory=dict)
    peak_tflops: float = DEFAULT_PEAK_TFLOPS
    append: bool = True
    stall_timeout: float = 600.0


def _default_label(options: BenchOptions, recipe_path: Path) -> str:
    if options.label:
        return options.label
    parts = [recipe_path.stem]
    for key, value in sorted(options.overrides.items()):
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))[:80]


def run_bench(recipe_path: str | Path, options: BenchOptions, on_message: OnMessage = _quiet) -> list[dict[str, Any]]:
    """Run every engine in turn on one recipe (+ overrides) and write results.json, report.md and plots."""
    from qwenrecipes.paths import qwenrecipes_home

    recipe_path = Path(recipe_path)
    if options.warmup < 1 or options.steps < options.warmup + 2:
        raise QwenRecipesError(f"--steps {options.steps} with --warmup {options.warmup}: need warmup >= 1 and at "
                               "least 2 measured steps after it")
    unknown = [e for e in options.engines if e not in ENGINE_DISTRIBUTIONS]
    if unknown:
        raise QwenRecipesError(f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(ENGINE_DISTRIBUTIONS)}")
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(options.overrides)
    if options.model:
        if options.model.startswith("random:"):
            model_dir = prepare_random_model(options.model, qwenrecipes_home() / "models")
        else:
            model_dir = Path(options.model).expanduser()
        overrides["model.name_or_path"] = str(model_dir.resolve())
    if options.synthetic_data:
        overrides["data.train.path"] = str(synthetic_data(options.synthetic_data, out_dir).resolve())
        overrides.setdefault("data.train.format", "messages")
    label = _default_label(options, recipe_path)
    shim = write_shim(out_dir)
    gpu = gpu_name() if options.target != "cpu" else "cpu"
    rows: list[dict[str, Any]] = []
    for engine in options.engines:
        on_message(f"{engine}/{label}: preparing")
        point = prepare_point(recipe_path, engine, label, out_dir, overrides=overrides, steps=options.steps,
                              target=options.target, launcher=options.launcher, shim=shim,
                              memory_cap_gb=options.memory_cap_gb, config_patches=options.config_patches or None)
        model_dir = Path(point.info["model_path"])
        if point.error is None and model_dir.is_dir() and not has_weights(model_dir):
            on_message(f"{engine}/{label}: random-initialising the weights of {model_dir} (once per machine)")
            env = {k: v for k, v in point.env.items() if k != "QWENRECIPES_BENCH_MEMORY_CAP_GB"}
            on_message(materialize_weights(model_dir, point.python, env))
        on_message(f"{engine}/{label}: running {' '.join(point.argv) or '(not runnable)'}")
        row = execute_point(point, warmup=options.warmup, gpu=gpu, peak_tflops=options.peak_tflops,
                            stall_timeout=options.stall_timeout, on_message=on_message)
        row["launcher"] = options.launcher.describe()
        rows.append(row)
        on_message(f"{engine}/{label}: {row['status']} tokens/s={row.get('tokens_per_s')} "
                   f"p50={row.get('step_time_p50')} peak={row.get('peak_vram_gb')} GiB")
        # Write after each engine so a later crash (or the device's time limit) loses nothing already measured.
        write_results(out_dir, merge_rows(load_rows(out_dir), rows) if options.append else rows)
    all_rows = merge_rows(load_rows(out_dir), rows) if options.append else rows
    write_report(out_dir, all_rows)
    return rows


def main_argv_python() -> str:
    """The interpreter running qwenrecipes (default --python for host mode)."""
    return sys.executable
