"""`qwenrecipes bench` and the offline bundle builder (`qwenrecipes env bundle`). Thin Click wrappers over
qwenrecipes.bench.runner and qwenrecipes.bench.bundle; errors are QwenRecipesError, mapped to exit codes by cli.main.

Also runnable on a GPU host that has no console script: ``PYTHONPATH=$PWD python3 -m qwenrecipes.cli.bench ...``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from qwenrecipes.cli import _engines
from qwenrecipes.cli.common import recipe_argument
from qwenrecipes.errors import QwenRecipesError


def _echo(message: str) -> None:
    click.echo(message, err=True)


@click.command("bench")
@recipe_argument()
@click.option("--engines", "-e", default=None, help="Comma-separated engines, run in turn (default: all).")
@click.option("--steps", type=int, default=15, show_default=True, help="Optimizer steps per engine.")
@click.option("--warmup", type=int, default=4, show_default=True, help="First steps left out of the timing.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out"),
              show_default=True, help="results.json, report.md, plots and one run folder per engine.")
@click.option("--label", default=None, help="Name of this setting in the results (default: recipe + --set keys).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a recipe value for this bench (repeatable), e.g. training.micro_batch_size=8.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: detected.")
@click.option("--model", default=None,
              help="random:qwen3-4b (random-init real architecture + real tokenizer) or a model folder.")
@click.option("--synthetic-data", default=None, metavar="ROWSxTOKENS",
              help="Exact-length synthetic ChatML rows, e.g. 96x2048, or realistic chat lengths (lognormal fitted "
                   "to LMSYS-Chat-1M, capped), e.g. 4000xlmsys:4096 (replaces data.train).")
@click.option("--python", "python", default=None,
              help="Run engines with this interpreter and --pythonpath bundles instead of their venvs.")
@click.option("--pythonpath", multiple=True, help="Bundle site folder for --python (repeatable).")
@click.option("--memory-cap-gb", type=float, default=None,
              help="Cap the engine's CUDA allocator (e.g. 24: show a recipe fits a 24 GB card).")
@click.option("--peak-tflops", type=float, default=790.0, show_default=True,
              help="bf16 matrix rate for the physical-ceiling sanity check.")
@click.option("--patch-config", "patches", multiple=True, metavar="KEY=VALUE",
              help="Tuning experiments: set a top-level key of the rendered YAML config (recorded in the row).")
@click.option("--fresh", is_flag=True, help="Start results.json over instead of merging into it.")
def bench(recipe: Path, engines: str | None, steps: int, warmup: int, out_dir: Path, label: str | None,
          sets: tuple[str, ...],
          target: str | None, model: str | None, synthetic_data: str | None, python: str | None,
          pythonpath: tuple[str, ...], memory_cap_gb: float | None, peak_tflops: float, patches: tuple[str, ...],
          fresh: bool) -> None:
    """Run ENGINES in turn on RECIPE with the same tokens; write results.json, report.md and PNG plots."""
    from qwenrecipes.bench.inputs import apply_overrides, parse_overrides
    from qwenrecipes.bench.launch import Launcher
    from qwenrecipes.bench.runner import BenchOptions, run_bench
    from qwenrecipes.recipe.hardware import check_machine
    from qwenrecipes.recipe.load import build_recipe, load_recipe_document

    if pythonpath and not python:
        raise QwenRecipesError("--pythonpath needs --python (the interpreter that runs the engines)")
    launcher = Launcher(mode="host", python=python, pythonpath=tuple(os.path.abspath(p) for p in pythonpath)) \
        if python else Launcher()
    options = BenchOptions(
        engines=tuple(_engines(engines)), out_dir=out_dir, steps=steps,
        warmup=warmup, label=label, overrides=parse_overrides(sets), target=target, launcher=launcher, model=model,
        synthetic_data=synthetic_data, memory_cap_gb=memory_cap_gb, peak_tflops=peak_tflops, append=not fresh,
        config_patches=parse_overrides(patches))
    # The recipe as bench trains it (--set applied) against this machine: what is missing, before any engine starts.
    check_machine(build_recipe(apply_overrides(load_recipe_document(recipe), options.overrides), recipe), target)
    rows = run_bench(recipe, options, on_message=_echo)
    for row in rows:
        click.echo(f"{row['engine']:<13} {row['label']:<28} {row['status']:<7} "
                   f"tok/s={row.get('tokens_per_s')} p50={row.get('step_time_p50')} "
                   f"p95={row.get('step_time_p95')} peak={row.get('peak_vram_gb')} GiB")
    click.echo(f"wrote {out_dir / 'results.json'} and {out_dir / 'report.md'}")


@click.command("bundle")
@click.argument("engine")
@click.option("--python", "python_version", default="3.12", show_default=True, help="Target CPython X.Y.")
@click.option("--platform", "platforms", multiple=True,
              help="pip --platform tag (repeatable); default: manylinux x86_64 tags.")
@click.option("--host-has", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="`pip freeze` of the host: packages it already has (at an accepted version) are left out.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle folder; its site/ goes on PYTHONPATH on the host.")
@click.option("--max-mib", type=float, default=55.0, show_default=True, help="Fail when the bundle is larger.")
def bundle(engine: str, python_version: str, platforms: tuple[str, ...], host_has: Path | None, out_dir: Path,
           max_mib: float) -> None:
    """An offline, trimmed site-packages folder for ENGINE on a host without network."""
    from qwenrecipes.bench.bundle import build_bundle

    result = build_bundle(engine, python_version, list(platforms) or None, host_has, out_dir, max_mib=max_mib,
                          progress=_echo)
    click.echo(f"wrote {result.site} ({result.size_mib:.1f} MiB, {len(result.packages)} packages); on the host: "
               f"PYTHONPATH={result.site}")


COMMANDS = [bench]
BUNDLE_COMMANDS = [bundle]


if __name__ == "__main__":
    import sys

    group = click.Group("qwenrecipes-bench", commands={"bench": bench, "bundle": bundle})
    try:
        group.main(standalone_mode=False)
    except QwenRecipesError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
