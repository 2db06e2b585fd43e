"""`qwenrecipes env ...`: thin Click wrappers over the per-engine virtualenvs (qwenrecipes.run.env*).

Each subcommand parses options, calls one library function and prints with rich; errors are
EngineError, which cli.main maps to exit code 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qwenrecipes.cli.common import make_console
from qwenrecipes.run import env_doctor, env_install, env_locks, envs

ENGINE_CHOICE = click.Choice(sorted(env_locks.env_names()))


def _console() -> Any:
    return make_console()


def _env_dir(ctx: click.Context) -> Path | None:
    value = (ctx.obj or {}).get("env_dir")
    return Path(value) if value else None


@click.group("env")
@click.option(
    "--env-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where engine envs live (default: $QWENRECIPES_ENV_DIR, else $QWENRECIPES_HOME/envs).",
)
@click.pass_context
def env(ctx: click.Context, env_dir: Path | None) -> None:
    """Per-engine virtualenvs, built from pinned lock files (the engines' pins conflict)."""
    ctx.ensure_object(dict)
    ctx.obj["env_dir"] = env_dir


@env.command("install")
@click.argument("engines", nargs=-1, required=True, type=ENGINE_CHOICE)
@click.option("--force", is_flag=True, help="Rebuild even when a healthy env for the current lock exists.")
@click.option("--python", "python", default=None, help="Base interpreter for the venv (default: this one).")
@click.pass_context
def install(ctx: click.Context, engines: tuple[str, ...], force: bool, python: str | None) -> None:
    """Build the env of each ENGINE (minutes: several GB of wheels). A healthy env is left as it is."""
    console = _console()
    for engine in dict.fromkeys(engines):  # keep order, drop repeats
        with console.status(f"[bold]{engine}[/]: starting") as status:
            result = env_install.install_env(
                engine,
                env_dir=_env_dir(ctx),
                python=python,
                force=force,
                progress=_Reporter(console, status, engine),
            )
        if not result.created:
            console.print(f"[green]{engine}[/]: already installed at {result.env.path}")
            continue
        note = " [yellow](needs a CUDA GPU to import)[/]" if result.health == "needs-gpu" else ""
        console.print(
            f"[green]{engine}[/]: installed at {result.env.path} in {result.seconds:.0f} s{note}"
            f" — {_versions(result.env.versions)}"
        )


class _Reporter:
    """Progress callback for install_env: a live status line with pip's current output, plus one
    permanent line per step so a CI log (where the spinner does not animate) shows where time went."""

    def __init__(self, console: Any, status: Any, engine: str) -> None:
        self.console, self.status, self.engine = console, status, engine
        self.started = time.monotonic()
        self.stage = ""

    def __call__(self, stage: str, message: str) -> None:
        from rich.markup import escape

        elapsed = time.monotonic() - self.started
        if stage == "done":  # the command prints its own final line
            return
        if stage != self.stage:
            self.stage = stage
            self.console.print(f"[dim]{elapsed:6.0f}s[/] {self.engine} [cyan]{stage}[/]: {escape(message[:160])}")
        self.status.update(f"[bold]{self.engine}[/] [cyan]{stage}[/] {elapsed:.0f}s: {escape(message[:120])}")


def _versions(versions: dict[str, str]) -> str:
    keys = ("engine", "torch", "transformers", "peft", "trl", "python")
    return ", ".join(f"{k} {versions[k]}" for k in keys if versions.get(k))


@env.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Show every env: current (matches today's lock), stale (older lock) or incomplete."""
    from rich.table import Table

    console = _console()
    infos = envs.list_envs(env_dir=_env_dir(ctx))
    root = envs.env_root(_env_dir(ctx))
    if not infos:
        console.print(f"no engine envs under {root}: run `qwenrecipes env install ENGINE`")
        return
    table = Table(title=f"engine envs in {root}", title_justify="left")
    for column in ("engine", "status", "health", "version", "torch", "transformers", "created"):
        table.add_column(column)
    table.add_column("folder", no_wrap=True)
    colour = {"current": "green", "stale": "yellow", "incomplete": "red"}
    for info in infos:
        marker = info.marker or {}
        versions = {k: str(v) for k, v in dict(marker.get("versions", {})).items() if v}
        table.add_row(
            info.engine,
            f"[{colour[info.status]}]{info.status}[/]",
            str(marker.get("health", "-")),
            versions.get("engine", "-"),
            versions.get("torch", "-"),
            versions.get("transformers", "-"),
            str(marker.get("created", "-"))[:16].replace("T", " "),  # to the minute is enough here
            info.path.name,
        )
    console.print(table)
    if any(i.status == "stale" for i in infos):
        console.print("stale envs can go: `qwenrecipes env remove ENGINE --stale`")


@env.command("doctor")
@click.argument("engine", required=False, type=ENGINE_CHOICE)
@click.pass_context
def doctor(ctx: click.Context, engine: str | None) -> None:
    """Check ENGINE's env (default: every engine) and print the command that fixes what is missing.

    Exits 1 whenever it reports a problem: a broken or half-installed env, or a named engine that is not
    installed. Without ENGINE, an engine that was never installed is listed as such (with its install command),
    not as a problem: nobody needs all four.
    """
    from rich.markup import escape

    console = _console()
    failed = False
    for name in [engine] if engine else sorted(env_locks.env_names()):
        with console.status(f"checking {name} (imports the engine: can take a minute)"):
            report = env_doctor.doctor(name, env_dir=_env_dir(ctx))
        never_installed = not report.installed and report.problems[:1] != [] and \
            report.problems[0].startswith("not installed")
        if engine is None and never_installed:
            console.print(f"[bold]{name}[/]: [yellow]not installed[/] (install: [bold]{report.fix}[/])")
            continue
        mark = "[green]ok[/]" if report.ok else "[red]problem[/]"
        console.print(f"[bold]{name}[/]: {mark}")
        console.print(f"  env folder : {report.path or '-'}")
        console.print(
            f"  installed  : {_yes(report.installed)}   marker: {_yes(report.marker)}"
            f"   python runs: {_yes(report.python_runs)}"
        )
        if report.health is not None:
            health = report.health
            console.print(f"  health     : {health.status} ({health.seconds:.0f} s) {escape(health.message)}")
            if health.versions:
                console.print(f"  versions   : {_versions(health.versions)}")
        for problem in report.problems:
            console.print(f"  [red]-[/] {escape(problem)}")
        if report.stale and report.ok:
            console.print(f"  [yellow]{len(report.stale)} stale env(s)[/]: `qwenrecipes env remove {name} --stale`")
        if report.fix:
            console.print(f"  fix        : [bold]{report.fix}[/]")
        failed = failed or not report.ok
    if failed:
        ctx.exit(1)


def _yes(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


@env.command("remove")
@click.argument("engine", type=ENGINE_CHOICE)
@click.option("--stale", "stale_only", is_flag=True, help="Only envs of older locks (and unfinished ones).")
@click.pass_context
def remove(ctx: click.Context, engine: str, stale_only: bool) -> None:
    """Delete ENGINE's envs (all of them, or with --stale only the outdated ones)."""
    console = _console()
    removed = envs.remove_env(engine, env_dir=_env_dir(ctx), stale_only=stale_only)
    if not removed:
        console.print(f"nothing to remove for {engine}")
    for path in removed:
        console.print(f"removed {path}")


COMMANDS = [env]
