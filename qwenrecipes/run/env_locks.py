"""Which envs exist and the pinned lock each one is built from.

Every registered engine has an env, plus the tools env (merge / generate / GGUF export). Each is built from a lock
file: a full ``pip freeze`` whose header comments carry directives (``# python: 3.11``, ``# bootstrap: pip==...``,
``# torch: torch==... torchvision==...``, ``# pip-check-ignore: ...``), so the file stays a valid requirements
file. An engine may ship a second lock, ``lock-cpu.txt``, used on hosts without an NVIDIA GPU (``lock_variant``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from qwenrecipes.errors import EngineError

if TYPE_CHECKING:
    from qwenrecipes.engines.base import EnvSpec

# Not an engine, but built and checked like one: merge / generate / GGUF export with llama-cpp-python (built from
# source by pip: cmake + a C++ compiler, ~10+ minutes on 2 cores); its lock lives with export.
TOOLS_ENV = "tools"
_TOOLS_PACKAGE = "llama-cpp-python"
_TOOLS_IMPORTS = ("peft:PeftModel", "transformers:AutoModelForCausalLM", "llama_cpp:llama_model_quantize")

CPU_LOCK = "lock-cpu.txt"
LOCK_VARIANT_VARIABLE = "QWENRECIPES_LOCK_VARIANT"  # "cpu" or "gpu": which lock an engine with both uses


def env_names() -> list[str]:
    """Every env `qwenrecipes env` knows: each registered engine's, then the tools env."""
    from qwenrecipes.engines import ENGINES

    return [*ENGINES, TOOLS_ENV]


def check_env_name(engine: str) -> None:
    """Raise EngineError naming the known envs when ``engine`` is none of them."""
    from qwenrecipes.engines import ENGINES

    if engine != TOOLS_ENV and engine not in ENGINES:
        known = ", ".join(sorted(env_names()))
        raise EngineError(f"unknown engine {engine!r}: choose one of {known}")


def env_spec(engine: str) -> EnvSpec:
    """What the engine's env holds and how its health is checked (``Engine.env``). The health check imports the
    modules a training run really loads (not just the lazy top-level package, which proves nothing)."""
    # Imported here: the registry loads the engine's module (and the plan modules) only when a spec is needed.
    from qwenrecipes.engines import ENGINES
    from qwenrecipes.engines.base import EnvSpec

    check_env_name(engine)
    return EnvSpec(_TOOLS_PACKAGE, _TOOLS_IMPORTS) if engine == TOOLS_ENV else ENGINES[engine].env


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


def load_lock(engine: str) -> Lock:
    """The packaged lock of ``engine`` (``qwenrecipes/engines/<engine>/lock.txt``)."""
    check_env_name(engine)
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
