"""One virtualenv per engine, built from a pinned lock file (pre-commit's env lifecycle).

The engines cannot share one environment (their pins conflict: one wants transformers 5.6 and torch 2.9.1,
another transformers 5.16.1, a third trl<=1.15), so each gets its own venv under
``<env root>/<engine>-<hash>``, where the hash covers the lock file's text and the Python minor version.
Editing a lock therefore yields a new env next to the old one, which ``list_envs`` reports as stale.

An install builds into a hidden temporary folder beside the final one, runs the health check there, writes
the marker file ``.qwenrecipes-env.json`` and only then renames the folder into place, so a folder named
like an env is always a complete one; anything that fails (or Ctrl-C) removes the temporary folder.

Engine envs never contain qwenrecipes itself: what has to run inside one (the health check) is a
standalone snippet passed with ``python -c``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qwenrecipes import __version__
from qwenrecipes.errors import EngineError
from qwenrecipes.paths import qwenrecipes_home

if TYPE_CHECKING:
    from qwenrecipes.engines.base import EnvSpec

# Not an engine, but built and checked like one: merge / generate / GGUF export with llama-cpp-python (built from
# source by pip: cmake + a C++ compiler, ~10+ minutes on 2 cores); its lock lives with export.
TOOLS_ENV = "tools"
_TOOLS_PACKAGE = "llama-cpp-python"
_TOOLS_IMPORTS = ("peft:PeftModel", "transformers:AutoModelForCausalLM", "llama_cpp:llama_model_quantize")


def env_names() -> list[str]:
    """Every env `qwenrecipes env` knows: each registered engine's, then the tools env."""
    from qwenrecipes.engines import ENGINES

    return [*ENGINES, TOOLS_ENV]


def env_spec(engine: str) -> EnvSpec:
    """What the engine's env holds and how its health is checked (``Engine.env``). The health check imports the
    modules a training run really loads (not just the lazy top-level package, which proves nothing)."""
    # Imported here: the registry loads the engine's module (and the plan modules) only when a spec is needed.
    from qwenrecipes.engines import ENGINES
    from qwenrecipes.engines.base import EnvSpec

    _check_engine(engine)
    return EnvSpec(_TOOLS_PACKAGE, _TOOLS_IMPORTS) if engine == TOOLS_ENV else ENGINES[engine].env


# Distributions whose versions go into the marker and the `doctor` report.
_REPORTED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")

MARKER = ".qwenrecipes-env.json"
_MARKER_VERSION = 1
_BUILD_PREFIX = ".build-"
_TRASH_PREFIX = ".trash-"

# The heaviest engine import takes ~10-20 s on 2 cores with warm caches; right after an install nothing is cached
# yet, and CI machines are slow, so be generous: a hang is the only thing this guards against.
HEALTH_TIMEOUT_S = 900.0

# Progress callback: (stage, message). Stages: "wait", "venv", "bootstrap", "torch", "lock", "check",
# "health", "done". The message is a human line (often pip's current output line).
Progress = Callable[[str, str], None]

Status = Literal["current", "stale", "incomplete"]
HealthStatus = Literal["ok", "needs-gpu", "failed"]


def _no_progress(stage: str, message: str) -> None:
    """The default progress callback: stay silent (the library never prints)."""


def base_environment(*, wandb: bool = False) -> dict[str, str]:
    """Telemetry-off variables every process in an engine env gets (engines.base.telemetry_environment, the
    list the engines render into COMMAND). ``wandb=True`` when the recipe asks for W&B logging."""
    # Imported here, not at the top: engines.base brings jinja2, yaml and the plan modules, which the
    # `qwenrecipes env ...` commands never need (it doubles this module's import time).
    from qwenrecipes.engines.base import telemetry_environment

    return telemetry_environment(wandb=wandb)


# ----------------------------------------------------------------------------------------------- locks


@dataclass(frozen=True)
class Lock:
    """A parsed lock file: directives from its header comments, then the pinned requirements."""

    engine: str
    text: str
    python: str  # "3.11": the Python minor version the lock was tested with
    bootstrap: tuple[str, ...]  # pip itself (and friends), upgraded right after the venv is made
    torch_steps: tuple[tuple[str, ...], ...]  # each one pip run, with deps, before the lock body
    requirements: tuple[str, ...]  # the body, installed with --no-deps
    # `# pip-check-ignore: a b`: `pip check` lines about these distributions' own requirements are not failures
    # (a package whose metadata asks for what its used code path never imports, e.g. a CPU-only variant).
    pip_check_ignore: tuple[str, ...] = ()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


CPU_LOCK = "lock-cpu.txt"
LOCK_VARIANT_VARIABLE = "QWENRECIPES_LOCK_VARIANT"  # "cpu" or "gpu": which lock an engine with both uses


def lock_variant() -> str:
    """``gpu`` on a host with an NVIDIA GPU (nvidia-smi on PATH), else ``cpu``; QWENRECIPES_LOCK_VARIANT wins."""
    chosen = os.environ.get(LOCK_VARIANT_VARIABLE, "").strip().lower()
    if chosen in ("cpu", "gpu"):
        return chosen
    from qwenrecipes.recipe.hardware import detect_target

    return "gpu" if detect_target() == "cuda" else "cpu"


def _lock_resource(engine: str) -> Traversable:
    """The packaged lock file of ``engine``: ``engines/<engine>/lock.txt``, or its ``lock-cpu.txt`` when it ships
    one and this host has no GPU (lock_variant); the tools env's lives with export. Tests point this at a tmp
    dir."""
    if engine == TOOLS_ENV:
        return files("qwenrecipes").joinpath("export", "tools.lock.txt")
    from qwenrecipes.engines import ENGINES

    folder = ENGINES[engine].folder
    cpu = folder.joinpath(CPU_LOCK)
    return cpu if cpu.is_file() and lock_variant() == "cpu" else folder.joinpath("lock.txt")


def _check_engine(engine: str) -> None:
    from qwenrecipes.engines import ENGINES

    if engine != TOOLS_ENV and engine not in ENGINES:
        known = ", ".join(sorted(env_names()))
        raise EngineError(f"unknown engine {engine!r}: choose one of {known}")


_DIRECTIVE = re.compile(r"^#\s*(python|bootstrap|torch|pip-check-ignore):\s*(.+?)\s*$")


def parse_lock(engine: str, text: str) -> Lock:
    """Parse a lock's text. Directives live in comments so the file stays a valid requirements file."""
    python = ""
    bootstrap: list[str] = []
    torch_steps: list[tuple[str, ...]] = []
    ignore: list[str] = []
    requirements: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _DIRECTIVE.match(line)
            if match:
                key, value = match.groups()
                if key == "python":
                    python = value
                elif key == "bootstrap":
                    bootstrap.extend(value.split())
                elif key == "pip-check-ignore":
                    ignore.extend(value.split())
                else:
                    torch_steps.append(tuple(value.split()))
            continue
        requirements.append(line)
    if not python:
        raise EngineError(f"lock for {engine} has no `# python: X.Y` line: add the version it was tested with")
    return Lock(engine, text, python, tuple(bootstrap), tuple(torch_steps), tuple(requirements), tuple(ignore))


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


def load_lock(engine: str) -> Lock:
    """The packaged lock of ``engine`` (``qwenrecipes/engines/<engine>/lock.txt``)."""
    _check_engine(engine)
    resource = _lock_resource(engine)
    if not resource.is_file():
        raise EngineError(f"no lock file for {engine}: expected {resource} in the package")
    return parse_lock(engine, resource.read_text(encoding="utf-8"))


def env_hash(lock_text: str, python_version: str) -> str:
    """Short hash naming an env: lock content plus the Python minor version ("3.11") it is built with."""
    digest = hashlib.sha256()
    digest.update(lock_text.encode("utf-8"))
    digest.update(b"\0python=")
    digest.update(python_version.encode("utf-8"))
    return digest.hexdigest()[:12]


def env_root(env_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where envs live: ``env_dir`` argument, else ``$QWENRECIPES_ENV_DIR``, else ``<home>/envs``."""
    if env_dir is not None:
        return Path(env_dir).expanduser()
    override = os.environ.get("QWENRECIPES_ENV_DIR")
    if override:
        return Path(override).expanduser()
    return qwenrecipes_home() / "envs"


# ------------------------------------------------------------------------------------------ interpreter


def _python_minor(python: str) -> str:
    """The "X.Y" version of an interpreter, asked from the interpreter itself."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        return f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        proc = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"cannot run the Python interpreter {python!r} ({exc}): pass a working --python") from exc
    return proc.stdout.strip()


def _default_python() -> str:
    # The interpreter running qwenrecipes: its minor version is the one the default env hash uses, so
    # env_for() finds what install_env() built without asking anything.
    return sys.executable


# ---------------------------------------------------------------------------------------------- envs


@dataclass(frozen=True)
class EngineEnv:
    """An installed, healthy engine env, as the runner uses it."""

    engine: str
    path: Path
    python: Path
    bin_dir: Path
    versions: dict[str, str] = field(default_factory=dict)

    def run_environment(self, extra: Mapping[str, str] | None = None, *, wandb: bool = False) -> dict[str, str]:
        """os.environ as a process inside this env sees it: bin/ first on PATH, VIRTUAL_ENV set,
        telemetry off (base_environment), then ``extra`` (the engine's own variables) on top."""
        env = dict(os.environ)
        # A PYTHONHOME/PYTHONPATH meant for qwenrecipes' own interpreter would leak our packages in.
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
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


@dataclass(frozen=True)
class Health:
    """Result of running the health snippet inside an env."""

    status: HealthStatus
    versions: dict[str, str]
    message: str  # one line for ok / needs-gpu; the error tail for failed
    seconds: float


@dataclass(frozen=True)
class InstallResult:
    env: EngineEnv
    created: bool  # False: it was already installed and healthy (no-op)
    seconds: float
    health: HealthStatus
    log: Path | None  # the full pip log of this install (None for a no-op)


def _bin_dir(path: Path) -> Path:
    return path / ("Scripts" if os.name == "nt" else "bin")


def _python_in(path: Path) -> Path:
    return _bin_dir(path) / ("python.exe" if os.name == "nt" else "python")


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(target: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so readers see the old file or the whole new one, never half (tmp file + os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _env_name(engine: str, lock: Lock, python_minor: str) -> str:
    return f"{engine}-{env_hash(lock.text, python_minor)}"


def _is_current(engine: str, path: Path, marker: Mapping[str, Any], lock: Lock) -> bool:
    python_minor = str(marker.get("python_minor", ""))
    return marker.get("engine") == engine and path.name == _env_name(engine, lock, python_minor)


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
        marker = _read_marker(path)
        status: Status
        if marker is None:
            status = "incomplete"
        elif lock is not None and _is_current(engine, path, marker, lock):
            status = "current"
        else:
            status = "stale"
        out.append(EnvInfo(engine, path, status, marker))
    return out


def _to_engine_env(engine: str, path: Path, marker: Mapping[str, Any]) -> EngineEnv:
    versions = {str(k): str(v) for k, v in dict(marker.get("versions", {})).items() if v is not None}
    return EngineEnv(engine, path, _python_in(path), _bin_dir(path), versions)


def _find_current(engine: str, root: Path, lock: Lock, python_minor: str | None) -> EngineEnv | None:
    """The current env of ``engine``: the one for ``python_minor`` if given, else the running
    interpreter's, else any current one (an env built with ``--python`` for another minor version)."""
    wanted = python_minor or f"{sys.version_info[0]}.{sys.version_info[1]}"
    preferred = root / _env_name(engine, lock, wanted)
    marker = _read_marker(preferred)
    if marker is not None and _python_in(preferred).exists():
        return _to_engine_env(engine, preferred, marker)
    if python_minor is not None:
        return None
    for info in list_envs(env_dir=root):
        if info.engine == engine and info.status == "current" and info.marker and _python_in(info.path).exists():
            return _to_engine_env(engine, info.path, info.marker)
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
    found = _find_current(engine, root, lock, None)
    if found is None:
        stale = [i for i in list_envs(env_dir=root) if i.engine == engine and i.status == "stale"]
        hint = " (only an env for an older lock exists)" if stale else ""
        raise EngineError(
            f"the {engine} environment is not installed in {root}{hint}: run `qwenrecipes env install {engine}`"
        )
    return found


# ----------------------------------------------------------------------------------------- file lock


@contextlib.contextmanager
def _engine_lock(root: Path, engine: str, progress: Progress, *, wait: bool = True) -> Iterator[None]:
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


# ------------------------------------------------------------------------------------------- running


# pip repeats this for every package when pip.conf lists a local index that lacks it: noise, not progress.
_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")


def _stream(cmd: list[str], *, env: Mapping[str, str], stage: str, progress: Progress, log: Any) -> None:
    """Run ``cmd``, echo each output line to ``progress`` and the log; raise EngineError on failure.

    On any exception (KeyboardInterrupt included) the child is killed before we return, so the caller
    can safely delete the folder it was writing into."""
    log.write(f"\n[{time.strftime('%H:%M:%S')}] $ {' '.join(cmd)}\n")
    log.flush()
    tail: deque[str] = deque(maxlen=25)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        text=True,
        errors="replace",
        bufsize=1,
    )
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
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # qwenrecipes' own path must not leak into the engine env's pip
    env.pop("PYTHONHOME", None)
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"  # line-by-line progress through the pipe
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


# -------------------------------------------------------------------------------------------- health

# Runs inside the engine env with `python -c`: standard library only until the engine imports.
_HEALTH_SNIPPET = r"""
import importlib, importlib.metadata as md, json, platform, sys
spec = json.loads(sys.argv[1])
out = {"python": platform.python_version(), "executable": sys.executable, "versions": {}, "cuda": None}
for dist in spec["dists"]:
    try:
        out["versions"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        out["versions"][dist] = None
missing = [d for d in spec["required"] if out["versions"].get(d) is None]
if missing:
    out["status"] = "failed"
    out["message"] = "not installed: " + ", ".join(missing)
else:
    import torch
    out["versions"]["torch"] = torch.__version__
    out["cuda"] = bool(torch.cuda.is_available())
    def load():
        for item in spec["imports"]:
            module, _, attr = item.partition(":")
            obj = importlib.import_module(module)
            if attr:
                getattr(obj, attr)
    out["status"] = "ok"
    out["message"] = "imported " + ", ".join(spec["imports"])
    if spec["needs_gpu"] and not out["cuda"]:
        try:
            load()
        except Exception as exc:
            out["status"] = "needs-gpu"
            out["message"] = ("installed, but needs a CUDA GPU: torch sees none, and the import without one "
                              "failed: %s: %s" % (type(exc).__name__, (str(exc).strip().splitlines() or [""])[-1]))
        else:
            out["message"] += " (no CUDA GPU here: it imported in its slow CPU fallback mode; train on a GPU)"
    else:
        load()
sys.stdout.flush()
print("\n" + spec["mark"] + json.dumps(out), flush=True)
"""
_HEALTH_MARK = "QWENRECIPES-HEALTH:"


def _health_environment(engine: str) -> dict[str, str]:
    env = _install_environment()
    env.update(base_environment())
    env["HF_HUB_OFFLINE"] = "1"  # a health check must not download anything (nor hang offline)
    env.update(env_spec(engine).health_env)
    return env


def check_health(engine: str, path: Path, *, timeout: float = HEALTH_TIMEOUT_S) -> Health:
    """Run the env's python with the health snippet: versions of the key packages, then the engine's
    real imports. Never raises for an unhealthy env; the result says what failed."""
    _check_engine(engine)
    python = _python_in(path)
    start = time.monotonic()
    if not python.exists():
        return Health("failed", {}, f"no interpreter at {python}", 0.0)
    env_facts = env_spec(engine)
    engine_dist = env_facts.package
    spec = {
        "dists": [engine_dist, *[d for d in _REPORTED if d != engine_dist]],
        "required": [engine_dist, "torch"],
        "imports": list(env_facts.health_imports),
        "needs_gpu": env_facts.needs_gpu,
        "mark": _HEALTH_MARK,
    }
    try:
        proc = subprocess.run(
            [str(python), "-c", _HEALTH_SNIPPET, json.dumps(spec)],
            capture_output=True,
            text=True,
            errors="replace",
            env=_health_environment(engine),
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            cwd=path,  # not the caller's cwd: a local folder named like a package would shadow it
        )
    except subprocess.TimeoutExpired:
        return Health("failed", {}, f"health check timed out after {timeout:.0f} s", time.monotonic() - start)
    except OSError as exc:
        return Health("failed", {}, f"cannot run {python}: {exc}", time.monotonic() - start)
    seconds = time.monotonic() - start
    result: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_HEALTH_MARK):
            with contextlib.suppress(ValueError):
                result = json.loads(line[len(_HEALTH_MARK) :])
            break
    if proc.returncode != 0 or result is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return Health("failed", {}, f"exit {proc.returncode}:\n{tail}", seconds)
    versions = {k: str(v) for k, v in result.get("versions", {}).items() if v is not None}
    versions["python"] = str(result.get("python", ""))
    if engine_dist in versions:
        versions["engine"] = versions[engine_dist]
    return Health(result["status"], versions, str(result.get("message", "")), seconds)


# ------------------------------------------------------------------------------------------- install


def _relocate_scripts(build: Path, final: Path) -> None:
    """Point console scripts and activate files at the final folder: pip and venv write the absolute
    build path into shebangs (``#!<build>/bin/python``) and VIRTUAL_ENV, which the rename would break.
    The interpreter itself needs nothing: it finds its prefix from pyvenv.cfg next to it."""
    old, new = str(build).encode(), str(final).encode()
    candidates = [*(_bin_dir(build).iterdir()), build / "pyvenv.cfg"]
    for item in candidates:
        if item.is_symlink() or not item.is_file() or item.stat().st_size > 1_000_000:
            continue
        data = item.read_bytes()
        if old in data:
            mode = item.stat().st_mode
            item.write_bytes(data.replace(old, new))
            os.chmod(item, mode)


def _rmtree(path: Path) -> None:
    """Delete a folder so no half-deleted env is ever visible: rename it to a hidden name first."""
    if not path.exists():
        return
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{os.getpid()}-{time.time_ns()}")
    try:
        path.rename(trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(root: Path, engine: str) -> None:
    """Remove build/trash folders an earlier killed (-9) install of ``engine`` left. Safe: we hold the lock."""
    for child in root.iterdir():
        for prefix in (_BUILD_PREFIX, _TRASH_PREFIX):
            if child.name.startswith(f"{prefix}{engine}-") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def _is_healthy_marker(path: Path) -> bool:
    """Cheap "already installed" test: the marker is there and the interpreter starts."""
    if _read_marker(path) is None or not _python_in(path).exists():
        return False
    try:
        subprocess.run([str(_python_in(path)), "-c", "pass"], check=True, timeout=60, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def install_env(
    engine: str,
    *,
    env_dir: str | os.PathLike[str] | None = None,
    python: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> InstallResult:
    """Build the env of ``engine`` from its lock (a no-op when it is already installed and healthy).

    ``python`` is the base interpreter (default: the one running qwenrecipes); ``force`` rebuilds even a
    healthy env. Raises EngineError (with the pip output tail and the full log's path) when a step fails.
    """
    report = progress or _no_progress
    lock = load_lock(engine)
    base_python = python or _default_python()
    python_minor = _python_minor(base_python)
    root = env_root(env_dir)
    final = root / _env_name(engine, lock, python_minor)
    start = time.monotonic()

    with _engine_lock(root, engine, report):
        if not force and _is_healthy_marker(final):
            marker = _read_marker(final) or {}
            report("done", f"{engine} is already installed at {final}")
            health = marker.get("health", "ok")
            return InstallResult(_to_engine_env(engine, final, marker), False, 0.0, health, None)
        if python_minor != lock.python:
            report(
                "venv",
                f"warning: the {engine} lock was tested with Python {lock.python}, building with {python_minor}",
            )
        _clean_leftovers(root, engine)
        installer = _installer()
        logs = root / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{final.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        build = Path(tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{final.name}-", dir=root))
        # mkdtemp makes the folder 0700; an env is shared (CI jobs, other users), so give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        build.chmod(0o777 & ~umask)
        try:
            with open(log_path, "w", encoding="utf-8") as log:
                health = _build(engine, lock, base_python, build, final, installer, report, log)
                marker = _marker(engine, lock, python_minor, health, installer, time.monotonic() - start)
                log.write(f"\nhealth: {health.status}: {health.message}\n")
            _write_json_atomic(build / MARKER, marker)
            # Anything at the final name is unhealthy or forced away (the lock keeps others out).
            _rmtree(final)
            os.rename(build, final)
        except EngineError as exc:
            raise EngineError(f"installing the {engine} environment failed: {exc}\nfull log: {log_path}") from None
        finally:
            # Failure, Ctrl-C, or success (then build no longer exists): never leave a half-built env.
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    seconds = time.monotonic() - start
    report("done", f"{engine} installed at {final} in {seconds:.0f} s ({health.status})")
    return InstallResult(_to_engine_env(engine, final, marker), True, seconds, health.status, log_path)


def _build(
    engine: str,
    lock: Lock,
    base_python: str,
    build: Path,
    final: Path,
    installer: str,
    report: Progress,
    log: Any,
) -> Health:
    """Create the venv in ``build`` and install the lock into it; return its (passing) health."""
    env = _install_environment()
    py = str(_python_in(build))
    report("venv", f"creating a venv with {base_python} ({installer})")
    if installer == "uv":
        # --seed: pip + setuptools in the env, so the torch step can use the machine's pip config and
        # code that imports setuptools/pkg_resources at run time keeps working.
        _stream(
            ["uv", "venv", "--seed", "--prompt", final.name, "--python", base_python, str(build)],
            env=env,
            stage="venv",
            progress=report,
            log=log,
        )
    else:
        # mkdtemp made the folder; venv happily fills an empty one. --without-pip: ensurepip takes 5-50 s
        # (it installs a bundled pip we would replace with the lock's anyway); the bootstrap step brings pip.
        _stream(
            [base_python, "-m", "venv", "--without-pip", "--prompt", final.name, str(build)],
            env=env,
            stage="venv",
            progress=report,
            log=log,
        )
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
        _stream(
            ["uv", "pip", "install", "--python", py, "--no-deps", "-r", str(req_file)],
            env=_uv_environment(env),
            stage="lock",
            progress=report,
            log=log,
        )
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


def _marker(
    engine: str, lock: Lock, python_minor: str, health: Health, installer: str, seconds: float
) -> dict[str, Any]:
    return {
        "marker_version": _MARKER_VERSION,
        "engine": engine,
        "lock_hash": env_hash(lock.text, python_minor),
        "lock_sha256": lock.sha256,
        "python_minor": python_minor,
        "python": health.versions.get("python", ""),
        "versions": {k: health.versions.get(k) for k in ("python", *_REPORTED, "engine")},
        "health": health.status,
        "health_message": health.message,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "install_seconds": round(seconds, 1),
        "installer": installer,
        "qwenrecipes": __version__,
        "platform": platform.platform(),
    }


# -------------------------------------------------------------------------------------------- remove


def remove_env(engine: str, *, env_dir: str | os.PathLike[str] | None = None, stale_only: bool = False) -> list[Path]:
    """Delete the envs of ``engine`` (only the stale/incomplete ones with ``stale_only``); returns them."""
    _check_engine(engine)
    root = env_root(env_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    with _engine_lock(root, engine, _no_progress, wait=False):
        for info in list_envs(env_dir=root):
            if info.engine != engine or (stale_only and info.status == "current"):
                continue
            _rmtree(info.path)
            removed.append(info.path)
        _clean_leftovers(root, engine)
    return removed


# -------------------------------------------------------------------------------------------- doctor


@dataclass(frozen=True)
class DoctorReport:
    """What ``doctor`` found for one engine; ``fix`` is the exact command to run when not ok."""

    engine: str
    root: Path
    path: Path | None  # the current env's folder, when one exists
    installed: bool
    marker: bool
    python_runs: bool
    health: Health | None
    stale: list[Path]
    problems: list[str]
    fix: str | None

    @property
    def ok(self) -> bool:
        return not self.problems


def doctor(
    engine: str, *, env_dir: str | os.PathLike[str] | None = None, timeout: float = HEALTH_TIMEOUT_S
) -> DoctorReport:
    """Check one engine's env step by step (folder, marker, interpreter, imports) and name the fix."""
    lock = load_lock(engine)
    root = env_root(env_dir)
    install_cmd = f"qwenrecipes env install {engine}"
    if env_dir is not None or os.environ.get("QWENRECIPES_ENV_DIR"):
        install_cmd = f"qwenrecipes env --env-dir {root} install {engine}"
    infos = [i for i in list_envs(env_dir=root) if i.engine == engine]
    stale = [i.path for i in infos if i.status != "current"]
    current = [i for i in infos if i.status == "current"]
    problems: list[str] = []
    if not current:
        incomplete = [i.path for i in infos if i.status == "incomplete"]
        if incomplete:
            problems.append(f"{incomplete[0]} has no {MARKER}: an install did not finish")
        else:
            problems.append(f"not installed (no env for the current lock under {root})")
        if stale:
            problems.append(f"{len(stale)} stale env(s) from older locks: `qwenrecipes env remove {engine} --stale`")
        return DoctorReport(engine, root, None, False, False, False, None, stale, problems, install_cmd)

    # Prefer the running interpreter's minor version, as env_for does.
    found = _find_current(engine, root, lock, None)
    path = found.path if found else current[0].path
    python = _python_in(path)
    python_runs = False
    try:
        subprocess.run([str(python), "-c", "pass"], check=True, timeout=60, capture_output=True)
        python_runs = True
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"its interpreter {python} does not run ({exc}); the base Python may have moved")
    health: Health | None = None
    if python_runs:
        health = check_health(engine, path, timeout=timeout)
        if health.status == "failed":
            problems.append(f"health check failed: {health.message}")
    fix = f"qwenrecipes env install --force {engine}" if problems else None
    if fix and (env_dir is not None or os.environ.get("QWENRECIPES_ENV_DIR")):
        fix = f"qwenrecipes env --env-dir {root} install --force {engine}"
    return DoctorReport(engine, root, path, True, True, python_runs, health, stale, problems, fix)
