"""`qwenrecipes run`, `runs` and `show`: thin Click wrappers over runner.py and runs.py.

Exit codes of `run`: 0 ok, 1 the engine failed (its error is shown), 130 interrupted; 2 (from cli.main)
when the run could not start (bad recipe, run dir refused, env missing).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import click

from qwenrecipes.cli import ENGINE
from qwenrecipes.cli.common import make_console, recipe_argument
from qwenrecipes.run.events import Event

TARGETS = ["auto", "cpu", "cuda"]
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _fmt(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


class _ProgressView:
    """Feeds the rich progress bar from the runner's events; warnings and errors print above it."""

    def __init__(self, verbose: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = make_console(stderr=True)
        self.verbose = verbose
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
        self.task = self.progress.add_task("starting", total=None, loss="-", tps="-")
        self.last_tokens: tuple[float, float] | None = None

    def __enter__(self) -> _ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def on_event(self, event: Event) -> None:
        kind = event["type"]
        if kind == "start":
            self.progress.update(self.task, description=event.get("engine", "engine"), total=event.get("total_steps"),
                                 completed=event.get("start_step") or 0)
        elif kind == "progress" and "desc" not in event:
            self.progress.update(self.task, completed=event["n"], total=event["total"])
        elif kind == "train":
            fields: dict[str, Any] = {"loss": _fmt(event.get("loss"))}
            tokens_per_s = event.get("tokens_per_s")
            if tokens_per_s is None and isinstance(event.get("tokens_seen"), (int, float)):
                # Only cumulative tokens reported: the rate is their change between two log events.
                now = (float(event["t"]), float(event["tokens_seen"]))
                if self.last_tokens and now[0] > self.last_tokens[0]:
                    tokens_per_s = (now[1] - self.last_tokens[1]) / (now[0] - self.last_tokens[0])
                self.last_tokens = now
            if tokens_per_s is not None:
                fields["tps"] = _fmt(tokens_per_s, ".0f")
            self.progress.update(self.task, completed=event["step"], **fields)
        elif kind == "eval":
            self.console.print(f"step {event.get('step')}: eval_loss {_fmt(event.get('eval_loss'))}")
        elif kind == "checkpoint":
            self.console.print(f"[dim]checkpoint {event.get('path')}[/dim]")
        elif kind == "warning" and (self.verbose or event.get("source") == "qwenrecipes"):
            self.console.print(f"[yellow]warning:[/yellow] {event.get('message')}", markup=True, highlight=False)
        elif kind == "error":
            self.progress.update(self.task, description="[red]error")
        elif kind == "end":
            colour = {"ok": "green", "failed": "red"}.get(event.get("status", ""), "yellow")
            self.progress.update(self.task, description=f"[{colour}]{event.get('status')}")
        elif kind == "raw" and self.verbose:
            self.console.print(event.get("message", ""), markup=False, highlight=False)


def _target(value: str) -> str | None:
    return None if value == "auto" else value


@click.command("run")
@recipe_argument()
@click.option("--engine", "-e", type=ENGINE, required=True, help="Engine to train with.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Where the run lives (default runs/<recipe name>-<engine>).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--force", is_flag=True, help="Delete an existing run in --run-dir first (only a qwenrecipes run).")
@click.option("--target", type=click.Choice(TARGETS), default="auto", show_default=True)
@click.option("--stall-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Stop the engine after this many seconds without any output.")
@click.option("--traceback-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Stop the engine when it prints a traceback and then stays silent this long.")
@click.option("--verbose", "-v", is_flag=True, help="Also show the engine's own output lines.")
def run_command(recipe: Path, engine: str, run_dir: Path | None, resume: bool, force: bool, target: str,
                stall_timeout: float, traceback_timeout: float, verbose: bool) -> None:
    """Train RECIPE with one engine, supervised; events.jsonl, engine.log and summary.json land in the run dir."""
    from qwenrecipes.recipe.hardware import check_machine
    from qwenrecipes.recipe.load import load_recipe
    from qwenrecipes.run.runner import execute, prepare_run

    # Before the run dir is claimed: a GPU recipe on a machine without one says what is missing (exit 2).
    check_machine(load_recipe(recipe), _target(target))
    spec = prepare_run(recipe, engine, run_dir=run_dir, resume=resume, force=force, target=_target(target),
                       stall_timeout=stall_timeout, traceback_timeout=traceback_timeout)
    if spec.finished is not None:
        execute(spec)  # runs nothing, releases the run dir's lock
        click.echo(f"{spec.run_dir} has already finished ({spec.finished}): nothing to resume. "
                   f"`qwenrecipes show {spec.run_dir}` shows it; --force instead of --resume trains it again.",
                   err=True)
        return
    if spec.resume_from:
        click.echo(f"resuming {spec.run_dir} from {spec.resume_from} (step {spec.start_step})", err=True)
    with _ProgressView(verbose) as view:
        result = execute(spec, on_event=view.on_event)
    _print_summary(result.summary, result.run_dir)
    # sys.exit, not click's Exit: cli.main runs click with standalone_mode=False, which swallows Exit codes.
    if result.status == "failed":
        sys.exit(EXIT_FAILED)
    if result.status == "interrupted":
        flag, why = result.next_step.split("  ", 1)
        click.echo(f"{'continue' if result.resumable else 'start over'} with: qwenrecipes run {recipe} "
                   f"--engine {engine} --run-dir {result.run_dir} {flag}  {why}", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _print_summary(summary: dict[str, Any], run_dir: Path, err: bool = True) -> None:
    """The run's outcome: on stderr under `run` (beside its progress bar), on stdout for `show`."""
    colour = {"ok": "green", "failed": "red", "interrupted": "yellow"}.get(summary.get("status", ""), "white")
    click.secho(f"{summary.get('status')}: {summary.get('engine')} {summary.get('recipe')} in {run_dir}", fg=colour,
                err=err)
    click.echo(f"  steps {summary.get('steps')}/{summary.get('total_steps') or '?'}, "
               f"loss {_fmt(summary.get('first_loss'))} -> {_fmt(summary.get('final_loss'))} "
               f"(min {_fmt(summary.get('min_loss'))}), wall {_fmt(summary.get('wall_time_s'), '.1f')} s, "
               f"{_fmt(summary.get('steps_per_s'), '.3g')} steps/s, {_fmt(summary.get('tokens_per_s'), '.0f')} tok/s",
               err=err)
    artifacts = summary.get("artifacts") or {}
    if artifacts.get("adapter_dir"):
        click.echo(f"  adapter: {run_dir / artifacts['adapter_dir']}", err=err)
    error = summary.get("error")
    if error and summary.get("status") == "failed":
        click.echo(f"  {error.get('reason')}", err=err)
        if error.get("text"):
            click.echo("\n".join("    " + line for line in str(error["text"]).splitlines()[-25:]), err=err)
        if error.get("fix"):
            click.secho(f"  likely cause ({error.get('class')}): {error['fix']}", fg="yellow", err=err)
        click.echo(f"  full log: {run_dir / 'engine.log'}", err=err)


@click.command("runs")
@click.argument("root", type=click.Path(path_type=Path), default=Path("runs"), required=False)
def runs_command(root: Path) -> None:
    """List run dirs under ROOT (default runs/) with their summaries."""
    from rich.table import Table

    from qwenrecipes.run.runs import list_runs

    found = list_runs(root)
    if not found:
        click.echo(f"no runs under {root}: start one with `qwenrecipes run RECIPE --engine ENGINE`")
        return
    table = Table(show_lines=False)
    for column in ("run", "engine", "status", "steps", "first loss", "final loss", "wall s", "tok/s", "started"):
        table.add_column(column, justify="right" if column not in ("run", "engine", "status") else "left")
    for run in found:
        s = run.summary or {}
        started = datetime.datetime.fromtimestamp(run.created).strftime("%Y-%m-%d %H:%M") if run.created else "-"
        table.add_row(str(run.path), run.engine, run.status, f"{s.get('steps', '-')}/{s.get('total_steps') or '?'}",
                      _fmt(s.get("first_loss")), _fmt(s.get("final_loss")),
                      _fmt(s.get("total_wall_time_s") or s.get("wall_time_s"), ".0f"),
                      _fmt(s.get("tokens_per_s"), ".0f"), started)
    make_console().print(table)
    for run in found:  # damaged run files: named, never a traceback
        for problem in run.problems:
            click.echo(f"warning: {problem}", err=True)


@click.command("show")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--no-plot", is_flag=True, help="Do not write loss.png.")
def show_command(run_dir: Path, no_plot: bool) -> None:
    """Print a run's summary and write its loss curve to RUN_DIR/loss.png."""
    from qwenrecipes.run.runs import load_run, loss_curves, plot_loss

    run = load_run(run_dir)
    problems = list(run.problems)
    events = run.events(problems)
    for problem in problems:  # damaged run files: named with their line, never a traceback
        click.echo(f"warning: {problem}", err=True)
    if run.summary is None:
        click.echo(f"{run_dir}: no summary.json yet (still running, or killed with -9); events so far: "
                   f"{len(events)}")
    else:
        _print_summary(run.summary, run_dir, err=False)
        _, evals = loss_curves(events)
        if evals:
            click.echo(f"  eval loss {_fmt(evals[0][1])} (step {evals[0][0]}) -> {_fmt(evals[-1][1])} "
                       f"(step {evals[-1][0]})")
        versions = run.summary.get("versions") or {}
        click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
        click.echo(f"  recipe sha256 {run.summary.get('recipe_hash')}")
    if not no_plot:
        click.echo(f"wrote {plot_loss(run)}")


COMMANDS = [run_command, runs_command, show_command]
