"""Which models an evaluation loads (base, and each run's adapter or full model), and the interpreter that
loads them: the trl env (torch, transformers, peft and lm-eval are in its lock), reached through the same
`Tools` machinery as merge/generate, and ``scripts/qr_eval.py`` run there with its progress streamed back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.export.source import Source, compute_dtype, resolve_source
from qwenrecipes.export.tools_env import TOOLS_PYTHON_ENV, Tools, override_tools

EVAL_ENV = "trl"  # the engine env whose lock carries lm-eval; no separate multi-GB eval env
BASE = "base"

ProgressCallback = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class ModelSpec:
    """One model to score: a name for tables, what to load, and where it came from."""

    name: str  # "base" or the run dir's name
    model: str  # the base (for an adapter) or the model folder
    adapter: str | None
    dtype: str
    run_dir: Path | None = None
    engine: str | None = None

    def request(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "adapter": self.adapter, "dtype": self.dtype}


def _engine_of(run_dir: Path) -> str | None:
    from qwenrecipes.run.rundir import read_marker

    marker = read_marker(run_dir) or {}
    engine = marker.get("engine")
    return str(engine) if engine else None


def _base_path(source: Source) -> str:
    if source.base:
        return source.base
    model_path = source.run.model_path if source.run else None
    if model_path and model_path.startswith("builtin:"):
        from qwenrecipes.data.tiny import resolve_builtin_model

        return str(resolve_builtin_model(model_path))
    if model_path:
        return str(Path(model_path).expanduser()) if model_path.startswith(("/", ".", "~")) else model_path
    raise QwenRecipesError(f"{source.path}: cannot tell which base model it was trained from")


def run_model(run_dir: Path, name: str) -> tuple[ModelSpec, ModelSpec]:
    """(the run's trained model, its base), both in the dtype the run's weights are loaded in."""
    source = resolve_source(run_dir)
    dtype = compute_dtype(source)
    base = ModelSpec(BASE, _base_path(source), None, dtype)
    engine = _engine_of(run_dir)
    if source.kind == "adapter":
        return ModelSpec(name, base.model, str(source.path), dtype, run_dir, engine), base
    return ModelSpec(name, str(source.path), None, dtype, run_dir, engine), base


def unique_names(run_dirs: list[Path]) -> list[str]:
    """Run dir names, with parents added where two runs share a name (runs/a/trl, runs/b/trl)."""
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in run_dirs]


# ---------------------------------------------------------------------------------------------- running


def eval_tools() -> Tools:
    """$QWENRECIPES_TOOLS_PYTHON (a python with torch, transformers, peft, lm-eval), else the trl env."""
    from qwenrecipes.run import envs

    tool = override_tools()
    if tool is None:
        try:
            found = envs.env_for(EVAL_ENV)
        except QwenRecipesError as exc:
            raise EngineError(f"eval runs in the {EVAL_ENV} env: run `qwenrecipes env install {EVAL_ENV}` "
                              f"(or set ${TOOLS_PYTHON_ENV}). {exc}") from None
        tool = Tools(found.python, found.run_environment())
    # Nothing downloads weights here: the base must be local or already in the HF cache.
    tool.env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    return tool


@contextlib.contextmanager
def _script() -> Iterator[Path]:
    with as_file(files("qwenrecipes").joinpath("evaluate", "scripts", "qr_eval.py")) as path:
        yield Path(path)


def run_eval_script(command: str, request: dict[str, Any], *, what: str, progress: ProgressCallback | None = None,
                    cwd: Path | None = None, online: bool = False) -> dict[str, Any]:
    """Run ``qr_eval.py COMMAND`` with ``request`` in the eval env; progress lines go to ``progress``, the
    rest of the output is kept for the error message."""
    tool = eval_tools()
    if online:  # hub tasks (gsm8k, mmlu...) fetch their datasets; weights still never download
        for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            tool.env.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="qr-eval-") as tmp, _script() as script:
        request_file, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_file.write_text(json.dumps(request), encoding="utf-8")
        argv = [str(tool.python), str(script), command, "--request", str(request_file), "--result", str(result)]
        tail: list[str] = []
        with subprocess.Popen(argv, env=tool.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith('{"qr_progress"'):
                    item = json.loads(line)["qr_progress"]
                    if progress:
                        progress(str(item["what"]), int(item["done"]), int(item["total"]))
                    continue
                tail = [*tail[-40:], line.rstrip("\n")]
        if proc.returncode != 0 or not result.is_file():
            shown = "\n".join(tail[-15:])
            raise EngineError(f"{what} failed in {tool.python} (exit {proc.returncode}):\n{shown}")
        data = json.loads(result.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
