"""Secrets never reach rendered files, logs or events (redaction), and runs are offline with telemetry off unless
the recipe asks for a hub model or W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.recipe.load import build_recipe
from qwenrecipes.recipe.plan import make_plan
from qwenrecipes.render.folder import render_plan, write_rendered
from qwenrecipes.run import envs
from qwenrecipes.run.rundir import EVENTS_FILE, LOG_FILE, SUMMARY_FILE
from qwenrecipes.run.runner import execute
from tests.conftest import REPO
from tests.hardening.conftest import ENGINE_NAMES, fake_spec, recipe_document, write_recipe

# ------------------------------------------------------------------------------------------- secrets
PLANTED = {"HF_TOKEN": "hf_PLANTEDsecret123", "HUGGING_FACE_HUB_TOKEN": "hf_PLANTEDhubtoken456",
           "WANDB_API_KEY": "PLANTEDwandbkey789abcdef"}


def _grep_tree(root: Path, needles: list[str]) -> list[str]:
    """Every file under root (binary-safe) that holds one of the needles, raw or in UTF-16 / JSON-escaped."""
    hits = []
    forms = {form for n in needles for form in (n.encode(), n.encode("utf-16-le"), json.dumps(n).encode())}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits.extend(f"{path.relative_to(root)}" for form in forms if form in data)
    return sorted(set(hits))


def test_rendered_files_and_command_never_hold_secrets(tmp_path: Path, data_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    plan = make_plan(build_recipe(recipe_document(data_file, output={"report_to": "wandb"}), tmp_path / "r.yaml"),
                     target="cuda")
    for engine in ENGINE_NAMES:
        rendered = render_plan(plan, engine)
        out = tmp_path / engine
        write_rendered(plan, rendered, out)
        assert _grep_tree(out, list(PLANTED.values())) == []
        assert not set(PLANTED) & set(rendered.environment), "secrets reach the engine via os.environ only"
        assert not any(value in rendered.command_line for value in PLANTED.values())


# An engine that echoes its tokens, as a debug print or a crash might. The code reads them from its
# environment, so argv (which the run log's header line records) never holds them.
ECHO_SECRETS = """
import os
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
    print(f"{name}={os.environ[name]}", flush=True)
print(f"{{'loss': 1.0, 'epoch': 0.1, 'note': '{os.environ['HF_TOKEN']}'}}", flush=True)
raise RuntimeError("401 Unauthorized for token " + os.environ["HF_TOKEN"] + " / " + os.environ["WANDB_API_KEY"])
"""


def test_engine_printing_every_secret_is_redacted_everywhere(tmp_path: Path) -> None:
    """Log, events (train metrics and the error), summary (error text): nothing under the run dir keeps a
    planted token."""
    run = tmp_path / "run"
    spec = fake_spec(run, env=PLANTED)
    spec.argv = [sys.executable, "-c", ECHO_SECRETS]
    result = execute(spec)
    assert result.status == "failed"
    log = (run / LOG_FILE).read_text()
    assert all(f"{name}=***" in log for name in PLANTED), log
    assert "***" in json.dumps(json.loads((run / SUMMARY_FILE).read_text())["error"])
    assert _grep_tree(run, list(PLANTED.values())) == []


def test_token_shaped_strings_are_redacted_even_if_not_ours(tmp_path: Path) -> None:
    """An engine may read ~/.cache/huggingface/token itself and print it: hf_ tokens are redacted by shape."""
    run = tmp_path / "run"
    stray = "hf_" + "Zq9" * 12
    spec = fake_spec(run, env={"STRAY": stray})
    spec.argv = [sys.executable, "-c", "import os; raise SystemExit('401 for ' + os.environ['STRAY'])"]
    execute(spec)
    assert "401 for ***" in (run / LOG_FILE).read_text()
    assert _grep_tree(run, [stray]) == []


def _require_env(engine: str) -> None:
    from qwenrecipes.errors import EngineError

    try:
        envs.env_for(engine)
    except EngineError as exc:
        pytest.skip(f"{engine} env not installed: {exc}")


@pytest.mark.engine
def test_real_trl_run_leaks_no_planted_secret(tmp_path: Path) -> None:
    """A real tiny TRL run with planted tokens in its environment, made to print one of them: Python prints
    the value of an invalid PYTHONWARNINGS entry at start-up ("Invalid -W option ignored: unknown warning
    category: '<value>'"), in every process of the engine, without touching any file the run keeps. Every
    file under the run dir (config, COMMAND, data, log, events, summary, checkpoints, adapter) is grepped."""
    _require_env("trl")
    document = yaml.safe_load((REPO / "recipes" / "tiny-cpu.yaml").read_text())
    document["data"]["train"]["path"] = str(REPO / "recipes" / "data" / "chat.jsonl")
    document["training"].update({"max_steps": 3, "warmup_steps": 0, "save_steps": 2})
    recipe = write_recipe(tmp_path / "tiny.yaml", document)
    run = tmp_path / "run"
    env = {**os.environ, **PLANTED, "PYTHONWARNINGS": f"ignore::{PLANTED['HF_TOKEN']}"}
    # -E: our own interpreter must not act on PYTHONWARNINGS (it would print the token itself, unredacted);
    # the engine's interpreter still gets it from the environment the runner passes on.
    proc = subprocess.run([sys.executable, "-E", "-c", "from qwenrecipes.cli import main; main()", "run", str(recipe),
                           "--engine", "trl", "--run-dir", str(run), "--target", "cpu", "--verbose"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / LOG_FILE).read_text(errors="replace")
    assert "unknown warning category: '***'" in log, "the engine did print the planted token"
    assert list((run / "outputs").rglob("adapter_model.safetensors")), "a real run, to the end"
    assert any(e["type"] == "checkpoint" for e in map(json.loads, (run / EVENTS_FILE).read_text().splitlines()))
    assert _grep_tree(run, list(PLANTED.values())) == []
    # What the user's terminal got is redacted too (the CLI prints engine lines with --verbose).
    shown = proc.stdout + proc.stderr
    assert not [line for line in shown.splitlines() if any(v in line for v in PLANTED.values())]


# ----------------------------------------------------------------------------------- privacy, offline
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _env_of(engine: str, plan: Any, *, wandb: bool = False) -> dict[str, str]:
    """The engine's variables on top of envs.base_environment, as EngineEnv.run_environment layers them."""
    return {**envs.base_environment(wandb=wandb), **render_plan(plan, engine).environment}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_local_model_and_data_run_offline_with_telemetry_off(tmp_path: Path, data_file: Path, engine: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    plan = make_plan(build_recipe(recipe_document(data_file, model={"name_or_path": str(model)}),
                                  tmp_path / "r.yaml"), target="cuda")
    env = _env_of(engine, plan)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["WANDB_MODE"] == "disabled" and env["AXOLOTL_DO_NOT_TRACK"] == "1"
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False" and env["UNSLOTH_DISABLE_STATISTICS"] == "1"
    assert env["HF_DATASETS_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("report_to", ["none", "wandb"])
def test_command_file_alone_has_every_run_variable(tmp_path: Path, data_file: Path, engine: str,
                                                   report_to: str) -> None:
    """Running COMMAND by hand, without qwenrecipes, keeps telemetry off exactly as `qwenrecipes run` does."""
    model = tmp_path / "model"
    model.mkdir()
    plan = make_plan(build_recipe(recipe_document(data_file, model={"name_or_path": str(model)},
                                                  output={"report_to": report_to}), tmp_path / "r.yaml"),
                     target="cuda")
    rendered = render_plan(plan, engine)
    base = envs.base_environment(wandb=report_to == "wandb")
    assert {k: rendered.environment.get(k) for k in base} == base
    command_line = rendered.files["COMMAND"].splitlines()[1]
    assert all(f"{k}={v}" in command_line.split() for k, v in base.items())
    assert "HF_HUB_OFFLINE=1" in command_line.split()


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_hub_model_is_not_forced_offline(tmp_path: Path, data_file: Path, engine: str) -> None:
    plan = make_plan(build_recipe(recipe_document(data_file), tmp_path / "r.yaml"), target="cuda")
    assert "HF_HUB_OFFLINE" not in _env_of(engine, plan)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_wandb_only_when_the_recipe_opts_in(tmp_path: Path, data_file: Path, engine: str) -> None:
    opted = make_plan(build_recipe(recipe_document(data_file, output={"report_to": "wandb"}), tmp_path / "r.yaml"),
                      target="cuda")
    env = _env_of(engine, opted, wandb=True)
    assert env.get("WANDB_MODE") != "disabled"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["DO_NOT_TRACK"] == "1"  # other telemetry stays off
    for report_to in ("none", "tensorboard"):
        plain = make_plan(build_recipe(recipe_document(data_file, output={"report_to": report_to}),
                                       tmp_path / "r.yaml"), target="cuda")
        assert _env_of(engine, plain)["WANDB_MODE"] == "disabled"


def test_run_environment_drops_foreign_python_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTHONPATH/PYTHONHOME meant for our interpreter would let a stray sitecustomize run in the engine."""
    from qwenrecipes.run.envs import EngineEnv

    monkeypatch.setenv("PYTHONPATH", "/somewhere/evil")
    monkeypatch.setenv("PYTHONHOME", "/somewhere/else")
    fake = EngineEnv("trl", Path("/envs/trl"), Path("/envs/trl/bin/python"), Path("/envs/trl/bin"))
    env = fake.run_environment({"X": "1"})
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert env["PATH"].startswith(str(Path("/envs/trl/bin"))) and env["WANDB_MODE"] == "disabled"
