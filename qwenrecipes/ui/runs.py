"""The run side of the web app: start and stop runs, follow their events, list runs, compare and bench reports.

A run is started as a subprocess, `python -m qwenrecipes.cli run RECIPE --engine E --run-dir DIR`, exactly the
CLI command, rather than by calling runner.execute in a server thread, because:
- the runner turns SIGINT/SIGTERM into a clean stop (engine group ended, summary.json written as "interrupted")
  only in a process's main thread: a subprocess gets that behaviour unchanged, and Stop is one SIGTERM;
- the supervisor loop blocks and the engine floods output: in its own process neither slows the server;
- a run outlives a server restart, and what the page started is what `qwenrecipes run` would have done.
The page follows a run the way every other tool does: by reading its events.jsonl.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.ui.safety import project_path, relative_to_project

RUNS_FOLDER = "runs"
OUTPUT_LINES = 60
BENCH_RESULTS = "results.json"
BENCH_REPORT = "report.md"


@dataclass
class Started:
    """A `qwenrecipes run` this server started."""

    run_dir: Path
    engine: str
    recipe: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))

    def state(self) -> dict[str, Any]:
        code = self.process.poll()
        return {"pid": self.process.pid, "running": code is None, "returncode": code, "engine": self.engine,
                "recipe": self.recipe, "started": self.started, "output": list(self.output)}


def _read_output(started: Started) -> None:
    """Keep the tail of the CLI's own output (its progress bar, or why it refused to start)."""
    assert started.process.stdout is not None
    for raw in iter(started.process.stdout.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip()
        if line:
            started.output.append(line.split("\r")[-1])
    started.process.stdout.close()


def tree_rss_gb(pid: int) -> float | None:
    """Resident memory of a process and all its descendants (the CLI, the engine and its workers): the memory
    line of the live chart on a CPU, where engines log no accelerator memory. None where /proc is unreadable."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(name)] = int(fields[1])
        rss[int(name)] = int(fields[21]) if len(fields) > 21 else 0
    members, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in members]
        members.update(children)
        frontier.extend(children)
    total = sum(rss.get(p, 0) for p in members) * os.sysconf("SC_PAGE_SIZE")
    return total / 1024**3 if total else None


class RunManager:
    """The runs this server started, by run dir (resolved)."""

    def __init__(self, project: Path) -> None:
        self.project = project.resolve()
        self.started: dict[Path, Started] = {}
        self.lock = threading.Lock()

    def start(self, recipe: str, engine: str, run_dir: str | None = None, *, force: bool = False,
              resume: bool = False, target: str | None = None) -> dict[str, Any]:
        from qwenrecipes.engines import ENGINES

        if engine not in ENGINES:
            raise QwenRecipesError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
        recipe_path = project_path(self.project, recipe)
        if run_dir is None:
            from qwenrecipes.recipe.load import load_recipe_document

            name = load_recipe_document(recipe_path).get("name") or "qwen3-sft"
            run_dir = f"{RUNS_FOLDER}/{name}-{engine}"
        target_dir = project_path(self.project, run_dir, must_exist=False)
        with self.lock:
            current = self.started.get(target_dir)
            if current is not None and current.process.poll() is None:
                raise QwenRecipesError(f"{run_dir} is already running (pid {current.process.pid}): stop it first")
            argv = [sys.executable, "-m", "qwenrecipes.cli", "run", str(recipe_path), "--engine", engine,
                    "--run-dir", str(target_dir)]
            argv += ["--force"] if force else []
            argv += ["--resume"] if resume else []
            argv += ["--target", target] if target else []
            # Own session: a Ctrl-C in the server's terminal is not also delivered to the run.
            process = subprocess.Popen(argv, cwd=self.project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "COLUMNS": "120"})
            started = Started(target_dir, engine, recipe, process)
            self.started[target_dir] = started
        threading.Thread(target=_read_output, args=(started,), daemon=True).start()
        return {"run_dir": relative_to_project(self.project, target_dir), **started.state()}

    def stop(self, run_dir: str) -> dict[str, Any]:
        """SIGTERM to the `qwenrecipes run` process: its runner ends the engine's process group and writes
        summary.json with status "interrupted" (the same as Ctrl-C at the CLI). Only runs this server started."""
        target_dir = project_path(self.project, run_dir, must_exist=False)
        started = self.started.get(target_dir)
        if started is None:
            raise QwenRecipesError(f"{run_dir} was not started by this server: stop it where it runs")
        if started.process.poll() is None:
            started.process.send_signal(signal.SIGTERM)
        return {"run_dir": run_dir, **started.state()}

    def state(self, run_dir: Path) -> dict[str, Any] | None:
        started = self.started.get(run_dir.resolve())
        return started.state() if started else None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every run still going when the server exits (each writes its summary first)."""
        live = [s for s in self.started.values() if s.process.poll() is None]
        for started in live:
            started.process.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        for started in live:
            try:
                started.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                started.process.kill()

    # ------------------------------------------------------------------------------------------ reading
    def list(self) -> list[dict[str, Any]]:
        from qwenrecipes.run.runs import list_runs

        root = self.project / RUNS_FOLDER
        found = list_runs(root) if root.is_dir() else []
        rows = []
        for run in found:
            summary = run.summary or {}
            rows.append({"run_dir": relative_to_project(self.project, run.path), "engine": run.engine,
                         "status": run.status, "recipe": run.marker.get("recipe"),
                         "created": run.marker.get("created"), "steps": summary.get("steps"),
                         "total_steps": summary.get("total_steps"), "first_loss": summary.get("first_loss"),
                         "final_loss": summary.get("final_loss"),
                         "wall_time_s": summary.get("total_wall_time_s") or summary.get("wall_time_s"),
                         "tokens_per_s": summary.get("tokens_per_s"), "process": self.state(run.path)})
        listed = {r["run_dir"] for r in rows}
        for path, started in self.started.items():  # started, but the runner has not claimed the dir yet
            name = relative_to_project(self.project, path)
            if name not in listed:
                rows.insert(0, {"run_dir": name, "engine": started.engine, "status": "starting",
                                "recipe": started.recipe, "process": started.state()})
        return rows

    def events_path(self, run_dir: str) -> Path:
        from qwenrecipes.run.rundir import EVENTS_FILE

        return project_path(self.project, run_dir, must_exist=False) / EVENTS_FILE

    def compare(self, run_dirs: list[str]) -> dict[str, Any]:
        """`qwenrecipes compare`'s table and plot; the PNG goes to a temporary file, not into the project."""
        from qwenrecipes.run.compare import compare_runs, plot_comparison, relative_spread

        paths = [project_path(self.project, r) for r in run_dirs]
        rows = compare_runs(paths)
        with tempfile.TemporaryDirectory(prefix="qwenrecipes-ui-") as tmp:
            try:
                png = plot_comparison(rows, Path(tmp) / "compare.png").read_bytes()
            except QwenRecipesError:
                png = b""
        return {"runs": [{**r.to_json(), "run": relative_to_project(self.project, Path(r.run))} for r in rows],
                "spread": {"first_loss": relative_spread([r.first_loss for r in rows]),
                           "final_loss": relative_spread([r.final_loss for r in rows])},
                "plot": f"data:image/png;base64,{base64.b64encode(png).decode()}" if png else None}

    def bench_reports(self) -> list[dict[str, Any]]:
        """Folders `qwenrecipes bench` wrote (results.json + report.md), up to two levels down."""
        reports = []
        for results in sorted([*self.project.glob(f"*/{BENCH_RESULTS}"), *self.project.glob(f"*/*/{BENCH_RESULTS}")]):
            folder = results.parent
            if not (folder / BENCH_REPORT).is_file() or RUNS_FOLDER in folder.relative_to(self.project).parts[:1]:
                continue
            try:
                project_path(self.project, relative_to_project(self.project, folder))
            except QwenRecipesError:
                continue  # a symlinked folder that leads out of the project
            reports.append({"folder": relative_to_project(self.project, folder),
                            "report": (folder / BENCH_REPORT).read_text(encoding="utf-8", errors="replace"),
                            "plots": sorted(relative_to_project(self.project, p) for p in folder.glob("*.png"))})
        return reports


def event_lines(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of events.jsonl after byte `offset`, and the offset after the last complete one
    (a line the runner is still writing is read on the next poll)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end
