"""What RUN_OR_DIR points at (a run dir, an adapter dir or a model dir): the adapter or model folder, its base,
the recipe facts export needs (chat template, max_seq_length, method), the dtype it loads in and where its
tokenizer files come from; plus the JSON helpers and the export manifest every step writes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES, qwen3_tokenizer_dir
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.export.templates import template_name_of

MANIFEST = "qwenrecipes-export.json"
RESOLVED_RECIPE = "recipe.resolved.yaml"  # written by render.py; repeated so no render import is needed
SUMMARY = "summary.json"

SourceKind = Literal["adapter", "model"]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QwenRecipesError(f"cannot read {path}: {exc}") from exc


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


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


def is_run_dir(path: Path) -> bool:
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
        if is_run_dir(parent):
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
        summary = read_json(summary_path)
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
    if is_run_dir(target):
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
        template = template_name_of(model_template(folder))
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
    config = read_json(adapter / "adapter_config.json")
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


def model_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = read_json(config_path)
        if isinstance(config, dict) and isinstance(config.get("chat_template"), str):
            return str(config["chat_template"])
    return None


def _config_dtype(model_dir: str) -> str | None:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = read_json(path)
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
