"""Per-engine virtualenvs (qwenrecipes.run.env_locks, envs, env_health, env_install, env_doctor; cli/env.py).

The unit tests are fast and offline: they use fake lock files and fake env folders. The one test that
runs pip points it at an empty local wheel folder with no index, so it fails in a second without network.
Tests marked ``engine`` check the real default envs (``~/.cache/qwenrecipes/envs``) when they exist.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qwenrecipes.cli.env import env as env_cli
from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.run import env_doctor, env_health, env_install, env_locks, envs
from qwenrecipes.run.rundir import write_json_atomic

PY_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"

FAKE_LOCK = f"""# a fake lock for tests
# python: {PY_MINOR}
# bootstrap: qwenrecipes-no-such-package==0.0.0
qwenrecipes-no-such-package==0.0.0
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty env root; QWENRECIPES_HOME points into tmp too so nothing touches the real cache."""
    monkeypatch.setenv("QWENRECIPES_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QWENRECIPES_ENV_DIR", str(tmp_path / "envs"))
    return tmp_path / "envs"


@pytest.fixture
def fake_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Packaged locks replaced by a folder holding one fake lock per engine."""
    folder = tmp_path / "locks"
    folder.mkdir()
    for engine in env_locks.env_names():
        (folder / f"{engine}.txt").write_text(FAKE_LOCK, encoding="utf-8")
    monkeypatch.setattr(env_locks, "_lock_resource", lambda engine: folder / f"{engine}.txt")
    return folder


def _fake_env(root: Path, name: str, *, engine: str = "trl", marker: bool = True, python: bool = True) -> Path:
    """A folder that looks like an env: bin/python (a link to this interpreter) and a marker."""
    path = root / name
    (path / "bin").mkdir(parents=True)
    if python:
        (path / "bin" / "python").symlink_to(sys.executable)
    if marker:
        data = {"engine": engine, "python_minor": PY_MINOR, "versions": {"trl": "9.9"}, "health": "ok"}
        (path / envs.MARKER).write_text(json.dumps(data), encoding="utf-8")
    return path


def _current_name(engine: str = "trl") -> str:
    return f"{engine}-{env_locks.env_hash(env_locks.load_lock(engine).text, PY_MINOR)}"


# ------------------------------------------------------------------------------------------- hashing


def test_hash_changes_with_lock_content_and_python() -> None:
    base = env_locks.env_hash("a==1\n", "3.11")
    assert base == env_locks.env_hash("a==1\n", "3.11")  # stable
    assert base != env_locks.env_hash("a==2\n", "3.11")
    assert base != env_locks.env_hash("a==1\n", "3.12")
    assert len(base) == 12


def test_changed_lock_makes_a_new_env_and_the_old_one_stale(root: Path, fake_locks: Path) -> None:
    old = _fake_env(root, _current_name())
    assert [i.status for i in envs.list_envs()] == ["current"]
    (fake_locks / "trl.txt").write_text(FAKE_LOCK + "another==1.0\n", encoding="utf-8")
    assert _current_name() != old.name
    assert [i.status for i in envs.list_envs()] == ["stale"]
    with pytest.raises(EngineError, match="older lock"):
        envs.env_for("trl")


# -------------------------------------------------------------------------------------------- locks


@pytest.mark.parametrize("engine", sorted(env_locks.env_names()))
def test_packaged_locks_are_full_exact_pins_without_torch(engine: str) -> None:
    lock = env_locks.load_lock(engine)
    assert lock.python == "3.11"
    assert lock.torch_steps and lock.torch_steps[0][0].startswith("torch==")
    assert lock.bootstrap == ("pip==26.3",)
    names = set()
    for req in lock.requirements:
        name, sep, version = req.partition("==")
        assert sep and version and " " not in req, req
        names.add(name.lower().replace("_", "-"))
    assert not names & {"torch", "torchvision", "torchaudio"}  # torch is its own step
    assert env_locks.env_spec(engine).package in names
    assert "setuptools" in names  # pip freeze leaves it out; the locks add it back


def test_parse_lock_directives() -> None:
    lock = env_locks.parse_lock(
        "llamafactory",
        "# python: 3.11\n# bootstrap: pip==26.3\n# torch: torch==2.9.1 torchvision==0.24.1\n"
        "# torch: torchaudio==2.9.1\n# other comment\n\na==1\nb==2\n",
    )
    assert lock.python == "3.11"
    assert lock.bootstrap == ("pip==26.3",)
    assert lock.torch_steps == (("torch==2.9.1", "torchvision==0.24.1"), ("torchaudio==2.9.1",))
    assert lock.requirements == ("a==1", "b==2")
    with pytest.raises(EngineError, match="python"):
        env_locks.parse_lock("trl", "a==1\n")


def test_unknown_engine_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="unknown engine"):
        env_locks.load_lock("nope")


def test_env_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWENRECIPES_ENV_DIR", raising=False)
    monkeypatch.setenv("QWENRECIPES_HOME", str(tmp_path / "home"))
    assert envs.env_root() == tmp_path / "home" / "envs"
    monkeypatch.setenv("QWENRECIPES_ENV_DIR", str(tmp_path / "e"))
    assert envs.env_root() == tmp_path / "e"
    assert envs.env_root(tmp_path / "arg") == tmp_path / "arg"


def test_base_environment_turns_telemetry_off() -> None:
    env = envs.base_environment()
    for key in ("AXOLOTL_DO_NOT_TRACK", "DO_NOT_TRACK", "HF_HUB_DISABLE_TELEMETRY", "UNSLOTH_DISABLE_STATISTICS"):
        assert env[key] == "1"
    assert env["WANDB_MODE"] == "disabled"
    assert "WANDB_MODE" not in envs.base_environment(wandb=True)


# ------------------------------------------------------------------------------------ marker, listing


def test_marker_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / envs.MARKER
    write_json_atomic(target, {"engine": "trl"})
    assert json.loads(target.read_text()) == {"engine": "trl"}
    # A write that fails half-way (unserialisable value) leaves the old marker whole and no temp file.
    with pytest.raises(TypeError):
        write_json_atomic(target, {"engine": object()})
    assert json.loads(target.read_text()) == {"engine": "trl"}
    assert [p.name for p in tmp_path.iterdir()] == [envs.MARKER]


def test_list_env_for_and_remove(root: Path, fake_locks: Path) -> None:
    current = _fake_env(root, _current_name())
    stale = _fake_env(root, "trl-000000000000")
    incomplete = _fake_env(root, "axolotl-111111111111", engine="axolotl", marker=False)
    (root / ".build-trl-x").mkdir()  # hidden build folders are not envs
    statuses = {i.path.name: i.status for i in envs.list_envs()}
    assert statuses == {current.name: "current", stale.name: "stale", incomplete.name: "incomplete"}

    found = envs.env_for("trl")
    assert found.path == current
    assert found.python == current / "bin" / "python"
    assert found.bin_dir == current / "bin"
    assert found.versions == {"trl": "9.9"}
    run_env = found.run_environment({"EXTRA": "1"})
    assert run_env["PATH"].split(os.pathsep)[0] == str(current / "bin")
    assert run_env["VIRTUAL_ENV"] == str(current)
    assert run_env["EXTRA"] == "1" and run_env["DO_NOT_TRACK"] == "1"

    assert envs.remove_env("trl", stale_only=True) == [stale]
    assert current.exists() and not stale.exists()
    assert not (root / ".build-trl-x").exists()  # leftovers of killed installs go too
    assert envs.remove_env("trl") == [current]
    assert not current.exists()
    assert incomplete.exists()  # another engine's env is untouched
    with pytest.raises(EngineError, match="qwenrecipes env install trl"):
        envs.env_for("trl")


def test_remove_refuses_while_an_install_holds_the_lock(root: Path, fake_locks: Path) -> None:
    _fake_env(root, _current_name())
    with envs.engine_lock(root, "trl"), pytest.raises(EngineError, match="installing trl"):
        envs.remove_env("trl")


def test_env_for_missing_names_the_install_command(root: Path) -> None:
    with pytest.raises(EngineError, match=r"not installed.*`qwenrecipes env install axolotl`"):
        envs.env_for("axolotl")


# ------------------------------------------------------------------------------------------- install


def test_install_is_a_noop_when_healthy(root: Path, fake_locks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = _fake_env(root, _current_name())

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not build")

    monkeypatch.setattr(env_install, "_build", boom)
    messages: list[str] = []
    result = env_install.install_env("trl", progress=lambda stage, msg: messages.append(msg))
    assert not result.created
    assert result.env.path == current
    assert any(str(current) in m for m in messages)


def test_failing_install_removes_the_half_built_env(
    root: Path, fake_locks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip sees no index and an empty wheel folder: the fake pin fails at once, offline.
    empty = tmp_path / "wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("QWENRECIPES_INSTALLER", "pip")
    stages: list[str] = []
    with pytest.raises(EngineError) as info:
        env_install.install_env("trl", progress=lambda stage, msg: stages.append(stage))
    message = str(info.value)
    assert "installing the trl environment failed" in message
    assert "qwenrecipes-no-such-package" in message  # pip's own words make it into the error
    assert "full log:" in message
    assert "bootstrap" in stages  # the venv was made and pip ran in it
    left = sorted(p.name for p in root.iterdir())
    assert left == [".logs", ".trl.lock"], left  # no env, no build folder
    assert envs.list_envs() == []


def test_interrupted_install_removes_the_build_folder(
    root: Path, fake_locks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def interrupted(engine: str, lock: object, base_python: str, build: Path, *args: object) -> None:
        (build / "bin").mkdir()
        seen.append(build)
        raise KeyboardInterrupt

    monkeypatch.setattr(env_install, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        env_install.install_env("trl")
    assert seen and not seen[0].exists()
    assert not any(p.name.startswith(("trl-", ".build-")) for p in root.iterdir())


def test_relocate_scripts_rewrites_shebangs(tmp_path: Path) -> None:
    build, final = tmp_path / ".build-trl-abc", tmp_path / "trl-abc"
    (build / "bin").mkdir(parents=True)
    script = build / "bin" / "accelerate"
    script.write_text(f"#!{build}/bin/python\nimport sys\n")
    script.chmod(0o755)
    (build / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = python -m venv {build}\n")
    env_install._relocate_scripts(build, final)
    assert script.read_text().startswith(f"#!{final}/bin/python\n")
    assert os.access(script, os.X_OK)
    assert str(final) in (build / "pyvenv.cfg").read_text()


# -------------------------------------------------------------------------------------- doctor, CLI


def test_doctor_on_missing_env_names_the_fix(root: Path) -> None:
    report = env_doctor.doctor("llamafactory")
    assert not report.ok and not report.installed
    assert report.fix is not None and "install llamafactory" in report.fix
    assert any("not installed" in p for p in report.problems)


def test_doctor_without_override_prints_the_plain_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWENRECIPES_ENV_DIR", raising=False)
    monkeypatch.setenv("QWENRECIPES_HOME", str(tmp_path))
    assert env_doctor.doctor("axolotl").fix == "qwenrecipes env install axolotl"


def test_doctor_on_incomplete_env(root: Path, fake_locks: Path) -> None:
    _fake_env(root, _current_name(), marker=False)
    report = env_doctor.doctor("trl")
    assert not report.ok
    assert any("did not finish" in p for p in report.problems)


def test_cli_doctor_and_list(root: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(env_cli, ["--env-dir", str(root), "doctor", "trl"])
    assert result.exit_code == 1
    assert "install trl" in result.output
    result = runner.invoke(env_cli, ["--env-dir", str(root), "list"])
    assert result.exit_code == 0 and "no engine envs" in result.output
    result = runner.invoke(env_cli, ["--env-dir", str(root), "remove", "trl"])
    assert result.exit_code == 0 and "nothing to remove" in result.output


def test_engine_error_is_a_qwenrecipes_error() -> None:
    assert issubclass(EngineError, QwenRecipesError)


# ----------------------------------------------------------------------------- the real default envs


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["axolotl", "llamafactory", "trl"])
def test_installed_default_env_is_healthy(engine: str) -> None:
    try:
        found = envs.env_for(engine)
    except EngineError:
        pytest.skip(f"no {engine} env installed: `qwenrecipes env install {engine}`")
    health = env_health.check_health(engine, found.path)
    assert health.status == "ok", health.message
    pins = dict(r.split("==", 1) for r in env_locks.load_lock(engine).requirements)
    assert health.versions["engine"] == pins[env_locks.env_spec(engine).package]
    for dist in ("transformers", "peft"):
        assert health.versions[dist] == pins[dist]
    assert health.versions["python"].startswith(env_locks.load_lock(engine).python)
