"""What a command imports, checked in a fresh interpreter: `render` and `validate` of a valid recipe must not load
the heavy or unrelated modules (those are what make a CLI slow to start; benchmarks/render_latency.py has the
timings). Not a timed test: a lazy import turned eager fails here whatever the machine's speed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from qwenrecipes import cli
from qwenrecipes.engines import ENGINE_MODULES, ENGINES
from tests.conftest import RECIPES, REPO

RECIPE = RECIPES / "qwen3-4b-qlora.yaml"

# Modules no recipe-to-config command needs: third-party heavyweights, and qwenrecipes' run/env/export side.
HEAVY = ["jsonschema", "numpy", "matplotlib", "tqdm", "rich", "tokenizers", "safetensors", "torch", "transformers",
         "importlib.metadata", "pyarrow"]
UNRELATED = ["qwenrecipes.run.envs", "qwenrecipes.run.env_locks", "qwenrecipes.run.env_health",
             "qwenrecipes.run.env_install", "qwenrecipes.run.env_doctor", "qwenrecipes.run.events",
             "qwenrecipes.run.runner", "qwenrecipes.run.spec",
             "qwenrecipes.run.rundir", "qwenrecipes.run.supervisor", "qwenrecipes.run.procgroup",
             "qwenrecipes.run.summary", "qwenrecipes.check.tokens", "qwenrecipes.bench", "qwenrecipes.export",
             "qwenrecipes.run.compare", "qwenrecipes.run.runs", "qwenrecipes.check.native", "qwenrecipes.data.tiny",
             "qwenrecipes.data.synthetic", "qwenrecipes.render.explain", "qwenrecipes.data.tokenizer_files",
             *cli.COMMAND_MODULES]

# Run one CLI command in this process and print the modules it imported (those not loaded at interpreter start,
# so whatever site or a .pth preloads does not count against qwenrecipes).
PROBE = """
import contextlib, io, json, sys
before = set(sys.modules)
from qwenrecipes.cli import main
out = io.StringIO()
code = 0
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code or 0
print(json.dumps({"code": code, "stdout": out.getvalue(), "imported": sorted(set(sys.modules) - before)}))
"""


def imported_by(*args: str) -> dict[str, object]:
    # `python -c` puts the working directory first on sys.path: this checkout's code, whatever is installed.
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def loaded(result: dict[str, object], names: list[str]) -> list[str]:
    imported = set(result["imported"])  # type: ignore[arg-type]
    return [name for name in names if name in imported or any(m.startswith(f"{name}.") for m in imported)]


@pytest.mark.parametrize("engine", list(ENGINES))
def test_render_imports_only_its_own_engine(engine: str) -> None:
    result = imported_by("render", str(RECIPE), "--engine", engine, "--target", "cuda")
    assert result["code"] == 0
    assert result["stdout"], "render printed nothing: the probe did not run the command"
    assert ENGINE_MODULES[engine] in result["imported"]
    others = [module for name, module in ENGINE_MODULES.items() if name != engine]
    assert loaded(result, HEAVY + UNRELATED + others) == []


def test_validate_of_a_valid_recipe_skips_jsonschema_and_the_tokenizer() -> None:
    result = imported_by("validate", str(RECIPE), "--target", "cuda")
    assert result["code"] == 0
    assert ": ok (" in result["stdout"]
    assert loaded(result, HEAVY + UNRELATED) == []


def test_invalid_recipe_still_gets_jsonschema_messages(tmp_path: Path) -> None:
    """The fast path only says yes; a bad recipe still loads the full validator and its wording."""
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.read_text(encoding="utf-8").replace("r: 16", "rank: 16"), encoding="utf-8")
    result = imported_by("validate", str(recipe))
    assert result["code"] == 2
    assert "jsonschema" in result["imported"]


def test_lazy_command_map_matches_the_command_modules() -> None:
    """Every command a module exports is reachable by its name, and nothing else is claimed."""
    import importlib

    exported = {command.name: name for name in cli.COMMAND_MODULES
                for command in importlib.import_module(name).COMMANDS}
    assert exported == cli.LAZY_COMMANDS
    ctx = click.Context(cli.cli)
    for name in cli.LAZY_COMMANDS:
        command = cli.cli.get_command(ctx, name)
        assert command is not None and command.name == name
    env = cli.cli.get_command(ctx, "env")
    assert isinstance(env, click.Group) and "bundle" in env.commands  # attached from cli_bench
    assert cli.cli.get_command(ctx, "no-such-command") is None


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["--help"])
    listed = capsys.readouterr().out.split("Commands:", 1)[1]
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert names == sorted({*cli.LAZY_COMMANDS, "schema", "recipes", "validate", "render", "explain", "tiny-model"})


def test_engine_registry_imports_engines_on_lookup_only() -> None:
    code = ("import sys\nfrom qwenrecipes.engines import ENGINES\n"
            "from qwenrecipes.engines import ENGINE_MODULES\n"
            "assert list(ENGINES)[:len(ENGINE_MODULES)] == list(ENGINE_MODULES) and 'trl' in ENGINES\n"
            "assert 'nope' not in ENGINES and len(ENGINES) >= len(ENGINE_MODULES)\n"
            "assert not [m for m in sys.modules if m.startswith('qwenrecipes.engines.')], sys.modules\n"
            "assert ENGINES['trl'].name == 'trl'\n"
            "print(sorted({'.'.join(m.split('.')[:3]) for m in sys.modules if m.startswith('qwenrecipes.engines.')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded_engines = {name for name in ast.literal_eval(proc.stdout.strip())} & set(ENGINE_MODULES.values())
    assert loaded_engines == {"qwenrecipes.engines.trl"}  # shared helpers (base, templating, ...) aside
    with pytest.raises(KeyError):
        ENGINES["nope"]
