"""The `qwenrecipes` command line: thin Click wrappers over the library. Errors map to exit codes in main()."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from qwenrecipes import __version__
from qwenrecipes.cli.common import make_console, recipe_argument
from qwenrecipes.engines import ENGINE_MODULES
from qwenrecipes.errors import QwenRecipesError, RecipeError

TARGETS = ["auto", "cpu", "cuda"]
TARGET_HELP = ("Hardware to resolve the recipe for. auto: the recipe's hardware.target, else cuda when a setting "
               "needs a GPU (bf16, qlora, 8-bit optimizer, ...), else this machine's.")


def _target(value: str) -> str | None:
    return None if value == "auto" else value


class EngineName(click.ParamType):
    """An engine of the registry, built in or a plug-in: checked by lookup, so `render -e trl` never lists the
    plug-ins (that reads every installed package's entry points)."""

    name = "engine"

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:  # click 8.2+ passes ctx=
        from qwenrecipes.engines import ENGINES

        return "[" + "|".join(ENGINES) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from qwenrecipes.engines import ENGINES

        if value in ENGINES:
            return str(value)
        self.fail(f"{value!r} is not an engine: choose from {', '.join(ENGINES)}", param, ctx)


ENGINE = EngineName()


def _engines(value: str | None) -> list[str]:
    """Comma-separated engine names; None: every registered engine."""
    from qwenrecipes.engines import ENGINES

    if value is None:
        return list(ENGINES)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise click.BadParameter(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    return names


def _console() -> Any:
    return make_console()


# Commands that live in their own modules (each module exports COMMANDS), by command name. The group imports
# a module only when one of its commands runs (or `--help` lists them all): `render` must not pay for the
# imports of env management, runs, checks and exports. tests/test_cli_imports.py keeps this map complete.
LAZY_COMMANDS: dict[str, str] = {
    "env": "qwenrecipes.cli.env",
    "run": "qwenrecipes.cli.run",
    "runs": "qwenrecipes.cli.run",
    "show": "qwenrecipes.cli.run",
    "check": "qwenrecipes.cli.check",
    "compare": "qwenrecipes.cli.check",
    "bench": "qwenrecipes.cli.bench",
    "merge": "qwenrecipes.cli.export",
    "generate": "qwenrecipes.cli.export",
    "export": "qwenrecipes.cli.export",
    "verify-export": "qwenrecipes.cli.export",
    "push": "qwenrecipes.cli.export",
    "ui": "qwenrecipes.cli.ui",
    "eval": "qwenrecipes.cli.evaluate", "sweep": "qwenrecipes.cli.evaluate",
}
COMMAND_MODULES = list(dict.fromkeys(LAZY_COMMANDS.values()))


class LazyGroup(click.Group):
    """A click.Group that imports the module of a command listed in LAZY_COMMANDS on first use
    (Click's documented "LazyGroup" pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            self._load(LAZY_COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)

    def _load(self, module_name: str) -> None:
        import importlib

        module = importlib.import_module(module_name)
        for command in module.COMMANDS:
            self.add_command(command)
        if module_name == "qwenrecipes.cli.env":
            from qwenrecipes.cli.bench import BUNDLE_COMMANDS

            for command in BUNDLE_COMMANDS:  # `qwenrecipes env bundle`: offline site dirs for GPU hosts
                module.env.add_command(command)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qwenrecipes")
def cli() -> None:
    """One canonical Qwen fine-tuning recipe, rendered for Axolotl, LLaMA-Factory, Unsloth and TRL."""


@cli.command()
def schema() -> None:
    """Print the recipe JSON Schema (draft 2020-12)."""
    from qwenrecipes.recipe.load import recipe_schema

    click.echo(json.dumps(recipe_schema(), indent=2))


@cli.command()
def recipes() -> None:
    """List the example recipes that ship with qwenrecipes (every command takes NAME from any folder)."""
    from qwenrecipes.recipe.examples import example_recipes

    for name, description in example_recipes():
        click.echo(f"{name:30} {description}")
    click.echo("use a name anywhere a RECIPE goes, e.g. `qwenrecipes validate tiny-cpu`; copy one to edit it",
               err=True)


@cli.command()
@recipe_argument()
@click.option("--target", type=click.Choice(TARGETS), default="auto", show_default=True, help=TARGET_HELP)
@click.option("--engine", "-e", "engine", type=ENGINE, default=None,
              help="With --native: the engine whose own validator checks the rendered config.")
@click.option("--native", is_flag=True, help="Also ask the engine itself (inside its env) to accept the config.")
def validate(recipe: Path, target: str, engine: str | None, native: bool) -> None:
    """Check a recipe: schema, cross-field rules, data, and each engine's memory fit. Reports every problem at once."""
    from qwenrecipes.recipe.plan import plan_recipe
    from qwenrecipes.render.resolve import memory_lines, resolve_engines

    plan = plan_recipe(recipe, target=_target(target))
    for warning in plan.warnings:
        click.echo(f"warning: {recipe}: {warning}", err=True)
    # Without -e: the built-in engines (listing plug-ins would read every package's entry points on each call).
    resolved = resolve_engines(plan, [engine] if engine else list(ENGINE_MODULES))
    errors = [r for r in resolved.values() if isinstance(r, RecipeError)]
    failed = [problem for error in errors for problem in error.problems]
    if errors and len(errors) == len(resolved):
        raise RecipeError(failed)
    for problem in failed:
        click.echo(f"warning: {problem}", err=True)
    for name, result in resolved.items():
        if not isinstance(result, RecipeError):
            for warning in result.warnings[len(plan.warnings):]:
                click.echo(f"warning: {recipe}: {name}: {warning}", err=True)
    if native:
        if engine is None:
            raise click.UsageError("--native needs --engine")
        from qwenrecipes.check.native import native_validate

        native_validate(plan, engine)
    summary = plan.summary()
    click.echo(f"{recipe}: ok ({summary['train_rows']} training rows, {summary['max_steps']} optimizer steps, "
               f"effective batch {summary['effective_batch']}, {summary['precision']} on {summary['target']}: "
               f"{plan.target_why})")
    if summary.get("packing"):
        p = summary["packing"]
        click.echo(f"  packing: {p['rows']} rows in {p['bins']} bins of {p['capacity']} tokens ({p['algorithm']}): "
                   f"mean fill {p['mean_fill_pct']}%, min {p['min_fill_pct']}%, padding {p['padding_fraction']:.1%}")
    for line in memory_lines(resolved):
        click.echo(f"  {line}")


@cli.command()
@recipe_argument()
@click.option("--engine", "-e", type=ENGINE, required=True)
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Write a ready-to-run folder here. Without it, print the main file.")
@click.option("--target", type=click.Choice(TARGETS), default="auto", show_default=True, help=TARGET_HELP)
@click.option("--force", is_flag=True,
              help="Write into an existing folder that holds other files (a run folder); they are kept.")
def render(recipe: Path, engine: str, out_dir: Path | None, target: str, force: bool) -> None:
    """Render a recipe into an engine's native configuration."""
    from qwenrecipes.recipe.plan import plan_recipe
    from qwenrecipes.render.folder import get_engine, render_plan, render_to_folder

    plan = plan_recipe(recipe, target=_target(target))
    rendered = render_plan(plan, engine)
    if out_dir is None:
        click.echo(rendered.files[get_engine(engine).main_file], nl=False)
        return
    render_to_folder(plan, rendered, out_dir, force=force)
    for warning in rendered.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out_dir}/ ({len(rendered.files)} files + data)")
    click.echo(f"run it:  cd {out_dir} && {rendered.command_line}")


@cli.command()
@recipe_argument()
@click.option("--engines", default=None, help="Comma-separated engines (default: all).")
@click.option("--target", type=click.Choice(TARGETS), default="auto", show_default=True, help=TARGET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def explain(recipe: Path, engines: str | None, target: str, as_json: bool) -> None:
    """Show the effective settings per engine, read back from the rendered files; flag every difference."""
    from qwenrecipes.recipe.plan import plan_recipe
    from qwenrecipes.render.explain import explain_json, explain_plan

    names = _engines(engines)
    rows = explain_plan(plan_recipe(recipe, target=_target(target)), names)
    if as_json:
        click.echo(json.dumps(explain_json(rows), indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"Effective settings: {recipe}", show_lines=False)
    table.add_column("setting")
    for name in names:
        table.add_column(name)
    table.add_column("")
    for row in rows:
        cells = [_cell(row.values[name]) for name in names]
        flag = "[bold red]DIFFERS[/]" if row.diverges else ""
        style = "yellow" if row.diverges else None
        table.add_row(row.label, *cells, flag, style=style)
    console = _console()
    console.print(table)
    divergent = [r for r in rows if r.diverges]
    if divergent:
        console.print(f"[bold]{len(divergent)} setting(s) differ between engines:[/]")
        for row in divergent:
            console.print(f"  [yellow]{row.label}[/]: {row.why}")
    else:
        console.print("[green]All engines get the same effective settings.[/]")


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "-" if value is None else str(value)


@cli.command("tiny-model")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def tiny_model(out_dir: Path, seed: int) -> None:
    """Build a tiny random-init Qwen3 with the real Qwen3 tokenizer (offline tests and demos)."""
    from qwenrecipes.data.tiny import build_tiny_qwen3

    path = build_tiny_qwen3(out_dir, seed=seed)
    click.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place that maps errors to exit codes and messages."""
    try:
        cli.main(args=argv, prog_name="qwenrecipes", standalone_mode=False)
    except RecipeError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo("fix the fields above and run `qwenrecipes validate` again "
                   "(`qwenrecipes schema` documents every field)", err=True)
        sys.exit(2)
    except QwenRecipesError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if os.environ.get("QWENRECIPES_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
