"""How an engine process starts for the bench: its qwenrecipes venv or a host interpreter with an offline bundle on
PYTHONPATH (``Launcher``), the command and environment it gets, and the package versions it really imports."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qwenrecipes.bench.engine_specific import console_module, engine_distribution
from qwenrecipes.errors import QwenRecipesError

# Distributions whose versions go into each row (after the engine's own).
VERSION_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
                    "liger_kernel", "triton")


@dataclass(frozen=True)
class Launcher:
    """How an engine process starts. ``venv``: the engine's qwenrecipes env (envs.env_for). ``host``: a given
    interpreter with offline bundle folders on PYTHONPATH (an air-gapped GPU host: `env bundle`)."""

    mode: str = "venv"  # "venv" | "host"
    python: str = "python3"
    pythonpath: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.mode == "venv":
            return "qwenrecipes engine venv"
        return f"{self.python} with PYTHONPATH={os.pathsep.join(self.pythonpath) or '(none)'}"


def host_argv(argv: Sequence[str], python: str) -> list[str]:
    """An engine command as the host interpreter runs it: `python X` -> `PY X`, `script ...` -> `PY -m module ...`.
    A chained command (`python SCRIPT.py CONSOLE_SCRIPT ...`: the script execs the rest, as a token-handoff loader
    does) has its tail rewritten too, since an offline bundle has no console scripts."""
    head, *rest = argv
    if head in ("python", "python3"):
        if len(rest) > 1 and rest[0].endswith(".py") and console_module(rest[1]) is not None:
            return [python, rest[0], *host_argv(rest[1:], python)]
        return [python, *rest]
    module = console_module(head)
    if module is None:
        raise QwenRecipesError(f"no module form known for the engine command {head!r}: run with the engine venv")
    return [python, "-m", module, *rest]


def launch_environment(launcher: Launcher, engine: str, extra: dict[str, str], shim: Path,
                       memory_cap_gb: float | None) -> tuple[dict[str, str], str, dict[str, str]]:
    """(environment, python, versions-from-marker) for one engine run."""
    from qwenrecipes.run import envs

    if launcher.mode == "venv":
        engine_env = envs.env_for(engine)  # raises with the install hint when missing
        env = engine_env.run_environment(extra)
        python = str(engine_env.python)
        versions = dict(engine_env.versions)
    else:
        # The host interpreter as it is, minus anything that would pull in another interpreter's packages.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")}
        env.update(envs.base_environment())
        env.update(extra)
        python = launcher.python
        versions = {}
    env["PYTHONUNBUFFERED"] = "1"  # one line per step as it happens: the step timestamps depend on it
    env["PYTHONPATH"] = os.pathsep.join([str(shim), *launcher.pythonpath])
    if memory_cap_gb:
        env["QWENRECIPES_BENCH_MEMORY_CAP_GB"] = f"{memory_cap_gb:g}"
    return env, python, versions


_VERSIONS_SNIPPET = r"""
import importlib.metadata as md, json, os, sys
out = {}
for name in sys.argv[1:]:
    try:
        dist = md.distribution(name)
    except Exception:
        continue
    where = ""
    try:
        loc = os.path.realpath(str(dist.locate_file("")))
        if any(loc.startswith(os.path.realpath(p)) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p):
            where = " (bundle)"
    except Exception:
        pass
    out[name] = dist.version + where
print(json.dumps(out))
"""


def probe_versions(python: str, env: dict[str, str], engine: str) -> dict[str, str]:
    names = [engine_distribution(engine), *VERSION_PACKAGES]
    try:
        proc = subprocess.run([python, "-c", _VERSIONS_SNIPPET, *names], env=env, capture_output=True, text=True,
                              timeout=120)
        value = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, IndexError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
