"""The run dir: its files, the marker that makes it ours, and what may be done to it.

A run dir holds:
  .qwenrecipes-run.json   marker: only folders with it are ever deleted by --force
  engine.log              the engine's raw output (secrets redacted), appended across resumes
  events.jsonl            normalized events (see events.py), appended across resumes
  summary.json            written atomically at the end of every invocation
  ... the rendered engine files, data/ and the engine's output dir (checkpoints, adapter)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError

MARKER_FILE = ".qwenrecipes-run.json"
LOG_FILE = "engine.log"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
SUPERSEDED_FILE = "events.superseded.jsonl"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def default_run_dir(recipe_name: str, engine: str) -> Path:
    return Path("runs") / f"{recipe_name}-{engine}"


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    marker = run_dir / MARKER_FILE
    if not marker.is_file() or marker.is_symlink():
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and value.get("kind") == "qwenrecipes-run" else None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and read_marker(path) is not None


def remove_run_dir(run_dir: Path) -> None:
    """--force: delete a previous run. Only ever a real folder carrying our marker, never the folder we
    stand in or one above it, so a mistyped --run-dir cannot wipe unrelated work."""
    if not is_run_dir(run_dir):
        raise QwenRecipesError(
            f"{run_dir} is not a qwenrecipes run dir (no {MARKER_FILE}); --force only deletes runs: "
            "choose another --run-dir or move the folder away yourself")
    resolved, cwd = run_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise QwenRecipesError(f"refusing to delete {run_dir}: it holds the current directory; cd elsewhere first")
    shutil.rmtree(resolved)


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def find_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """checkpoint-N folders under output_dir, by step. A folder without trainer_state.json is still being
    written (or was cut off by a kill) and cannot be resumed from, so it is left out."""
    found: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in output_dir.iterdir():
            match = _CHECKPOINT_RE.match(entry.name)
            if match and entry.is_dir() and (entry / "trainer_state.json").is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def find_artifacts(run_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Adapters (folders with adapter_model.safetensors), full models and checkpoints, relative to run_dir."""
    adapters: list[str] = []
    models: list[str] = []
    if output_dir.is_dir():
        for path in sorted(output_dir.rglob("adapter_model.safetensors")):
            adapters.append(str(path.parent.relative_to(run_dir)))
        for path in sorted(output_dir.rglob("model*.safetensors")):
            models.append(str(path.parent.relative_to(run_dir)))
    checkpoints = [str(p.relative_to(run_dir)) for _, p in find_checkpoints(output_dir)]
    final_adapters = [a for a in adapters if not _CHECKPOINT_RE.match(Path(a).name)]
    return {
        "adapter_dir": final_adapters[-1] if final_adapters else None,
        "adapter_dirs": adapters,
        "model_dirs": sorted(set(models)),
        "checkpoints": checkpoints,
    }
