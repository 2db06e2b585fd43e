"""The installed engine envs: one virtualenv per engine under the env root, found, listed and removed here.

The engines cannot share one environment (their pins conflict: one wants transformers 5.6 and torch 2.9.1,
another transformers 5.16.1, a third trl<=1.15), so each gets its own venv under
``<env root>/<engine>-<hash>``, where the hash covers the lock file's text and the Python minor version
(run/env_locks.py). Editing a lock therefore yields a new env next to the old one, which ``list_envs`` reports
as stale.

A folder named like an env is always a complete one: run/env_install.py builds into a hidden folder and renames
it into place only after the health check passed and the marker file ``.qwenrecipes-env.json`` is written.
Engine envs never contain qwenrecipes itself (pre-commit's env lifecycle).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qwenrecipes.errors import EngineError
from qwenrecipes.paths import qwenrecipes_home
from qwenrecipes.run.env_locks import Lock, check_env_name, env_hash, env_names, env_spec, load_lock
from qwenrecipes.run.rundir import read_json_file

MARKER = ".qwenrecipes-env.json"
MARKER_VERSION = 1
BUILD_PREFIX = ".build-"
_TRASH_PREFIX = ".trash-"

# Progress callback: (stage, message). Stages: "wait", "venv", "bootstrap", "torch", "lock", "check",
# "health", "done". The message is a human line (often pip's current output line).
Progress = Callable[[str, str], None]

Status = Literal["current", "stale", "incomplete"]


def no_progress(stage: str, message: str) -> None:
    """The default progress callback: stay silent (the library never prints)."""


def env_root(env_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where envs live: ``env_dir`` argument, else ``$QWENRECIPES_ENV_DIR``, else ``<home>/envs``."""
    if env_dir is not None:
        return Path(env_dir).expanduser()
    override = os.environ.get("QWENRECIPES_ENV_DIR")
    if override:
        return Path(override).expanduser()
    return qwenrecipes_home() / "envs"


def base_environment(*, wandb: bool = False) -> dict[str, str]:
    """Telemetry-off variables every process in an engine env gets (engines.base.telemetry_environment, the
    list the engines render into COMMAND). ``wandb=True`` when the recipe asks for W&B logging."""
    # Imported here, not at the top: engines.base brings jinja2, yaml and the plan modules, which the
    # `qwenrecipes env ...` commands never need (it doubles this module's import time).
    from qwenrecipes.engines.base import telemetry_environment

    return telemetry_environment(wandb=wandb)


def clean_environment() -> dict[str, str]:
    """os.environ for a process of another interpreter: without the variables that point at qwenrecipes' own
    (a PYTHONHOME/PYTHONPATH/VIRTUAL_ENV meant for it would leak its packages into the engine env)."""
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def bin_dir(path: Path) -> Path:
    return path / ("Scripts" if os.name == "nt" else "bin")


def python_in(path: Path) -> Path:
    """The interpreter of the env folder ``path``."""
    return bin_dir(path) / ("python.exe" if os.name == "nt" else "python")


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of the env folder ``path``, or None when it is missing or damaged (an unfinished env)."""
    data = read_json_file(path / MARKER)
    return data if isinstance(data, dict) else None


def env_folder_name(engine: str, lock: Lock, python_minor: str) -> str:
    return f"{engine}-{env_hash(lock.text, python_minor)}"


@dataclass(frozen=True)
class EngineEnv:
    """An installed, healthy engine env, as the runner uses it."""

    engine: str
    path: Path
    python: Path
    bin_dir: Path
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_marker(cls, engine: str, path: Path, marker: Mapping[str, Any]) -> EngineEnv:
        versions = {str(k): str(v) for k, v in dict(marker.get("versions", {})).items() if v is not None}
        return cls(engine, path, python_in(path), bin_dir(path), versions)

    def run_environment(self, extra: Mapping[str, str] | None = None, *, wandb: bool = False) -> dict[str, str]:
        """os.environ as a process inside this env sees it: bin/ first on PATH, VIRTUAL_ENV set,
        telemetry off (base_environment), then ``extra`` (the engine's own variables) on top."""
        env = clean_environment()
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        env.update(base_environment(wandb=wandb))
        if extra:
            env.update(extra)
        return env


@dataclass(frozen=True)
class EnvInfo:
    """One folder under the env root, as ``list_envs`` sees it."""

    engine: str
    path: Path
    status: Status  # current: marker matches today's lock; stale: an older lock; incomplete: no marker
    marker: dict[str, Any] | None


def _is_current(engine: str, path: Path, marker: Mapping[str, Any], lock: Lock) -> bool:
    python_minor = str(marker.get("python_minor", ""))
    return marker.get("engine") == engine and path.name == env_folder_name(engine, lock, python_minor)


def _scan(root: Path) -> Iterator[tuple[str, Path]]:
    """(engine, folder) for every visible env-like folder under root."""
    if not root.is_dir():
        return
    known = set(env_names())
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        engine, sep, _ = child.name.rpartition("-")
        if sep and engine in known:
            yield engine, child


def list_envs(*, env_dir: str | os.PathLike[str] | None = None) -> list[EnvInfo]:
    """Every env under the root with its status; stale ones are candidates for ``remove_env``."""
    root = env_root(env_dir)
    locks: dict[str, Lock | None] = {}
    out: list[EnvInfo] = []
    for engine, path in _scan(root):
        if engine not in locks:
            try:
                locks[engine] = load_lock(engine)
            except EngineError:
                locks[engine] = None
        lock = locks[engine]
        marker = read_marker(path)
        status: Status
        if marker is None:
            status = "incomplete"
        elif lock is not None and _is_current(engine, path, marker, lock):
            status = "current"
        else:
            status = "stale"
        out.append(EnvInfo(engine, path, status, marker))
    return out


def find_current(engine: str, root: Path, lock: Lock, python_minor: str | None) -> EngineEnv | None:
    """The current env of ``engine``: the one for ``python_minor`` if given, else the running
    interpreter's, else any current one (an env built with ``--python`` for another minor version)."""
    wanted = python_minor or f"{sys.version_info[0]}.{sys.version_info[1]}"
    preferred = root / env_folder_name(engine, lock, wanted)
    marker = read_marker(preferred)
    if marker is not None and python_in(preferred).exists():
        return EngineEnv.from_marker(engine, preferred, marker)
    if python_minor is not None:
        return None
    for info in list_envs(env_dir=root):
        if info.engine == engine and info.status == "current" and info.marker and python_in(info.path).exists():
            return EngineEnv.from_marker(engine, info.path, info.marker)
    return None


def env_for(engine: str, *, env_dir: str | os.PathLike[str] | None = None) -> EngineEnv:
    """The installed env of ``engine`` for today's lock. Cheap (reads the marker, runs nothing). An engine whose
    ``EnvSpec.python`` names an interpreter runs there: no venv, no lock (a plug-in in its own environment)."""
    given = env_spec(engine).python
    if given:
        python = Path(given)
        return EngineEnv(engine, python.parent.parent, python, python.parent)
    lock = load_lock(engine)
    root = env_root(env_dir)
    found = find_current(engine, root, lock, None)
    if found is None:
        stale = [i for i in list_envs(env_dir=root) if i.engine == engine and i.status == "stale"]
        hint = " (only an env for an older lock exists)" if stale else ""
        raise EngineError(
            f"the {engine} environment is not installed in {root}{hint}: run `qwenrecipes env install {engine}`"
        )
    return found


# ------------------------------------------------------------------------------------ changing the root


@contextlib.contextmanager
def engine_lock(root: Path, engine: str, progress: Progress = no_progress, *, wait: bool = True) -> Iterator[None]:
    """An exclusive per-engine lock (flock on ``<root>/.<engine>.lock``), so two installs of one engine
    (two terminals, two CI jobs) never build or rename over each other. The kernel drops it if we die."""
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f".{engine}.lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise EngineError(
                    f"another qwenrecipes process is installing {engine} in {root}: wait for it, then retry"
                ) from None
            progress("wait", f"another process is installing {engine}; waiting for its lock ({lock_path})")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def remove_folder(path: Path) -> None:
    """Delete a folder so no half-deleted env is ever visible: rename it to a hidden name first."""
    if not path.exists():
        return
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{os.getpid()}-{time.time_ns()}")
    try:
        path.rename(trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(root: Path, engine: str) -> None:
    """Remove build/trash folders an earlier killed (-9) install of ``engine`` left. Call it holding
    ``engine_lock``: then no other process is building one."""
    for child in root.iterdir():
        for prefix in (BUILD_PREFIX, _TRASH_PREFIX):
            if child.name.startswith(f"{prefix}{engine}-") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def remove_env(engine: str, *, env_dir: str | os.PathLike[str] | None = None, stale_only: bool = False) -> list[Path]:
    """Delete the envs of ``engine`` (only the stale/incomplete ones with ``stale_only``); returns them."""
    check_env_name(engine)
    root = env_root(env_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    with engine_lock(root, engine, wait=False):
        for info in list_envs(env_dir=root):
            if info.engine != engine or (stale_only and info.status == "current"):
                continue
            remove_folder(info.path)
            removed.append(info.path)
        clean_leftovers(root, engine)
    return removed
