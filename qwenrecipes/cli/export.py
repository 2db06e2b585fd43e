"""Click commands for after training: merge, generate, export gguf, verify-export, push.

Thin wrappers over the qwenrecipes.export modules; the lead attaches ``COMMANDS`` to the main CLI. Library errors
(QwenRecipesError) propagate to cli.main, which maps them to exit code 2.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from qwenrecipes.errors import QwenRecipesError

RUN_OR_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.argument("run", type=RUN_OR_DIR)
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the merged model [default: RUN/merged].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: the base's dtype; bfloat16 for QLoRA (merged into the bf16 base).")
@click.option("--max-shard-size", default="2GB", show_default=True, help="safetensors shard size.")
@click.option("--force", is_flag=True, help="Replace an existing merged folder written by qwenrecipes.")
def merge(run: Path, output: Path | None, dtype: str, max_shard_size: str, force: bool) -> None:
    """Merge RUN's LoRA adapter into its base model (safetensors, tokenizer, chat template, EOS)."""
    from qwenrecipes.export import merge as lib

    result = lib.merge(run, output, dtype=dtype, max_shard_size=max_shard_size, force=force)
    click.echo(f"merged into {result.path} ({result.dtype}, {result.shards} shard(s), chat template "
               f"{result.chat_template}, tokenizer from {result.tokenizer_from})")
    click.echo(f"next: qwenrecipes generate {result.path} --prompt '…'  |  qwenrecipes export gguf {result.path}")


@click.command()
@click.argument("run_or_dir", type=RUN_OR_DIR)
@click.option("--prompt", "-p", required=True, help="The user message.")
@click.option("--system", default=None, help="An optional system message.")
@click.option("--thinking/--no-thinking", default=True, show_default=True,
              help="Qwen3 thinking mode (the official template's enable_thinking).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of sampling (T 0.7, top_p 0.9, top_k 50).")
@click.option("--json", "as_json", is_flag=True, help="Print text and token ids as JSON.")
def generate(run_or_dir: Path, prompt: str, system: str | None, thinking: bool, seed: int, max_new_tokens: int,
             greedy: bool, as_json: bool) -> None:
    """Answer PROMPT with a run's adapter (base + adapter) or a merged model folder."""
    from qwenrecipes.export import generate as lib

    for warning in lib.generation_warnings(greedy=greedy, thinking=thinking):
        click.echo(f"warning: {warning}", err=True)
    result = lib.generate(run_or_dir, prompt, system=system, thinking=thinking, seed=seed,
                          max_new_tokens=max_new_tokens, greedy=greedy)
    if as_json:
        click.echo(json.dumps(asdict(result)))
    else:
        click.echo(result.text)


@click.group()
def export() -> None:
    """Export a merged model (or a run, merged first) for other runtimes."""


@export.command()
@click.argument("run_or_dir", type=RUN_OR_DIR)
@click.option("--quant", type=click.Choice(["q4_k_m", "q8_0", "f16"]), default="q4_k_m", show_default=True)
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export folder [default: RUN/gguf, or MODEL_DIR-gguf].")
@click.option("--force", is_flag=True, help="Replace an existing export (and re-merge an adapter).")
def gguf(run_or_dir: Path, quant: str, output: Path | None, force: bool) -> None:
    """GGUF via llama.cpp's convert_hf_to_gguf.py, plus an Ollama Modelfile."""
    from qwenrecipes.export import gguf as lib

    result = lib.export_gguf(run_or_dir, quant, output, force=force)
    click.echo(f"wrote {result.gguf} and {result.modelfile} (num_ctx {result.num_ctx}) from {result.merged}")
    click.echo(f"next: qwenrecipes verify-export {result.folder}  |  cd {result.folder} && ollama create NAME "
               "-f Modelfile")


@click.command("verify-export")
@click.argument("folder", type=RUN_OR_DIR)
@click.option("--no-runtime", is_flag=True, help="Only check files; load no model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_export(folder: Path, no_runtime: bool, as_json: bool) -> None:
    """Check a merged model, a GGUF export or a run dir: files, EOS/pad ids, chat template, and (when the
    tools env is installed) the same top tokens from adapter, merged model and GGUF."""
    from qwenrecipes.export import verify as lib

    report = lib.verify_export(folder, runtime=not no_runtime)
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "checks": [asdict(c) for c in report.checks],
                               "skipped": report.skipped, "measured": report.measured}, default=str))
    else:
        for check in report.checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        for skipped in report.skipped:
            click.echo(f"skip {skipped}")
    if not report.ok:
        # The FAIL lines above carry each fix; the error names the checks once more for logs that keep stderr only.
        raise QwenRecipesError(f"{len(report.failures)} check(s) failed in {folder}: "
                               + ", ".join(c.name for c in report.failures))


@click.command()
@click.argument("run_or_dir", type=RUN_OR_DIR)
@click.option("--repo-id", required=True, help="user/name on the Hugging Face Hub.")
@click.option("--what", type=click.Choice(["auto", "merged", "adapter", "gguf"]), default="auto", show_default=True,
              help="For a run dir: which folder to upload (auto: merged/ if present, else the adapter).")
@click.option("--private", is_flag=True)
def push(run_or_dir: Path, repo_id: str, what: str, private: bool) -> None:
    """Upload to the Hugging Face Hub. The token is read from $HF_TOKEN only, never stored."""
    from qwenrecipes.export import push as lib

    url = lib.push(run_or_dir, repo_id, what=what, private=private)
    click.echo(f"pushed to {repo_id}: {url}")


COMMANDS: list[click.Command] = [merge, generate, export, verify_export, push]
