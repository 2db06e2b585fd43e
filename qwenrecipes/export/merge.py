"""`qwenrecipes merge`: the adapter merged into its base (PEFT merge_and_unload in the tools env), written as a
complete model folder: weights, the four tokenizer files, the training chat template, a generation_config that
stops on ``<|im_end|>``, and the export manifest.

QLoRA dequantization decision: a QLoRA adapter is merged into the ORIGINAL base loaded in bfloat16, not
into a 4-bit base dequantized back to bf16. Dequantizing would bake the NF4 rounding error into every
weight, also where LoRA never acts; the original weights keep the untouched layers exact. The price is a
small mismatch (the adapter learned against the rounded weights), the usual QLoRA practice; `verify-export`
measures it as adapter-vs-merged top-token agreement (both load the bf16 base, as 4-bit needs CUDA).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenrecipes.data.tiny import ENDOFTEXT_ID, IM_END_ID, qwen3_generation_config
from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.export.source import (
    MANIFEST,
    Source,
    compute_dtype,
    read_json,
    resolve_source,
    tokenizer_source,
    write_json,
)
from qwenrecipes.export.templates import ENDOFTEXT, IM_END, inference_chat_template, sampling_for
from qwenrecipes.export.tools_env import run_tool, tools


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    chat_template: str
    tokenizer_from: Path
    shards: int


def default_merge_dir(source: Source) -> Path:
    if source.run:
        return source.run.run_dir / "merged"
    return source.path.parent / f"{source.path.name}-merged"


def prepare_out(out: Path, force: bool) -> None:
    """Only replace a folder qwenrecipes wrote (it has our manifest): never a user's folder."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise QwenRecipesError(f"{out} already exists: pass --force to replace it, or -o another folder")
        if not (out / MANIFEST).is_file():
            raise QwenRecipesError(f"{out} exists and was not written by qwenrecipes ({MANIFEST} missing): "
                                   "remove it yourself or pick another -o")
        shutil.rmtree(out)


def write_tokenizer_files(folder: Path, tokenizer_from: Path, template_name: str) -> None:
    """The tokenizer files of ``tokenizer_from`` in ``folder``, with the recipe's inference chat template and
    <|im_end|> as EOS: what a merged model, a GGUF conversion and lm-eval's tokenizer all read."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, folder / name)
    template = inference_chat_template(template_name)
    tok_config = read_json(folder / "tokenizer_config.json")
    tok_config.update(chat_template=template, eos_token=IM_END, pad_token=ENDOFTEXT)
    write_json(folder / "tokenizer_config.json", tok_config)
    # transformers 5 prefers chat_template.jinja over tokenizer_config.json when both exist; the GGUF
    # converter reads either. Write both, identical, so no reader can see a stale one.
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")


def finalize_model_dir(folder: Path, *, tokenizer_from: Path, template_name: str,
                       generation_base: Path | None) -> None:
    """Tokenizer files, chat template, generation_config and config EOS of a merged (or full) model folder:
    the files `verify-export` and the GGUF converter read."""
    write_tokenizer_files(folder, tokenizer_from, template_name)

    generation: dict[str, Any] = qwen3_generation_config()
    if generation_base is not None and (generation_base / "generation_config.json").is_file():
        generation.update(read_json(generation_base / "generation_config.json"))
    generation.update(eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID,
                      do_sample=True, **sampling_for(template_name))  # Qwen3's settings for its think rule
    write_json(folder / "generation_config.json", generation)

    config = read_json(folder / "config.json")
    # A base checkpoint says eos 151643; the chat model we export ends turns on <|im_end|>.
    config.update(eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID)
    write_json(folder / "config.json", config)


def merge(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, dtype: str = "auto",
          max_shard_size: str = "2GB", force: bool = False) -> MergeResult:
    """Merge the adapter of RUN_OR_DIR into its base (PEFT merge_and_unload) and write a complete model."""
    source = resolve_source(path)
    if source.kind != "adapter":
        raise QwenRecipesError(f"{source.path} is a full model, there is no adapter to merge: export it "
                               f"directly (`qwenrecipes export gguf {source.path}`)")
    assert source.base is not None
    target = Path(out).expanduser() if out else default_merge_dir(source)
    prepare_out(target, force)
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
        write_json(tmp / MANIFEST, {
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
            target.rmdir()  # empty (checked by prepare_out)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a model folder is meant to be shared
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(target, merge_dtype, source.chat_template, tok_from, shards)
