"""Build an engine env from its lock: venv, bootstrap pip, torch steps, the lock body with ``--no-deps``,
``pip check``, the health check, then the marker (pre-commit's env lifecycle).

An install builds into a hidden temporary folder beside the final one, runs the health check there, writes
the marker file and only then renames the folder into place, so a folder named like an env is always a complete
one; anything that fails (or Ctrl-C) removes the temporary folder. A per-engine file lock keeps two installs of
one engine apart.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from qwenrecipes import __version__
from qwenrecipes.errors import EngineError
from qwenrecipes.run.env_health import REPORTED_DISTRIBUTIONS, Health, HealthStatus, check_health, interpreter_runs
from qwenrecipes.run.env_locks import Lock, env_hash, env_spec, load_lock
from qwenrecipes.run.envs import (
    BUILD_PREFIX,
    MARKER,
    MARKER_VERSION,
    EngineEnv,
    Progress,
    bin_dir,
    clean_environment,
    clean_leftovers,
    engine_lock,
    env_folder_name,
    env_root,
    no_progress,
    python_in,
    read_marker,
    remove_folder,
)
from qwenrecipes.run.rundir import write_json_atomic


@dataclass(frozen=True)
class InstallResult:
    env: EngineEnv
    created: bool  # False: it was already installed and healthy (no-op)
    seconds: float
    health: HealthStatus
    log: Path | None  # the full pip log of this install (None for a no-op)


def install_env(
    engine: str,
    *,
    env_dir: str | os.PathLike[str] | None = None,
    python: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> InstallResult:
    """Build the env of ``engine`` from its lock (a no-op when it is already installed and healthy).

    ``python`` is the base interpreter (default: the one running qwenrecipes, whose minor version is the one
    env_for looks for first); ``force`` rebuilds even a healthy env. Raises EngineError (with the pip output tail
    and the full log's path) when a step fails.
    """
    report = progress or no_progress
    lock = load_lock(engine)
    base_python = python or sys.executable
    python_minor = _python_minor(base_python)
    root = env_root(env_dir)
    final = root / env_folder_name(engine, lock, python_minor)
    start = time.monotonic()

    with engine_lock(root, engine, report):
        marker = None if force else _installed_marker(final)
        if marker is not None:
            report("done", f"{engine} is already installed at {final}")
            health = marker.get("health", "ok")
            return InstallResult(EngineEnv.from_marker(engine, final, marker), False, 0.0, health, None)
        if python_minor != lock.python:
            report(
                "venv",
                f"warning: the {engine} lock was tested with Python {lock.python}, building with {python_minor}",
            )
        clean_leftovers(root, engine)
        installer = _installer()
        logs = root / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{final.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        build = Path(tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{final.name}-", dir=root))
        # mkdtemp makes the folder 0700; an env is shared (CI jobs, other users), so give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        build.chmod(0o777 & ~umask)
        try:
            with open(log_path, "w", encoding="utf-8") as log:
                health = _build(engine, lock, base_python, build, final, installer, report, log)
                marker = _marker(engine, lock, python_minor, health, installer, time.monotonic() - start)
                log.write(f"\nhealth: {health.status}: {health.message}\n")
            write_json_atomic(build / MARKER, marker)
            # Anything at the final name is unhealthy or forced away (the lock keeps others out).
            remove_folder(final)
            os.rename(build, final)
        except EngineError as exc:
            raise EngineError(f"installing the {engine} environment failed: {exc}\nfull log: {log_path}") from None
        finally:
            # Failure, Ctrl-C, or success (then build no longer exists): never leave a half-built env.
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    seconds = time.monotonic() - start
    report("done", f"{engine} installed at {final} in {seconds:.0f} s ({health.status})")
    return InstallResult(EngineEnv.from_marker(engine, final, marker), True, seconds, health.status, log_path)


def _installed_marker(path: Path) -> dict[str, Any] | None:
    """Cheap "already installed" test: the marker when it is there and the interpreter starts, else None."""
    marker = read_marker(path)
    if marker is None or not python_in(path).exists() or interpreter_runs(python_in(path)) is not None:
        return None
    return marker


def _build(
    engine: str,
    lock: Lock,
    base_python: str,
    build: Path,
    final: Path,
    installer: str,
    report: Progress,
    log: TextIO,
) -> Health:
    """Create the venv in ``build`` and install the lock into it; return its (passing) health."""
    env = _install_environment()
    py = str(python_in(build))
    report("venv", f"creating a venv with {base_python} ({installer})")
    if installer == "uv":
        # --seed: pip + setuptools in the env, so the torch step can use the machine's pip config and
        # code that imports setuptools/pkg_resources at run time keeps working.
        _stream(["uv", "venv", "--seed", "--prompt", final.name, "--python", base_python, str(build)],
                env=env, stage="venv", progress=report, log=log)
    else:
        # mkdtemp made the folder; venv happily fills an empty one. --without-pip: ensurepip takes 5-50 s
        # (it installs a bundled pip we would replace with the lock's anyway); the bootstrap step brings pip.
        _stream([base_python, "-m", "venv", "--without-pip", "--prompt", final.name, str(build)],
                env=env, stage="venv", progress=report, log=log)
        host_pip = _host_pip()
        if lock.bootstrap and host_pip:
            # Our own pip installs the lock's pip into the env (pip >= 22.3 can target another interpreter).
            cmd = [*host_pip, "--python", py, "install", "--no-input", "--progress-bar", "off", *lock.bootstrap]
            _stream(cmd, env=env, stage="bootstrap", progress=report, log=log)
        else:
            _stream([py, "-m", "ensurepip"], env=env, stage="bootstrap", progress=report, log=log)
    pip = [py, "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
    if lock.bootstrap and (installer == "uv" or not _host_pip()):
        _stream([*pip, *lock.bootstrap], env=env, stage="bootstrap", progress=report, log=log)
    # torch first, each step its own pip run *with* deps and always through pip: the machine's pip config
    # (find-links to a local CPU wheel, a constraint capping torch) decides the build, as for the hand-made
    # envs the locks come from. An env may need torch+torchvision, then torchaudio, separately.
    for step in lock.torch_steps:
        _stream([*pip, *step], env=env, stage="torch", progress=report, log=log)
    # The body is a full freeze, so --no-deps installs exactly it with no resolver run (fast, reproducible);
    # `pip check` below proves the set is consistent.
    req_file = build / ".qwenrecipes-lock.txt"
    req_file.write_text(lock.text, encoding="utf-8")
    if installer == "uv":
        _stream(["uv", "pip", "install", "--python", py, "--no-deps", "-r", str(req_file)],
                env=_uv_environment(env), stage="lock", progress=report, log=log)
    else:
        _stream([*pip, "--no-deps", "-r", str(req_file)], env=env, stage="lock", progress=report, log=log)
    report("check", "pip check")
    checked = subprocess.run([py, "-m", "pip", "check"], env=env, capture_output=True, text=True, check=False)
    log.write(checked.stdout + checked.stderr)
    failures = pip_check_failures(checked.stdout, lock.pip_check_ignore)
    if checked.returncode != 0 and (failures or not checked.stdout.strip()):
        shown = "\n".join(failures) or checked.stderr.strip()[-2000:]
        raise EngineError(f"pip check failed for the {engine} lock:\n{shown}")
    report("health", f"importing {', '.join(env_spec(engine).health_imports)} (can take a minute)")
    health = check_health(engine, build)
    log.write(f"\nhealth check ({health.seconds:.1f} s): {health.status}\n{health.message}\n")
    if health.status == "failed":
        raise EngineError(f"health check failed: {health.message}")
    _relocate_scripts(build, final)
    return health


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_check_failures(output: str, ignore: Sequence[str]) -> list[str]:
    """The lines of `pip check` output that are failures: all but those about an ignored distribution's own
    requirements ("pkg 1.0 requires triton, which is not installed.")."""
    ignored = {_canonical(name) for name in ignore}
    failures = []
    for line in output.splitlines():
        words = line.split()
        if not words or (words[0] and _canonical(words[0]) in ignored) or line.startswith("No broken requirements"):
            continue
        failures.append(line)
    return failures


def _marker(
    engine: str, lock: Lock, python_minor: str, health: Health, installer: str, seconds: float
) -> dict[str, Any]:
    return {
        "marker_version": MARKER_VERSION,
        "engine": engine,
        "lock_hash": env_hash(lock.text, python_minor),
        "lock_sha256": lock.sha256,
        "python_minor": python_minor,
        "python": health.versions.get("python", ""),
        "versions": {k: health.versions.get(k) for k in ("python", *REPORTED_DISTRIBUTIONS, "engine")},
        "health": health.status,
        "health_message": health.message,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "install_seconds": round(seconds, 1),
        "installer": installer,
        "qwenrecipes": __version__,
        "platform": platform.platform(),
    }


def _relocate_scripts(build: Path, final: Path) -> None:
    """Point console scripts and activate files at the final folder: pip and venv write the absolute
    build path into shebangs (``#!<build>/bin/python``) and VIRTUAL_ENV, which the rename would break.
    The interpreter itself needs nothing: it finds its prefix from pyvenv.cfg next to it."""
    old, new = str(build).encode(), str(final).encode()
    candidates = [*(bin_dir(build).iterdir()), build / "pyvenv.cfg"]
    for item in candidates:
        if item.is_symlink() or not item.is_file() or item.stat().st_size > 1_000_000:
            continue
        data = item.read_bytes()
        if old in data:
            mode = item.stat().st_mode
            item.write_bytes(data.replace(old, new))
            os.chmod(item, mode)


# ------------------------------------------------------------------------------------------ subprocesses


def _python_minor(python: str) -> str:
    """The "X.Y" version of an interpreter, asked from the interpreter itself."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        return f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"cannot run the Python interpreter {python!r} ({exc}): pass a working --python") from exc
    return proc.stdout.strip()


# pip repeats this for every package when pip.conf lists a local index that lacks it: noise, not progress.
_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")


def _stream(cmd: list[str], *, env: Mapping[str, str], stage: str, progress: Progress, log: TextIO) -> None:
    """Run ``cmd``, echo each output line to ``progress`` and the log; raise EngineError on failure.

    On any exception (KeyboardInterrupt included) the child is killed before we return, so the caller
    can safely delete the folder it was writing into."""
    log.write(f"\n[{time.strftime('%H:%M:%S')}] $ {' '.join(cmd)}\n")
    log.flush()
    tail: deque[str] = deque(maxlen=25)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(env), text=True, errors="replace", bufsize=1)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            log.write(raw)
            if not line or _NOISE.match(line):
                continue
            tail.append(line)
            progress(stage, line)
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    log.flush()
    if code != 0:
        raise EngineError(f"{stage} step failed (exit {code}): {' '.join(cmd[:6])} ...\n" + "\n".join(tail))


def _host_pip() -> list[str] | None:
    """``python -m pip`` of the interpreter running qwenrecipes when it can install into another
    interpreter's env (``--python``, pip >= 22.3), else None (then the env bootstraps with ensurepip)."""
    import importlib.metadata  # here, not at import: every CLI start loads this module

    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = re.match(r"(\d+)\.(\d+)", version)
    if not parts or (int(parts[1]), int(parts[2])) < (22, 3):
        return None
    return [sys.executable, "-m", "pip"]


def _installer() -> str:
    """ "uv" when it is on PATH (much faster), else "pip"; QWENRECIPES_INSTALLER=pip|uv forces one."""
    forced = os.environ.get("QWENRECIPES_INSTALLER", "").strip().lower()
    if forced in ("pip", "uv"):
        if forced == "uv" and shutil.which("uv") is None:
            raise EngineError("QWENRECIPES_INSTALLER=uv but uv is not on PATH: install uv or unset the variable")
        return forced
    return "uv" if shutil.which("uv") else "pip"


def _uv_environment(env: Mapping[str, str]) -> dict[str, str]:
    """uv ignores pip's settings; carry over the ones given as variables (find-links, indexes)."""
    out = dict(env)
    for pip_var, uv_var in (
        ("PIP_INDEX_URL", "UV_INDEX_URL"),
        ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"),
        ("PIP_FIND_LINKS", "UV_FIND_LINKS"),
    ):
        if env.get(pip_var) and not env.get(uv_var):
            out[uv_var] = env[pip_var]
    return out


def _install_environment() -> dict[str, str]:
    env = clean_environment()  # qwenrecipes' own paths must not leak into the engine env's pip
    env["PYTHONUNBUFFERED"] = "1"  # line-by-line progress through the pipe
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env
