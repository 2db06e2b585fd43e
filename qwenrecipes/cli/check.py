"""`qwenrecipes check` (template and loss-mask conformance per engine) and `qwenrecipes compare` (runs side by
side): thin Click wrappers over check.py and compare.py.

Exit codes of `check`: 0 every checked engine matches the reference (known residuals allowed), 1 a mismatch or
an engine that failed to preprocess; 2 (from cli.main) when the recipe itself is invalid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from qwenrecipes.check.tokens import DEFAULT_SAMPLES, CheckReport, check_engines, residuals_for
from qwenrecipes.cli.common import recipe_argument

TARGETS = ["auto", "cpu", "cuda"]
EXIT_MISMATCH = 1
STATUS_TEXT = {"equal": "equal", "residual": "known residual", "mismatch": "MISMATCH", "error": "ERROR"}
SHOWN = 5  # rows that differ printed per engine without --verbose
STATUS_COLOUR = {"equal": "green", "residual": "yellow", "mismatch": "red", "error": "red"}


def _engine_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    known = check_engines()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise click.BadParameter(f"unknown engine(s) {', '.join(unknown) or '(none)'}; "
                                 f"choose from {', '.join(known)}")
    return names


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def print_report(report: CheckReport, verbose: bool = False) -> None:
    """Per engine: the counts, then the first SHOWN rows that differ (known residual or mismatch, with the diff);
    ``verbose``: every row, equal ones included (every data row is checked, so that is one line per row)."""
    click.echo(f"check {report.recipe}: chat_template {report.chat_template}, train_on {report.train_on}, "
               f"{len(report.samples)} samples ({sum(s.source == 'data' for s in report.samples)} from the data, "
               f"{sum(s.source == 'builtin' for s in report.samples)} built-in hard cases)")
    width = max(len(s.name) for s in report.samples)
    for engine in report.engines:
        if engine.status == "skipped":
            click.secho(f"{engine.engine}: skipped, {engine.reason}", fg="yellow")
            continue
        if engine.status == "error":
            click.secho(f"{engine.engine}: ERROR {engine.reason}", fg="red")
            if engine.detail:
                click.echo(_indent(engine.detail.strip()[-3000:]))
            continue
        counts = {s: sum(r.status == s for r in engine.results) for s in STATUS_TEXT}
        parts = [f"{n} {STATUS_TEXT[s]}" for s, n in counts.items() if n] or ["no rows"]
        click.secho(f"{engine.engine}: {', '.join(parts)} ({engine.handoff} handoff)",
                    fg="green" if engine.ok else "red", bold=True)
        for residual in residuals_for(engine.engine, report.train_on, engine.handoff):
            if any(residual.name in r.residuals for r in engine.results):
                click.echo(f"  known residual {residual.name}: {residual.description}")
        different = [r for r in engine.results if r.status != "equal"]
        # Mismatches before known residuals: they are what fails the check.
        different.sort(key=lambda r: r.status != "mismatch")
        shown = engine.results if verbose else different[:SHOWN]
        for result in shown:
            text = STATUS_TEXT[result.status]
            if result.residuals:
                text += f" ({', '.join(result.residuals)})"
            click.echo(f"  {result.sample:{width}}  " + click.style(text, fg=STATUS_COLOUR[result.status]))
            if result.diff:
                click.echo(_indent(result.diff))
        if not verbose and len(different) > SHOWN:
            click.echo(f"  ... {len(different) - SHOWN} more rows differ (--verbose lists every row)")
    verdict = "every checked engine matches the reference" if report.ok else "mismatches found"
    click.secho(verdict, fg="green" if report.ok else "red", bold=True)


@click.command("check")
@recipe_argument()
@click.option("--engines", "-e", "engines", default=None,
              help="Comma-separated engines (default: every engine with a token-check script; an engine without "
                   "an env is then skipped, a named one is an error).")
@click.option("--samples", "-n", type=click.IntRange(min=0), default=DEFAULT_SAMPLES,
              help="Rows of the recipe's data to check, besides the built-in hard cases (default: every row).")
@click.option("--target", type=click.Choice(TARGETS), default="auto", show_default=True,
              help="Hardware the recipe is resolved for (preprocessing itself never needs a GPU).")
@click.option("--verbose", "-v", is_flag=True,
              help="One line per checked row and engine (default: per engine the counts and the first "
                   f"{SHOWN} rows that differ, with their row ids and diffs).")
@click.option("--json", "as_json", is_flag=True, help="Emit input_ids and labels (-100 masked) per sample and "
              "engine, with the reference, as JSON.")
def check(recipe: Path, engines: str | None, samples: int | None, target: str, verbose: bool,
          as_json: bool) -> None:
    """Prove that each engine's own preprocessing tokenizes and masks RECIPE's data exactly as qwenrecipes'
    rule says (Qwen3 tokenizer on plain ChatML; loss on assistant content + <|im_end|>)."""
    from qwenrecipes.check.tokens import check_recipe
    from qwenrecipes.recipe.plan import plan_recipe

    plan = plan_recipe(recipe, target=None if target == "auto" else target)

    def progress(name: str) -> None:
        click.echo(f"running {name}'s own preprocessing in its env ...", err=True)

    report = check_recipe(plan, _engine_list(engines), data_samples=samples, on_engine=progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print_report(report, verbose=verbose)
    # sys.exit, not click's Exit: cli.main runs click with standalone_mode=False, which swallows Exit codes.
    if not report.ok:
        sys.exit(EXIT_MISMATCH)


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("compare.png"), show_default=True,
              help="Where the overlaid loss curves PNG goes.")
@click.option("--eval", "evaluate", is_flag=True,
              help="First score the runs that have no eval.json on the held-out split (`qwenrecipes eval`).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def compare(run_dirs: tuple[Path, ...], output: Path, evaluate: bool, as_json: bool) -> None:
    """Compare runs: engine, steps, first/final/min loss, wall time, tokens/s, held-out loss and perplexity
    (from eval.json), and overlaid loss curves. Held-out losses more than 3% apart are flagged."""
    from qwenrecipes.run.compare import compare_runs, plot_comparison, quality_problems, relative_spread

    if evaluate:
        from qwenrecipes.evaluate.core import evaluate_runs
        from qwenrecipes.run.quality import read_quality

        missing = [p for p in run_dirs if read_quality(p) is None]
        if missing:
            click.echo(f"evaluating {len(missing)} run(s) on the held-out split...", err=True)
            evaluate_runs(missing)
    rows = compare_runs(list(run_dirs))
    plot = plot_comparison(rows, output)
    problems = quality_problems(rows)
    if as_json:
        click.echo(json.dumps({"runs": [r.to_json() for r in rows], "plot": str(plot), "quality_problems": problems}))
        return
    # A plain fixed-width table: the run paths are long and a wrapped rich table would split them.
    header = ["engine", "steps", "first loss", "final loss", "min loss", "wall time", "tokens/s", "held-out loss",
              "ppl", "status", "run"]
    table = [header] + [[row.engine, _fmt(row.steps, "d"), _fmt(row.first_loss, ".4f"), _fmt(row.final_loss, ".4f"),
                         _fmt(row.min_loss, ".4f"),
                         f"{_fmt(row.wall_time_s, '.1f')} s" if row.wall_time_s is not None else "-",
                         _fmt(row.tokens_per_s, ".0f"), _fmt(row.heldout_loss, ".4f"), _fmt(row.perplexity, ".2f"),
                         row.status, row.run] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for number, line in enumerate(table):
        cells = [cell.ljust(w) if i in (0, 9, 10) else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        click.echo("  ".join(cells).rstrip())
        if number == 0:
            click.echo("  ".join("-" * w for w in widths))
    first, final = relative_spread([r.first_loss for r in rows]), relative_spread([r.final_loss for r in rows])
    if first is not None and final is not None:
        click.echo(f"spread across runs: first loss {first:.2%}, final loss {final:.2%}")
    held = relative_spread([r.heldout_loss for r in rows])
    if held is not None and not problems:
        click.echo(f"held-out loss spread: {held:.2%} (within 3%)")
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if not any(r.quality for r in rows):
        click.echo("held-out loss: run `qwenrecipes eval RUN_DIR...` (or compare --eval) to add it")
    click.echo(f"loss curves: {plot}")


COMMANDS = [check, compare]
