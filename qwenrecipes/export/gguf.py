"""`qwenrecipes export gguf`: a GGUF (f16, q8_0 or q4_k_m) plus an Ollama Modelfile of RUN_OR_DIR, merging an
adapter first; written beside the target and renamed at the end, with the export manifest."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.export.converter import (
    CONVERTER_PACKAGE,
    CONVERTER_SDIST_SHA256,
    CONVERTER_VERSION,
    ensure_converter,
)
from qwenrecipes.export.merge import default_merge_dir, merge, prepare_out
from qwenrecipes.export.source import MANIFEST, Source, is_run_dir, read_manifest, resolve_source, write_json
from qwenrecipes.export.templates import MODELFILE, modelfile_text
from qwenrecipes.export.tools_env import has_llama_cpp, run_tool, tools

QUANTS = ("q4_k_m", "q8_0", "f16")
# GGUF general.file_type per quant (llama.cpp's llama_ftype).
GGUF_FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}


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
    default = default_merge_dir(source)
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
    if out:
        target = Path(out).expanduser()
    elif source.run and (is_run_dir(Path(path).expanduser()) or source.kind == "adapter"):
        target = source.run.run_dir / "gguf"  # a run (or its adapter): beside its merged/
    else:
        # A model folder (README: `export gguf merged/`): beside it, where `verify-export merged/` looks.
        target = model_dir.parent / f"{model_dir.name}-gguf"
    prepare_out(target, force)
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
        (tmp / MODELFILE).write_text(modelfile_text(gguf_name, num_ctx, model_source.chat_template),
                                     encoding="utf-8")
        write_json(tmp / MANIFEST, {
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
