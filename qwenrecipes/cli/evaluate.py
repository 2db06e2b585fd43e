"""`qwenrecipes eval` (base vs fine-tuned on the held-out split; lm-eval benchmarks) and `qwenrecipes sweep`
(grid / Optuna over recipe fields): thin Click wrappers over qwenrecipes.evaluate."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from qwenrecipes.cli import ENGINE


@contextlib.contextmanager
def _progress() -> Iterator[Any]:
    """A rich bar fed by the eval script's (what, done, total) progress lines."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task("loading models", total=None)

        def update(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        yield update


@click.command("eval")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--base/--no-base", default=True, show_default=True,
              help="Also score the base model (needed for the improved / worse per-sample table).")
@click.option("--samples", type=int, default=3, show_default=True, help="Held-out prompts generated greedily.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True, help="Held-out rows per forward pass.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Where eval.json, report.md and eval.png go (default: the run dir; eval-<recipe> for several).")
@click.option("--tasks", default=None, help="lm-evaluation-harness tasks, comma-separated (e.g. gsm8k,ifeval).")
@click.option("--include-path", type=click.Path(path_type=Path), default=None,
              help="A folder of your own lm-eval task YAMLs (run as the harness's working directory).")
@click.option("--limit", type=float, default=None, help="lm-eval: examples per task (or a fraction < 1).")
@click.option("--num-fewshot", type=int, default=None)
@click.option("--thinking/--no-thinking", default=None,
              help="lm-eval: --no-thinking renders prompts in Qwen3's non-thinking mode (empty think block).")
@click.option("--online", is_flag=True, help="lm-eval: allow hub tasks to download their datasets.")
def evaluate(run_dirs: tuple[Path, ...], base: bool, samples: int, max_new_tokens: int, batch_size: int,
             out: Path | None, tasks: str | None, include_path: Path | None, limit: float | None,
             num_fewshot: int | None, thinking: bool | None, online: bool) -> None:
    """Did it learn? Held-out loss and perplexity of base vs each run (qwenrecipes' own tokens and mask, the
    same for every engine), which samples improved or got worse, greedy generations side by side; with
    --tasks, lm-evaluation-harness benchmarks on base + adapter."""
    from qwenrecipes.evaluate.core import evaluate_runs, write_result
    from qwenrecipes.evaluate.report import summary_lines

    with _progress() as update:
        result = evaluate_runs(run_dirs, base=base, samples=samples, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, out=out, progress=update, write=tasks is None)
        if tasks is not None:
            from qwenrecipes.evaluate.benchmarks import parse_tasks, run_benchmarks

            result.benchmarks = run_benchmarks(
                [s.spec for s in result.scores], parse_tasks(tasks), chat_template=result.heldout.chat_template,
                include_path=include_path, limit=limit, num_fewshot=num_fewshot, thinking=thinking,
                online=online, progress=update)
            write_result(result)
    held = result.heldout
    click.echo(f"held-out: {len(held.rows)} rows, {sum(r.trained_tokens for r in held.rows)} trained tokens "
               f"({held.source})")
    width = max(len(name) for name, *_ in summary_lines(result))
    click.echo(f"{'model'.ljust(width)}  {'engine':12}  {'loss':>8}  {'perplexity':>12}  vs base")
    for name, engine, loss, ppl, versus in summary_lines(result):
        click.echo(f"{name.ljust(width)}  {engine:12}  {loss:8.4f}  {ppl:12.2f}  {versus}")
    for model, entry in result.benchmarks.get("models", {}).items():
        for task, metrics in entry.get("results", {}).items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                              if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len")
            click.echo(f"  {model} {task}: {shown}")
    for path in result.files:
        click.echo(f"wrote {path}")


@click.command("sweep")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--engine", "-e", type=ENGINE, metavar="ENGINE", required=True, help="The engine every point runs on.")
@click.option("--grid", "grid", multiple=True, metavar="FIELD=V1,V2,...",
              help="A recipe field and its values (repeatable), e.g. --grid method.lora.r=8,16,32.")
@click.option("--param", "params", multiple=True, metavar="FIELD=LOW:HIGH[:log]",
              help="--search optuna: a numeric range (ints stay ints), e.g. training.learning_rate=1e-5:1e-3:log.")
@click.option("--set", "fixed", multiple=True, metavar="FIELD=VALUE", help="A field fixed for every point.")
@click.option("--search", type=click.Choice(["grid", "optuna"]), default="grid", show_default=True)
@click.option("--trials", type=int, default=10, show_default=True, help="--search optuna: trials in all.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="The sweep folder (default sweeps/<recipe name>-<engine>); rerun the same command to resume.")
@click.option("--target", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def sweep(recipe: Path, engine: str, grid: tuple[str, ...], params: tuple[str, ...], fixed: tuple[str, ...],
          search: str, trials: int, out: Path | None, target: str) -> None:
    """Run every point of a grid (or Optuna trials) as an ordinary run, score each on the held-out split, and
    write a table, a heatmap and the best point as a recipe. An interrupted sweep resumes where it stopped."""
    from qwenrecipes.evaluate.sweep import SweepSpec
    from qwenrecipes.evaluate.sweep_run import run_sweep

    spec = SweepSpec.from_cli(recipe, engine, grid=grid, params=params, fixed=fixed, search=search, trials=trials,
                              out=out, target=None if target == "auto" else target)

    def report(line: str) -> None:
        click.echo(line, err=True)

    result = run_sweep(spec, echo=report)
    click.echo(result.table)
    for path in result.files:
        click.echo(f"wrote {path}")
    if result.best is not None:
        click.echo(f"best: {result.best.label} (held-out loss {result.best.loss:.4f}) -> {result.best_recipe}")


COMMANDS = [evaluate, sweep]
