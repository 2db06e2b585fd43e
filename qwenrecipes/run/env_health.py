"""The health check of an engine env: run its interpreter on a standard-library snippet that reports the key
distributions' versions and then does the engine's real imports (``EnvSpec.health_imports``).

It runs after every install (an env that fails it is never renamed into place) and in ``qwenrecipes env doctor``.
Engine envs never contain qwenrecipes, so the snippet is passed with ``python -c``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qwenrecipes.run.env_locks import check_env_name, env_spec
from qwenrecipes.run.envs import base_environment, clean_environment, python_in

# Distributions whose versions go into the marker and the `doctor` report.
REPORTED_DISTRIBUTIONS = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")

# The heaviest engine import takes ~10-20 s on 2 cores with warm caches; right after an install nothing is cached
# yet, and CI machines are slow, so be generous: a hang is the only thing this guards against.
HEALTH_TIMEOUT_S = 900.0

HealthStatus = Literal["ok", "needs-gpu", "failed"]


@dataclass(frozen=True)
class Health:
    """Result of running the health snippet inside an env."""

    status: HealthStatus
    versions: dict[str, str]
    message: str  # one line for ok / needs-gpu; the error tail for failed
    seconds: float


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
    env = clean_environment()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(base_environment())
    env["HF_HUB_OFFLINE"] = "1"  # a health check must not download anything (nor hang offline)
    env.update(env_spec(engine).health_env)
    return env


def check_health(engine: str, path: Path, *, timeout: float = HEALTH_TIMEOUT_S) -> Health:
    """Run the env's python with the health snippet: versions of the key packages, then the engine's
    real imports. Never raises for an unhealthy env; the result says what failed."""
    check_env_name(engine)
    python = python_in(path)
    start = time.monotonic()
    if not python.exists():
        return Health("failed", {}, f"no interpreter at {python}", 0.0)
    env_facts = env_spec(engine)
    engine_dist = env_facts.package
    spec = {
        "dists": [engine_dist, *[d for d in REPORTED_DISTRIBUTIONS if d != engine_dist]],
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


def interpreter_runs(python: Path) -> str | None:
    """None when ``python`` starts, else why not (a cheap check: the base Python of a venv may have moved)."""
    try:
        subprocess.run([str(python), "-c", "pass"], check=True, timeout=60, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc) or type(exc).__name__
    return None
