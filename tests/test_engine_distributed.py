"""Real multi-process runs on the CPU (gloo) through each engine's own launcher: recipes/tiny-cpu-ddp.yaml, 2
processes x micro-batch 2 against 1 process x micro-batch 4 (the same effective batch, so the same losses).
Marked `engine`; each test skips when its engine env is not installed. Kept few and short (6 steps each)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qwenrecipes.recipe.load import load_recipe_document
from qwenrecipes.run import envs
from qwenrecipes.run.procgroup import group_members
from tests.conftest import RECIPES

DDP = RECIPES / "tiny-cpu-ddp.yaml"
pytestmark = pytest.mark.engine


def _require(engine: str) -> envs.EngineEnv:
    try:
        return envs.env_for(engine)
    except Exception as exc:
        pytest.skip(f"{engine} env not installed: {exc}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from qwenrecipes.cli import main; main()", *args]


def _variant(tmp: Path, name: str, **distributed: object) -> Path:
    """tiny-cpu-ddp with other distributed settings (and micro-batch keeping the effective batch at 4)."""
    document = load_recipe_document(DDP)
    document["name"] = name
    document["data"]["train"]["path"] = str(RECIPES / "data" / "chat.jsonl")
    document["distributed"] = {**document["distributed"], **distributed}
    world = int(document["distributed"]["gpus"]) * int(document["distributed"].get("nodes", 1))
    document["training"]["micro_batch_size"] = 4 // world
    if world == 1:
        document["distributed"]["strategy"] = "none"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _run(recipe: Path, engine: str, run_dir: Path, *extra: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli("run", str(recipe), "--engine", engine, "--run-dir", str(run_dir), *extra),
                          capture_output=True, text=True, timeout=900, env=env)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["type"] == "train"]


@pytest.fixture(scope="module")
def trl_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require("trl")
    run_dir = tmp_path_factory.mktemp("trl") / "two"
    started = time.time()
    proc = _run(DDP, "trl", run_dir)
    print(f"trl 2-process run: {time.time() - started:.0f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.mark.parametrize("engine", ["trl", "llamafactory"])
def test_two_processes_match_one_process(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _require(engine)
    two = request.getfixturevalue("trl_two") if engine == "trl" else tmp_path / "two"
    started = time.time()
    if engine != "trl":
        proc = _run(DDP, engine, two)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    one = tmp_path / "one"
    proc = _run(_variant(tmp_path, "tiny-cpu-1proc", gpus=1), engine, one)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"{engine} 2-process + 1-process runs: {time.time() - started:.0f} s")
    losses_two, losses_one = _losses(two), _losses(one)
    # Events from rank 0 once: every step exactly once.
    assert [s for s, _ in losses_two] == [1, 2, 3, 4, 5, 6] == [s for s, _ in losses_one]
    # Same effective batch, same rows per step: the losses agree to the engines' 4-digit log rounding.
    assert all(abs(a - b) <= 0.02 for (_, a), (_, b) in zip(losses_two, losses_one, strict=True)), \
        (losses_two, losses_one)
    # Every rank's output is kept.
    logs = {p.parent.name for p in (two / "ranks").rglob("stderr.log")}
    assert logs == {"0", "1"}
    assert json.loads((two / "plan.json").read_text())["world_size"] == 2


def test_resume_with_one_process_is_refused(trl_two: Path, tmp_path: Path) -> None:
    proc = _run(_variant(tmp_path, "tiny-cpu-ddp", gpus=1), "trl", trl_two, "--resume")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "started with world size 2" in proc.stderr and "this recipe has 1" in proc.stderr


def test_ctrl_c_stops_every_rank(tmp_path: Path) -> None:
    _require("llamafactory")
    run_dir = tmp_path / "stop"
    process = subprocess.Popen(_cli("run", str(DDP), "--engine", "llamafactory", "--run-dir", str(run_dir)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    events = run_dir / "events.jsonl"
    while time.time() < deadline and '"train"' not in (events.read_text() if events.exists() else ""):
        time.sleep(1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert not group_members(summary["pgid"])  # torchrun and both ranks are gone


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_nodes_rendezvous_on_localhost(tmp_path: Path) -> None:
    """2 "nodes" x 1 process: the rendered launch_node.sh, run twice (NODE_RANK 0 and 1, each in its own copy of
    the folder, as two machines would have), meets at MASTER_ADDR:MASTER_PORT and trains."""
    env_dir = _require("trl")
    recipe = _variant(tmp_path, "tiny-cpu-2node", gpus=1, nodes=2)
    node0 = tmp_path / "node0"
    subprocess.run(_cli("render", str(recipe), "-e", "trl", "-o", str(node0)), check=True, capture_output=True)
    node1 = tmp_path / "node1"
    shutil.copytree(node0, node1)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "ENGINE_BIN": str(env_dir.bin_dir)}
    started = time.time()
    nodes = [subprocess.Popen(["bash", str(folder / "launch_node.sh")], env={**base, "NODE_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, folder in enumerate((node0, node1))]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    print(f"trl 2 nodes x 1 process: {time.time() - started:.0f} s")
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "'loss'" in outputs[0] and "6/6" in outputs[0]


def test_crash_on_one_rank_fails_the_run_with_its_traceback(tmp_path: Path) -> None:
    """The real torchrun (with the built-in engines' launcher options) over a real gloo group whose rank 1 raises
    after step 2 (tests/fixtures/rankcrash_engine, a plug-in registered by entry point): `run` ends failed, the
    summary names rank 1 and carries rank 1's traceback (not torchrun's ChildFailedError), events come from rank
    0 once, and both ranks' logs are kept."""
    torchrun = _require("trl").bin_dir / "torchrun"
    site = tmp_path / "site"
    dist_info = site / "qr_rankcrash_engine-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: qr-rankcrash-engine\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[qwenrecipes.engines]\nrankcrash = qr_rankcrash_engine:ENGINE\n")
    fixtures = Path(__file__).parent / "fixtures" / "rankcrash_engine"
    path = os.pathsep.join([str(site), str(fixtures), str(Path(__file__).parent.parent)])
    run_dir = tmp_path / "crash"
    started = time.time()
    proc = _run(DDP, "rankcrash", run_dir, env={**os.environ, "PYTHONPATH": path, "QR_TORCHRUN": str(torchrun)})
    print(f"torchrun 2 ranks, rank 1 crashing: {time.time() - started:.0f} s")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    error = summary["error"]
    assert error["rank"] == 1, error
    assert error["text"].startswith("rank 1:") and "RuntimeError: rank 1 fails on purpose at step 2" in error["text"]
    assert "ChildFailedError" not in error["text"]
    assert [s for s, _ in _losses(run_dir)][:2] == [1, 2]  # rank 0's lines, each step once
    assert {p.parent.name for p in (run_dir / "ranks").rglob("stderr.log")} == {"0", "1"}
