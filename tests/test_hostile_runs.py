"""Hostile-input corpus, run time: real `qwenrecipes run` processes killed at different phases (SIGKILL, SIGINT,
SIGTERM), two runs into one dir, an engine descendant that calls setsid, a full disk, a secret across the
runner's 64 KiB line cut, and damaged run files read by `runs`, `show` and `run --resume`.

Promises checked (SECURITY.md, "Runs"): zero tracebacks; zero processes left (every process a test starts carries
a tag in its environment, and /proc is searched for it afterwards, whatever its process group or session); the
log on disk as it comes; a summary on every exit that can be caught; the printed hint is the command that works.

Most cases drive a plug-in engine (tests/fixtures/fakerun_engine: its command is tests/fixtures/fake_engine.py in
this interpreter, registered through the entry point like any installed plug-in), so they take seconds; the
cases marked `engine` run the real trl engine on recipes/tiny-cpu.yaml."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.run.rundir import EVENTS_FILE, LOG_FILE, MARKER_FILE, SUMMARY_FILE

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
TINY = REPO / "recipes" / "tiny-cpu.yaml"
CLI = "import sys; from qwenrecipes.cli import main; main(sys.argv[1:])"
FULL_DISK = """
import resource, signal, sys
from qwenrecipes.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as ENOSPC would be
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
main(sys.argv[2:])
"""
TAG = "QR_HOSTILE_RUN_TAG"


class Harness:
    """Starts `qwenrecipes run` (and friends) as real processes with the fakerun plug-in installed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.tag = uuid.uuid4().hex
        site = tmp_path / "site"
        dist_info = site / "qr_fakerun_engine-0.1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: qr-fakerun-engine\nVersion: 0.1.0\n")
        (dist_info / "entry_points.txt").write_text("[qwenrecipes.engines]\nfakerun = qr_fakerun_engine:ENGINE\n")
        path = os.pathsep.join([str(site), str(FIXTURES / "fakerun_engine"), str(REPO)])
        self.env = {**os.environ, "PYTHONPATH": path, TAG: self.tag, "HF_TOKEN": "hf_" + "S3cret" * 6}
        self.recipe = self.write_recipe()

    def write_recipe(self, **training: Any) -> Path:
        document = yaml.safe_load(TINY.read_text(encoding="utf-8"))
        document["data"]["train"]["path"] = str((TINY.parent / document["data"]["train"]["path"]).resolve())
        document["training"].update({"max_steps": 6, "save_steps": 3, **training})
        path = self.tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path

    def start(self, *args: str, fake: str = "", prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", *(prefix or (CLI,)), *args]
        return subprocess.Popen(argv, cwd=self.tmp, env={**self.env, "QR_FAKE_ARGS": fake}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                # Ctrl-C must raise KeyboardInterrupt even when pytest runs with SIGINT ignored.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def run_args(self, run_dir: Path, *extra: str, engine: str = "fakerun") -> list[str]:
        return ["run", str(self.recipe), "-e", engine, "--run-dir", str(run_dir), "--target", "cpu", *extra]

    def cli(self, *args: str, fake: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
        process = self.start(*args, fake=fake)
        out, err = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def leftovers(self) -> list[int]:
        """Live processes carrying this test's tag, wherever they are (group, session, parent)."""
        needle = f"{TAG}={self.tag}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                if state not in (b"Z", b"X") and needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except (OSError, IndexError):
                continue
        return found

    def assert_no_leftovers(self, within: float = 15.0) -> None:
        deadline = time.time() + within
        while (left := self.leftovers()) and time.time() < deadline:
            time.sleep(0.1)
        for pid in left:  # clean up before failing, so one failure does not leave sleepers behind
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"processes left behind: {left}"


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


def log_has(run_dir: Path, text: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return text in (run_dir / LOG_FILE).read_text(errors="replace")
        except OSError:
            return False
    return check


def no_traceback(*results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        assert "Traceback" not in result.stdout + result.stderr, result.stderr


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    h = Harness(tmp_path)
    yield h
    for pid in h.leftovers():
        os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------- kills by phase
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_before_the_first_checkpoint_says_force(harness: Harness, sig: int) -> None:
    run = harness.tmp / "run"
    process = harness.start(*harness.run_args(run), fake="--steps 40 --sleep 0.2 --save-steps 30")
    wait_for(log_has(run, "'loss'"))
    process.send_signal(sig)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert "--force" in err and "--resume" not in err.split("start over with:")[-1], err
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and "--force" in summary["error"]["reason"]
    harness.assert_no_leftovers()
    refused = harness.cli(*harness.run_args(run, "--resume"))
    assert refused.returncode == 2 and "--force" in refused.stderr
    again = harness.cli(*harness.run_args(run, "--force"), fake="--steps 6")
    no_traceback(refused, again)
    assert again.returncode == 0, again.stderr


def test_interrupted_after_a_checkpoint_says_resume_and_resume_works(harness: Harness) -> None:
    run = harness.tmp / "run"
    process = harness.start(*harness.run_args(run), fake="--steps 40 --sleep 0.2 --save-steps 3")
    wait_for(lambda: (run / "outputs" / "checkpoint-3" / "trainer_state.json").is_file())
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in err and "Traceback" not in err
    harness.assert_no_leftovers()
    resumed = harness.cli(*harness.run_args(run, "--resume"), fake="--steps 6")
    no_traceback(resumed)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_while_the_data_is_prepared(harness: Harness, sig: int) -> None:
    """Ctrl-C / SIGTERM while train.jsonl is being written: a run dir that --force takes (and that --resume
    refuses with the --force hint), with a summary saying so."""
    rows = [{"messages": [{"role": "user", "content": f"q{i} " + "w " * 40},
                          {"role": "assistant", "content": "a " * 40}]} for i in range(60000)]
    data = harness.tmp / "big.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    document = yaml.safe_load(harness.recipe.read_text())
    document["data"]["train"]["path"] = str(data)
    document["data"]["max_seq_length"] = 8192  # no row is long: no tokenizer pass, the writing is the slow part
    harness.recipe.write_text(yaml.safe_dump(document))
    run = harness.tmp / "run"
    process = harness.start(*harness.run_args(run), fake="--steps 6")
    wait_for(lambda: (run / MARKER_FILE).is_file(), timeout=300)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and "--force" in summary["error"]["reason"]
    harness.assert_no_leftovers()
    shown = harness.cli("show", str(run), "--no-plot")
    refused = harness.cli(*harness.run_args(run, "--resume"))
    assert refused.returncode == 2 and "--force" in refused.stderr
    again = harness.cli(*harness.run_args(run, "--force"), fake="--steps 6", timeout=600)
    no_traceback(shown, refused, again)
    assert shown.returncode == 0 and again.returncode == 0, again.stderr


def test_sigkill_of_run_leaves_the_log_and_no_engine(harness: Harness) -> None:
    run = harness.tmp / "run"
    process = harness.start(*harness.run_args(run), fake="--steps 100 --sleep 0.2")
    wait_for(log_has(run, "'loss'"))
    process.kill()
    process.communicate(timeout=60)
    assert "'loss'" in (run / LOG_FILE).read_text()  # written as it came, not lost in a buffer
    harness.assert_no_leftovers()  # the engine dies with `run` (PR_SET_PDEATHSIG)
    listed, shown = harness.cli("runs", str(harness.tmp)), harness.cli("show", str(run), "--no-plot")
    no_traceback(listed, shown)
    assert listed.returncode == 0 and "unfinished" in listed.stdout
    assert shown.returncode == 0 and "no summary.json yet" in shown.stdout
    # The kernel dropped the dead run's lock: a new run may take the dir.
    again = harness.cli(*harness.run_args(run, "--force"), fake="--steps 6")
    no_traceback(again)
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------------------------ concurrency, tree
def test_two_runs_into_one_new_dir_only_one_trains(harness: Harness) -> None:
    run = harness.tmp / "run"
    first = harness.start(*harness.run_args(run), fake="--steps 40 --sleep 0.3")
    second = harness.start(*harness.run_args(run), fake="--steps 40 --sleep 0.3")
    results = {p.pid: (*p.communicate(timeout=300), p.returncode) for p in (first, second)}
    codes = sorted(code for _, _, code in results.values())
    assert codes == [0, 2], results
    winner = next(pid for pid, (_, _, code) in results.items() if code == 0)
    loser_err = next(err for _, err, code in results.values() if code == 2)
    assert f"in use by another qwenrecipes run (pid {winner})" in loser_err and "Traceback" not in loser_err
    starts = [json.loads(line) for line in (run / EVENTS_FILE).read_text().splitlines()]
    assert sum(e["type"] == "start" for e in starts) == 1  # one engine trained
    harness.assert_no_leftovers()


def test_a_running_run_cannot_be_forced_away(harness: Harness) -> None:
    run = harness.tmp / "run"
    first = harness.start(*harness.run_args(run), fake="--steps 600 --sleep 0.2")
    wait_for(log_has(run, "'loss'"))
    for extra in (["--force"], ["--resume"]):
        second = harness.cli(*harness.run_args(run, *extra))
        assert second.returncode == 2 and f"(pid {first.pid})" in second.stderr, second.stderr
        no_traceback(second)
    assert (run / LOG_FILE).is_file()  # --force deleted nothing under a live run
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    harness.assert_no_leftovers()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_setsid_descendant_does_not_keep_run_waiting(harness: Harness, sig: int) -> None:
    run = harness.tmp / "run"
    process = harness.start(*harness.run_args(run), fake="--steps 100 --sleep 0.2 --setsid-child")
    wait_for(log_has(run, "'loss'"))
    child = int((run / "setsid.pid").read_text())
    assert os.getsid(child) != os.getsid(process.pid)  # it really left the group and session
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)  # a hang here is the bug
    assert process.returncode == 130 and "Traceback" not in err
    assert json.loads((run / SUMMARY_FILE).read_text())["status"] == "interrupted"
    harness.assert_no_leftovers()


def test_a_setsid_descendant_of_a_finished_engine_is_ended(harness: Harness) -> None:
    run = harness.tmp / "run"
    result = harness.cli(*harness.run_args(run), fake="--steps 3 --setsid-child", timeout=120)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    harness.assert_no_leftovers()


def test_a_full_disk_mid_run_stops_the_engine_and_leaves_a_summary(harness: Harness) -> None:
    run = harness.tmp / "run"
    # 1 MB per file: room for the rendered data (the token file is ~250 KB), not for the engine's chatter.
    process = harness.start(str(1_000_000), *harness.run_args(run), fake="--steps 200 --sleep 0.05 --spam 20000",
                            prefix=(FULL_DISK,))
    _out, err = process.communicate(timeout=300)
    assert process.returncode == 1 and "Traceback" not in err, err
    summary = json.loads((run / SUMMARY_FILE).read_text())
    reason = summary["error"]["reason"]  # whichever of the two growing files hit the limit first, named
    assert summary["status"] == "failed" and any(f"could not write {run / name}" in reason
                                                 for name in (LOG_FILE, EVENTS_FILE)), reason
    assert reason in err  # and said on the terminal
    assert summary["steps"] < 200
    harness.assert_no_leftovers()


@pytest.mark.parametrize("offset", [65536 - 40, 65536 - 20, 65536 - 1, 65536, 65536 + 7, 2 * 65536 - 30])
def test_a_secret_across_the_64k_line_cut_is_redacted(harness: Harness, offset: int) -> None:
    run = harness.tmp / "run"
    result = harness.cli(*harness.run_args(run), fake=f"--steps 2 --long-line-secret HF_TOKEN:{offset}")
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    secret = harness.env["HF_TOKEN"].encode()
    log = (run / LOG_FILE).read_bytes()
    assert b"***" in log
    for name in (LOG_FILE, EVENTS_FILE, SUMMARY_FILE):
        data = (run / name).read_bytes()
        assert secret not in data and secret[:12] not in data, name
    assert b"x" * 1000 in log and b"y" * 1000 in log  # the line itself is kept, only the secret goes


# --------------------------------------------------------------------------------------- damaged files
DAMAGE: dict[str, tuple[str, bytes, str]] = {
    "marker not json": (MARKER_FILE, b"{\"kind\": \"qwenrecipes-run\", ", "line 1"),
    "marker a list": (MARKER_FILE, b"[1, 2]", "not a qwenrecipes run marker"),
    "marker bad bytes": (MARKER_FILE, b"\xff\xfe{}", "cannot be read"),
    "marker created text": (MARKER_FILE, b'{"kind": "qwenrecipes-run", "engine": "fakerun", "created": "soon"}',
                            "not a time"),
    "marker created huge": (MARKER_FILE, b'{"kind": "qwenrecipes-run", "engine": "fakerun", "created": 1e300}',
                            "not a time"),
    "summary torn": (SUMMARY_FILE, b'{"status": "ok", "steps": 6,\n "artifacts": {', "line 2"),
    "summary a string": (SUMMARY_FILE, b'"ok"', "not a JSON object"),
    "summary wrong types": (SUMMARY_FILE, b'{"status": 7, "error": "boom", "artifacts": [1], "versions": "x", '
                                          b'"wall_time_s": "long", "total_wall_time_s": {}, "steps": "many"}',
                            "is not an object"),
    "summary deep": (SUMMARY_FILE, b"[" * 100000, "summary.json"),
    "events garbage line": (EVENTS_FILE, b"\x00\x01garbage\n", "line 1"),
    "events not an object": (EVENTS_FILE, b"[1, 2, 3]\n", "line 1"),
    "events bad types": (EVENTS_FILE, b'{"type": "train", "step": "3", "t": "now", "loss": "low"}\n', "line 1"),
    "events bad utf8": (EVENTS_FILE, b'{"type": "train", "step": 1, "loss": "\xff"}\n', "line 1"),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Harness, Path]:
    harness = Harness(tmp_path_factory.mktemp("finished"))
    run = harness.tmp / "run"
    result = harness.cli(*harness.run_args(run), fake="--steps 6 --save-steps 3")
    assert result.returncode == 0, result.stderr
    return harness, run


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_files_are_named_not_tracebacks(finished_run: tuple[Harness, Path], case: str,
                                                    tmp_path: Path) -> None:
    harness, original = finished_run
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(original), str(run)], check=True)
    name, content, fragment = DAMAGE[case]
    if name == EVENTS_FILE:
        with open(run / name, "r+b") as handle:  # the damaged line first, the real events after it
            rest = handle.read()
            handle.seek(0)
            handle.write(content + rest)
    else:
        (run / name).write_bytes(content)
    listed = harness.cli("runs", str(tmp_path))
    shown = harness.cli("show", str(run))
    resumed = harness.cli(*harness.run_args(run, "--resume"))
    no_traceback(listed, shown, resumed)
    assert listed.returncode == 0 and str(run) in listed.stdout
    assert fragment in listed.stderr + shown.stderr + resumed.stderr
    assert str(run / name) in listed.stderr + shown.stderr + resumed.stderr
    assert shown.returncode == 0, shown.stderr
    # A finished run is not trained again; a damaged marker or summary may leave nothing to resume from.
    assert resumed.returncode in (0, 2), resumed.stderr
    if resumed.returncode == 2:
        assert "--force" in resumed.stderr
    forced = harness.cli(*harness.run_args(run, "--force"), fake="--steps 6")
    no_traceback(forced)
    assert forced.returncode == 0, forced.stderr


def test_resume_of_a_finished_run_does_nothing(finished_run: tuple[Harness, Path], tmp_path: Path) -> None:
    harness, original = finished_run
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(original), str(run)], check=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".qwenrecipes-run.lock"}
    result = harness.cli(*harness.run_args(run, "--resume"), fake="--steps 7")
    no_traceback(result)
    assert result.returncode == 0 and "already finished" in result.stderr, result.stderr
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".qwenrecipes-run.lock"}
    assert after == before  # no step, no event, no new summary


# -------------------------------------------------------------------------------------- the real engine
@pytest.mark.engine
def test_real_engine_interrupt_before_a_checkpoint_then_force(harness: Harness) -> None:
    """trl on tiny-cpu: SIGINT mid-training before the first checkpoint exits 130 with the --force hint,
    leaves its summary and no process; --resume is refused naming --force; --force trains; --resume of the
    finished run then does nothing."""
    from qwenrecipes.run.envs import env_for

    try:
        env_for("trl")
    except Exception:
        pytest.skip("the trl env is not installed (`qwenrecipes env install trl`)")
    harness.write_recipe(max_steps=8, save_steps=6)
    run = harness.tmp / "run"
    process = harness.start(*harness.run_args(run, engine="trl"))
    wait_for(lambda: any(json.loads(line).get("type") == "train"
                         for line in (run / EVENTS_FILE).read_text().splitlines()) if (run / EVENTS_FILE).is_file()
             else False, timeout=600)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in err.split("engine.log")[0], err
    if not (run / "outputs" / "checkpoint-6").is_dir():
        assert "--force" in err.splitlines()[-1]
    assert json.loads((run / SUMMARY_FILE).read_text())["status"] == "interrupted"
    harness.assert_no_leftovers()
    again = harness.cli(*harness.run_args(run, "--force", engine="trl"), timeout=900)
    assert again.returncode == 0, again.stderr
    resumed = harness.cli(*harness.run_args(run, "--resume", engine="trl"))
    no_traceback(again, resumed)
    assert resumed.returncode == 0 and "already finished" in resumed.stderr
    harness.assert_no_leftovers()
