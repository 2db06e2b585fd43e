"""Every command block in README.md runs as written, in order, on a CPU machine, in a temporary copy of the
repository (so `runs/`, `out/`, `bench/`, `merged/` never land in the checkout).

Skipped on purpose:
- the set-up commands `scripts/demo` and `scripts/test`: `scripts/test` runs this very test suite (it would
  recurse), and `scripts/demo` reinstalls the package and trains the demo; what both do is covered by the other
  blocks (env install, explain, run, show) and by tests/test_engine_*.py;
- lines whose trailing comment says `needs a GPU` (they are rendered and validated elsewhere) or
  `runs until stopped` (servers such as `qwenrecipes ui`).

A command the README adds later is covered without touching this file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SETUP_COMMANDS = {"scripts/demo", "scripts/test"}
SKIP_MARKERS = ("needs a GPU", "runs until stopped")
COMMAND_TIMEOUT_S = 1200
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "out", "bench", "bench-out", "merged", "__pycache__",
                                     "*.egg-info", "node_modules", "test-artifacts", ".ruff_cache", ".pytest_cache")


def readme_commands(text: str) -> list[str]:
    """The ```bash blocks' command lines, in order (backslash continuations joined, blank lines dropped)."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def _comment(command: str) -> str:
    # A trailing `  # ...` comment (README aligns them); a '#' inside quotes is part of the command.
    match = re.search(r"\s#\s(.*)$", command)
    return match.group(1) if match else ""


def test_readme_commands_are_found() -> None:
    commands = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert {c.split()[0] for c in commands} >= SETUP_COMMANDS
    assert any(c.startswith("qwenrecipes validate") for c in commands)
    assert readme_commands("```bash\na \\\n  b  # c\n\n# only a comment\n```\n") == ["a    b  # c"]


@pytest.mark.engine
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE, symlinks=True)
    bin_dir = Path(sys.executable).parent  # the qwenrecipes console script of the interpreter running the tests
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    ran = []
    for command in readme_commands((copy / "README.md").read_text(encoding="utf-8")):
        if command.split()[0] in SETUP_COMMANDS or any(m in _comment(command) for m in SKIP_MARKERS):
            continue
        proc = subprocess.run(["bash", "-c", command], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (f"README command failed ({proc.returncode}): {command}\n"
                                      f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
        assert "Traceback" not in proc.stderr, command
        ran.append(command)
    assert len(ran) >= 15
