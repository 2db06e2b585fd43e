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
import secrets
import shutil
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.run.lock import LOCK_FILE

MARKER_FILE = ".qwenrecipes-run.json"
LOG_FILE = "engine.log"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
SUPERSEDED_FILE = "events.superseded.jsonl"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def default_run_dir(recipe_name: str, engine: str) -> Path:
    return Path("runs") / f"{recipe_name}-{engine}"


def read_json_file(path: Path, problems: list[str] | None = None) -> Any:
    """A JSON file's value, or None when it is missing or damaged; damage is described (file, line, why) in
    `problems` for the caller to show. Readers of run files never fail on what a killed writer left."""
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _note(problems, f"{path}: cannot be read ({reason})")
    except json.JSONDecodeError as exc:
        _note(problems, f"{path} line {exc.lineno}: damaged JSON ({exc.msg})")
    except RecursionError:
        _note(problems, f"{path}: nested too deeply to read")
    return None


def _note(problems: list[str] | None, message: str) -> None:
    if problems is not None:
        problems.append(message)


def read_marker(run_dir: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The run dir's marker, or None. A marker that is there but damaged is described in `problems`."""
    marker = run_dir / MARKER_FILE
    if not marker.is_file() or marker.is_symlink():
        return None
    value = read_json_file(marker, problems)
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("kind") != "qwenrecipes-run":
        _note(problems, f"{marker}: not a qwenrecipes run marker (no \"kind\": \"qwenrecipes-run\")")
        return None
    created = value.get("created")
    if created is not None and not (isinstance(created, (int, float)) and not isinstance(created, bool)
                                    and 0 <= created < 1e11):
        _note(problems, f"{marker}: \"created\" is not a time ({created!r}); ignored")
        value = {**value, "created": None}
    return value


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and read_marker(path) is not None


def has_marker_file(path: Path) -> bool:
    """The folder carries our marker file, readable or not (a damaged marker is still ours to --force)."""
    marker = path / MARKER_FILE
    return path.is_dir() and not path.is_symlink() and marker.is_file() and not marker.is_symlink()


def remove_run_dir(run_dir: Path) -> None:
    """--force: delete a previous run. Only ever a real folder carrying our marker (damaged or not), never the
    folder we stand in or one above it, so a mistyped --run-dir cannot wipe unrelated work. The run dir's lock
    file stays (run/lock.py): whoever holds it keeps holding the one a second `run` would try."""
    if not has_marker_file(run_dir):
        raise QwenRecipesError(
            f"{run_dir} is not a qwenrecipes run dir (no {MARKER_FILE}); --force only deletes runs: "
            "choose another --run-dir or move the folder away yourself")
    resolved, cwd = run_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise QwenRecipesError(f"refusing to delete {run_dir}: it holds the current directory; cd elsewhere first")
    # The marker goes last: a removal cut short still leaves a folder that --force will take.
    entries = sorted(resolved.iterdir(), key=lambda p: p.name == MARKER_FILE)
    for entry in entries:
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def is_empty_run_dir(path: Path) -> bool:
    """Nothing in it but (maybe) the lock file."""
    return all(entry.name == LOCK_FILE for entry in path.iterdir())


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON so readers see the old file or the whole new one, never half: a temporary file beside it,
    flushed to disk, then os.replace. A write that fails (an unserialisable value, a full disk) leaves the old
    file whole and no temporary file behind."""
    # Not tempfile.mkstemp: its 0600 mode would make summaries and env markers unreadable to others (the umask
    # decides, as for any file we write).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


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
