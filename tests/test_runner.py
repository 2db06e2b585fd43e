"""Runner mechanics with a fake engine process (fixtures/fake_engine.py): streaming, watchdog, signals,
markers, resume, redaction. Real engines are exercised in tests/test_engine_runs.py (marked `engine`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.run.events import read_events
from qwenrecipes.run.procgroup import group_alive
from qwenrecipes.run.rundir import EVENTS_FILE, LOG_FILE, MARKER_FILE, SUMMARY_FILE, SUPERSEDED_FILE, write_json_atomic
from qwenrecipes.run.runner import claim_run_dir, execute
from qwenrecipes.run.spec import RunSpec

FAKE = Path(__file__).parent / "fixtures" / "fake_engine.py"


def spec_for(run_dir: Path, *args: str, **overrides: object) -> RunSpec:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(overrides.pop("env", {}))  # type: ignore[arg-type]
    values: dict[str, object] = {"run_dir": run_dir, "engine": "trl", "argv": [sys.executable, str(FAKE), *args],
                                 "env": env, "output_dir": run_dir / "outputs", "total_steps": 6,
                                 "recipe_name": "fake", "recipe_hash": "abc", "grace": 2.0}
    values.update(overrides)
    return RunSpec(**values)  # type: ignore[arg-type]


def train_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in read_events(run_dir / EVENTS_FILE) if e["type"] == "train"]


def pgid_of(run_dir: Path) -> int:
    return int((run_dir / "ready").read_text())


def test_ok_run_writes_events_log_and_summary(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []
    result = execute(spec_for(tmp_path / "run", "--steps", "6", "--save-steps", "3"), on_event=seen.append)
    run = tmp_path / "run"
    assert result.status == "ok"
    assert train_steps(run) == [1, 2, 3, 4, 5, 6]
    events = read_events(run / EVENTS_FILE)
    assert all(e["v"] == 1 and isinstance(e["t"], float) for e in events)
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert {e["step"] for e in events if e["type"] == "checkpoint"} == {3, 6}
    assert any(e["type"] == "raw" and "chatter" in e["message"] for e in events)
    assert any(e.get("type") == "progress" for e in seen)  # the CLI's bar gets tqdm steps
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "ok" and summary["steps"] == 6
    assert summary["first_loss"] == 2.0 and summary["final_loss"] == pytest.approx(0.3333)
    assert summary["steps_per_s"] == 2
    assert summary["artifacts"]["adapter_dir"] == "outputs"
    assert summary["artifacts"]["checkpoints"] == ["outputs/checkpoint-3", "outputs/checkpoint-6"]
    assert b"{'loss': '2'" in (run / LOG_FILE).read_bytes()
    assert not group_alive(pgid_of(run))


def test_stall_watchdog_kills_group(tmp_path: Path) -> None:
    started = time.time()
    result = execute(spec_for(tmp_path / "run", "--hang-after", "2", stall_timeout=2.0))
    assert time.time() - started < 30
    assert result.status == "failed"
    assert "stalled" in result.summary["error"]["reason"]
    assert train_steps(tmp_path / "run") == [1, 2]
    assert not group_alive(pgid_of(tmp_path / "run"))


def test_traceback_then_silence_is_caught(tmp_path: Path) -> None:
    result = execute(spec_for(tmp_path / "run", "--traceback-then-hang", stall_timeout=120.0,
                              traceback_timeout=2.0))
    assert result.status == "failed"
    error = result.summary["error"]
    assert "traceback" in error["reason"]
    assert error["text"].startswith("Traceback (most recent call last):")
    assert "device-side assert" in error["text"]
    assert error["class"] == "cuda_assert"
    assert any(e["type"] == "error" for e in read_events(tmp_path / "run" / EVENTS_FILE))


def test_busy_silence_after_a_traceback_is_not_a_hang(tmp_path: Path) -> None:
    result = execute(spec_for(tmp_path / "run", "--traceback-then-busy", "4", traceback_timeout=1.0))
    assert result.status == "ok"
    assert train_steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_crash_is_classified(tmp_path: Path) -> None:
    result = execute(spec_for(tmp_path / "run", "--crash", "CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert result.status == "failed" and result.summary["returncode"] == 1
    assert result.summary["error"]["class"] == "cuda_oom"
    assert "micro_batch_size" in result.summary["error"]["fix"]
    assert "RuntimeError: CUDA out of memory" in result.summary["error"]["text"]


def _interrupt_when(predicate: object, timeout: float = 30.0) -> threading.Thread:
    def fire() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():  # type: ignore[operator]
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def test_sigint_stops_group_even_if_engine_ignores_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _interrupt_when(lambda: len(train_steps(run)) >= 2)
    result = execute(spec_for(run, "--steps", "1000", "--sleep", "0.1", "--ignore-sigint", "--grandchild",
                              grace=1.0))
    assert result.status == "interrupted"
    assert not group_alive(pgid_of(run))
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and summary["steps"] >= 2
    assert read_events(run / EVENTS_FILE)[-1]["status"] == "interrupted"


def test_leftover_grandchild_does_not_hang_the_run(tmp_path: Path) -> None:
    started = time.time()
    result = execute(spec_for(tmp_path / "run", "--grandchild"))
    assert result.status == "ok"
    assert time.time() - started < 20
    assert not group_alive(pgid_of(tmp_path / "run"))


def test_secrets_are_redacted(tmp_path: Path) -> None:
    secret = "hf_" + "Q" * 34
    run = tmp_path / "run"
    execute(spec_for(run, "--print-env", "WANDB_API_KEY", env={"WANDB_API_KEY": "wandb-secret-value-1"}))
    execute(spec_for(tmp_path / "run2", "--print-env", "HF_TOKEN", env={"HF_TOKEN": secret}))
    for folder in (run, tmp_path / "run2"):
        for name in (LOG_FILE, EVENTS_FILE, SUMMARY_FILE):
            text = (folder / name).read_text(errors="replace")
            assert "wandb-secret-value-1" not in text and secret not in text
        assert "token is ***" in (folder / LOG_FILE).read_text()


def test_resume_continues_steps_without_duplicates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = spec_for(run, "--steps", "6", "--save-steps", "3", "--sleep", "0.3")
    write_json_atomic(run / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe_hash": "abc"})
    _interrupt_when(lambda: len(train_steps(run)) >= 4 and (run / "outputs/checkpoint-3").is_dir())
    assert execute(spec).status == "interrupted"
    interrupted_steps = train_steps(run)
    assert interrupted_steps[:4] == [1, 2, 3, 4]

    resume_from, start = claim_run_dir(run, "trl", "abc", run / "outputs", resume=True, force=False)
    assert (resume_from, start) == ("outputs/checkpoint-3", 3)
    assert train_steps(run) == [1, 2, 3]  # steps after the checkpoint are set aside, not duplicated
    assert (run / SUPERSEDED_FILE).is_file()
    resumed = spec_for(run, "--steps", "6", "--save-steps", "3", "--resume-from", resume_from,
                       resume_from=resume_from, start_step=start)
    result = execute(resumed)
    assert result.status == "ok"
    assert train_steps(run) == [1, 2, 3, 4, 5, 6]
    assert result.summary["first_loss"] == 2.0 and result.summary["resumed_from"] == "outputs/checkpoint-3"
    assert [e["type"] for e in read_events(run / EVENTS_FILE)].count("start") == 2


def test_run_dir_refusals(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(QwenRecipesError, match="choose another --run-dir"):
        claim_run_dir(foreign, "trl", "abc", foreign / "outputs", resume=False, force=True)
    assert (foreign / "precious.txt").read_text() == "keep me"
    with pytest.raises(QwenRecipesError, match="nothing to resume"):
        claim_run_dir(foreign, "trl", "abc", foreign / "outputs", resume=True, force=False)

    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe_hash": "abc"})
    # No checkpoint yet: the hint is the flag that works (--force), not --resume.
    with pytest.raises(QwenRecipesError, match=r"no checkpoint to resume from: pass --force"):
        claim_run_dir(run, "trl", "abc", run / "outputs", resume=False, force=False)
    (run / "outputs" / "checkpoint-2").mkdir(parents=True)
    (run / "outputs" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(QwenRecipesError, match=r"--resume .*--force"):
        claim_run_dir(run, "trl", "abc", run / "outputs", resume=False, force=False)
    shutil.rmtree(run / "outputs")
    with pytest.raises(QwenRecipesError, match="recipe changed"):
        claim_run_dir(run, "trl", "other", run / "outputs", resume=True, force=False)
    with pytest.raises(QwenRecipesError, match="no complete checkpoint"):
        claim_run_dir(run, "trl", "abc", run / "outputs", resume=True, force=False)
    assert claim_run_dir(run, "trl", "abc", run / "outputs", resume=False, force=True) == (None, 0)
    assert list(run.iterdir()) == []  # emptied; the folder (and a lock file, when locked) stays
    assert claim_run_dir(tmp_path / "new", "trl", "abc", tmp_path / "new" / "outputs", resume=False,
                         force=False) == (None, 0)


# ------------------------------------------------------------------------------------- real engines
# `qwenrecipes run recipes/tiny-cpu.yaml` (30 LoRA steps on a 2-layer model) through the CLI, in each
# engine's installed env. They skip when the env is not installed (`qwenrecipes env install ENGINE`).

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny-cpu.yaml"
ENGINES = ["axolotl", "llamafactory", "trl"]
ENGINE_TIMEOUT = 1500.0  # seconds for one run; a 2-core CI machine under load is slow


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from qwenrecipes.cli import main; main()", *args]


def _require_env(engine: str) -> None:
    from qwenrecipes.errors import EngineError
    from qwenrecipes.run import envs

    try:
        envs.env_for(engine)
    except EngineError as exc:
        pytest.skip(f"{engine} env not installed: {exc}")


def _assert_complete_training(run: Path) -> list[dict[str, object]]:
    events = read_events(run / EVENTS_FILE)
    train = [e for e in events if e["type"] == "train"]
    assert [e["step"] for e in train] == list(range(1, 31)), "every step 1..30 once"
    losses = [float(e["loss"]) for e in train]  # type: ignore[arg-type]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"loss did not go down: {losses}"
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "ok" and summary["steps"] == 30
    assert summary["versions"].get("engine") and len(summary["recipe_hash"]) == 64
    assert list((run / "outputs").rglob("adapter_model.safetensors")), "no adapter saved"
    assert summary["artifacts"]["adapter_dir"]
    assert not group_alive(summary["pgid"])
    return events


@pytest.mark.engine
@pytest.mark.parametrize("engine", ENGINES)
def test_engine_full_run(engine: str, tmp_path: Path) -> None:
    _require_env(engine)
    run = tmp_path / "run"
    proc = subprocess.run(_cli("run", str(TINY), "--engine", engine, "--run-dir", str(run)), cwd=tmp_path,
                          capture_output=True, text=True, timeout=ENGINE_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_complete_training(run)
    assert (run / LOG_FILE).stat().st_size > 0


@pytest.mark.engine
@pytest.mark.parametrize("engine", ENGINES)
def test_engine_interrupt_then_resume(engine: str, tmp_path: Path) -> None:
    """SIGINT after checkpoint-10 and a later step -> interrupted, group gone, dir intact; --resume then
    continues from the checkpoint with no step twice in events.jsonl."""
    _require_env(engine)
    run = tmp_path / "run"
    base = ("run", str(TINY), "--engine", engine, "--run-dir", str(run))
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_cli(*base), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + ENGINE_TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            events = read_events(run / EVENTS_FILE)
            saved = [e["step"] for e in events if e["type"] == "checkpoint"]
            if saved and max(train_steps(run) or [0]) > min(saved):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted"
    assert not group_alive(summary["pgid"])
    assert (run / MARKER_FILE).is_file() and (run / LOG_FILE).stat().st_size > 0
    interrupted_at = max(train_steps(run))
    assert interrupted_at < 30

    refused = subprocess.run(_cli(*base), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = subprocess.run(_cli(*base, "--resume"), cwd=tmp_path, capture_output=True, text=True,
                             timeout=ENGINE_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = _assert_complete_training(run)
    starts = [e for e in events if e["type"] == "start"]
    assert len(starts) == 2 and str(starts[1]["resume_from"]).startswith("outputs/checkpoint-")
    resumed_from = int(str(starts[1]["resume_from"]).rsplit("-", 1)[1])
    after = events[events.index(starts[1]):]
    assert next(e["step"] for e in after if e["type"] == "train") == resumed_from + 1
