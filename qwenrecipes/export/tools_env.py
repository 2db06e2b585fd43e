"""The tools interpreter (torch, transformers, peft, optionally llama-cpp-python) that runs
``tools_scripts/qr_tools.py`` for merge, generate, GGUF conversion, runtime checks and push."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from qwenrecipes.errors import EngineError, QwenRecipesError

TOOLS_PYTHON_ENV = "QWENRECIPES_TOOLS_PYTHON"  # a python with torch+transformers+peft to use instead of envs


@dataclass(frozen=True)
class Tools:
    """The interpreter that runs qr_tools.py, and the environment it runs with."""

    python: Path
    env: dict[str, str]


def override_tools() -> Tools | None:
    """$QWENRECIPES_TOOLS_PYTHON as the tools interpreter (this environment minus PYTHONPATH/PYTHONHOME, plus
    qwenrecipes' base environment), or None when it is not set."""
    from qwenrecipes.run import envs

    override = os.environ.get(TOOLS_PYTHON_ENV)
    if not override:
        return None
    python = Path(override).expanduser()
    if not python.exists():
        raise QwenRecipesError(f"${TOOLS_PYTHON_ENV} points at {python}, which does not exist")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(envs.base_environment())
    return Tools(python, env)


def tools(*, offline: bool = True) -> Tools:
    """The tools interpreter: $QWENRECIPES_TOOLS_PYTHON, else the `tools` env, else the `trl` env (it has
    torch, transformers and peft; llama-cpp-python only the tools env has)."""
    from qwenrecipes.run import envs

    tool = override_tools()
    if tool is None:
        reasons: list[str] = []
        for name in ("tools", "trl"):
            try:
                found = envs.env_for(name)
            except QwenRecipesError as exc:
                reasons.append(str(exc))
                continue
            tool = Tools(found.python, found.run_environment())
            break
        if tool is None:
            raise EngineError("merge/generate/export need torch, transformers and peft in a tools env: run "
                              "`qwenrecipes env install trl` (or set $QWENRECIPES_TOOLS_PYTHON to such a python). "
                              + "; ".join(reasons))
    if offline:
        # Nothing here may download weights: the base must be local (or already in the HF cache).
        tool.env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    tool.env.setdefault("PYTHONUNBUFFERED", "1")
    return tool


@contextlib.contextmanager
def _script() -> Iterator[Path]:
    with as_file(files("qwenrecipes").joinpath("export", "tools_scripts", "qr_tools.py")) as path:
        yield Path(path)


def run_tool(tool: Tools, args: Sequence[str], *, what: str, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``qr_tools.py ARGS --result FILE`` in the tools env and return FILE's JSON."""
    with tempfile.TemporaryDirectory(prefix="qr-tools-") as tmp, _script() as script:
        result = Path(tmp) / "result.json"
        argv = [str(tool.python), str(script), *args, "--result", str(result)]
        proc = subprocess.run(argv, env=tool.env, cwd=cwd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise EngineError(f"{what} failed in {tool.python} (exit {proc.returncode}):\n{tail}")
        data = json.loads(result.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}


@functools.lru_cache(maxsize=8)
def has_llama_cpp(python: Path) -> bool:
    """Whether the tools interpreter can import llama_cpp (q4_k_m quantization, GGUF runtime checks)."""
    proc = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True, check=False)
    return proc.returncode == 0
