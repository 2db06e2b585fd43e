"""Hardening (issue 6): hostile recipe and data files, path safety, atomic writes, secrets, offline/telemetry
environment and the known-failure doctor. Property-based rendering tests live in test_properties.py.

Every hostile file is checked the way a user meets it: through the CLI entry point, expecting exit 2, the
file named in a one-line reason, and no traceback."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import QwenRecipesError, RecipeError
from qwenrecipes.recipe.load import MAX_RECIPE_BYTES, build_recipe, load_recipe_document
from qwenrecipes.recipe.plan import make_plan
from qwenrecipes.render.folder import Rendered, render_plan, write_rendered
from qwenrecipes.run import doctor, envs
from qwenrecipes.run.rundir import EVENTS_FILE, LOG_FILE, MARKER_FILE, SUMMARY_FILE, write_json_atomic
from qwenrecipes.run.runner import claim_run_dir, execute
from qwenrecipes.run.spec import RunSpec
from tests.conftest import REPO, run_cli

FAKE_ENGINE = REPO / "tests" / "fixtures" / "fake_engine.py"
ENGINE_NAMES = list(ENGINES)
ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def assert_clean_refusal(code: int, err: str, file: Path, *expected: str) -> None:
    """Exit 2, the file named, every expected fragment present, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert str(file) in err, err
    for fragment in expected:
        assert fragment in err, err


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_document(data_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small valid recipe (hub model id: nothing is built or downloaded) with sections overridden."""
    document: dict[str, Any] = {
        "name": "hardening",
        "model": {"name_or_path": "Qwen/Qwen3-0.6B", "chat_template": "qwen3_nothink"},
        "method": {"type": "lora"},
        "data": {"train": {"path": str(data_path)}, "max_seq_length": 512},
        "training": {"max_steps": 4, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                     "optimizer": "adamw_torch", "save_steps": None},
    }
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return document


def write_recipe(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [ROW, ROW])


# ------------------------------------------------------------------------------------- hostile recipes
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["name: *i"]
) + "\n"


def _measure(action: Any) -> tuple[float, int]:
    """(seconds, peak bytes allocated by Python) of a call. Timed on its own first: tracemalloc, which sees
    every Python allocation (where a YAML bomb would blow up), slows the traced second call down."""
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return elapsed, peak


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (BILLION_LAUGHS, "aliases"),
        # Flow and block nesting bombs: 50k levels would exhaust the stack of a naive recursive walk.
        ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested"),
        ("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 400)) + " " * 400 + "x: 1\n", "nested"),
        ("a: " + "{b: " * 20_000 + "1" + "}" * 20_000 + "\n", "nested"),
    ],
    ids=["billion-laughs", "deep-flow-lists", "deep-block-maps", "deep-flow-maps"],
)
def test_yaml_bombs_are_refused_fast_with_bounded_memory(tmp_path: Path, content: str, expected: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(content, encoding="utf-8")
    assert path.stat().st_size < MAX_RECIPE_BYTES  # small files: the size cap is not what stops them

    def load() -> None:
        with pytest.raises(RecipeError) as caught:
            load_recipe_document(path)
        assert expected in str(caught.value) and str(path) in str(caught.value)

    elapsed, peak = _measure(load)
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert peak < 200 * 1024**2, f"peak {peak / 1024**2:.0f} MB"
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert_clean_refusal(code, err, path, expected)


def test_100mb_recipe_is_refused_by_its_size_without_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:  # sparse: 100 MB on paper, nothing on disk
        handle.truncate(100 * 1024**2)

    def no_read(*_args: Any, **_kwargs: Any) -> bytes:
        raise AssertionError("a file over the size cap was read")

    monkeypatch.setattr(Path, "read_bytes", no_read)
    monkeypatch.setattr(Path, "read_text", no_read)
    def load() -> None:
        with pytest.raises(RecipeError):
            load_recipe_document(path)

    elapsed, peak = _measure(load)
    assert elapsed < 1.0 and peak < 10 * 1024**2
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert_clean_refusal(code, err, path, "104,857,600 bytes; a recipe is at most")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("model: {name_or_path: x}\ntraining: {learning_rate: 1" + "0" * 5000 + "}\n", "as an integer"),
        ("name: 2024-13-45\n", "as a date"),
        ("? [a, b]\n: 1\n", "mapping keys must be plain values"),
        ("1: a\nname: x\n", "unknown key '1'"),
        ("model: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
        ("model: !!python/name:os.system\n", "invalid YAML"),
        ('name: "a\\0b"\n', "::name: contains a NUL character"),
    ],
    ids=["5000-digit-int", "impossible-date", "list-key", "int-key-next-to-str", "python-apply", "python-name",
         "nul-escape"],
)
def test_odd_yaml_values_are_refused_cleanly(tmp_path: Path, content: str, expected: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Values PyYAML's safe loader turns into ValueError/TypeError (not YAMLError) used to escape as
    tracebacks; each now gets a one-line reason naming the file."""
    path = tmp_path / "odd.yaml"
    path.write_text(content, encoding="utf-8")
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert_clean_refusal(code, err, path, expected)


def test_yaml_tags_never_execute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "tag.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    code, _, _ = run_cli(["validate", str(path)], capsys)
    assert code == 2 and not marker.exists()


# ---------------------------------------------------------------------------------------- hostile data
def _validate(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document(data))
    code, _, err = run_cli(["validate", str(recipe), "--target", "cuda"], capsys)
    return code, err


def test_binary_garbage_data_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "garbage.jsonl"
    data.write_bytes(json.dumps(ROW).encode() + b"\n" + bytes(range(256)) * 64 + b"\n")
    code, err = _validate(tmp_path, data, capsys)
    assert_clean_refusal(code, err, data, "not UTF-8")


def test_nul_bytes_in_utf8_data_name_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "nul.jsonl"
    data.write_bytes(json.dumps(ROW).encode() + b"\n\x00\x00{}\n")
    code, err = _validate(tmp_path, data, capsys)
    assert_clean_refusal(code, err, data, "::line 2: invalid JSON")


def test_50mb_single_line_is_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One 50 MB line, JSON-shaped but cut off: the message names the file and the line, in seconds."""
    data = tmp_path / "big.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        handle.write('{"messages": [{"role": "user", "content": "')
        handle.write("x" * (50 * 1024**2))
        handle.write("\n")
    started = time.perf_counter()
    code, err = _validate(tmp_path, data, capsys)
    assert time.perf_counter() - started < 20
    assert_clean_refusal(code, err, data, "::line 1: invalid JSON")


def test_50mb_valid_row_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "big.json"
    data.write_text(json.dumps([{"messages": "x" * (50 * 1024**2)}]), encoding="utf-8")
    code, err = _validate(tmp_path, data, capsys)
    assert_clean_refusal(code, err, data, "::row 1: missing or empty 'messages' list")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([1, 2], "row is not an object"),
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
         "turn content is not a string (int)"),
        ({"messages": [{"role": "root", "content": "x"}]}, "unknown role 'root'"),
        ({"messages": ["user: hi"]}, "each turn is an object"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "a conversation ends with an assistant turn"),
        ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
         "turn content is not a string (NoneType)"),
    ],
    ids=["list-row", "int-content", "unknown-role", "string-turn", "no-assistant", "null-content"],
)
def test_rows_of_wrong_types_name_file_and_row(tmp_path: Path, row: Any, expected: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "rows.jsonl", [ROW, ROW, row])
    code, err = _validate(tmp_path, data, capsys)
    assert_clean_refusal(code, err, data, f"{data}::row 3: {expected}")


def test_unusable_data_path_is_field_qualified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path longer than the OS allows (ENAMETOOLONG) used to escape from Path.exists() as OSError."""
    document = recipe_document(tmp_path / ("x" * 5000 + ".jsonl"))
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    code, _, err = run_cli(["validate", str(recipe)], capsys)
    assert_clean_refusal(code, err, recipe, "::data.train.path: not a usable path")


# --------------------------------------------------------------------------------------------- paths
def test_render_refuses_files_outside_the_folder(tmp_path: Path, data_file: Path) -> None:
    plan = make_plan(build_recipe(recipe_document(data_file), tmp_path / "r.yaml"), target="cuda")
    out = tmp_path / "out"
    for escape in ("../escape.txt", "sub/../../escape.txt", str(tmp_path / "absolute.txt")):
        rendered = Rendered("trl", {escape: "pwned"}, ["python"], {})
        with pytest.raises(QwenRecipesError, match="outside"):
            write_rendered(plan, rendered, out)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "absolute.txt").exists()


def test_render_refuses_a_symlink_that_points_out(tmp_path: Path, data_file: Path) -> None:
    """A file name inside the folder that is a symlink to elsewhere resolves outside: refused."""
    plan = make_plan(build_recipe(recipe_document(data_file), tmp_path / "r.yaml"), target="cuda")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "trl_config.yaml").symlink_to(victim)
    with pytest.raises(QwenRecipesError, match="outside"):
        write_rendered(plan, render_plan(plan, "trl"), out)
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("folder", ["/tmp/elsewhere", "../up", "a/../../up", "~/home"])
def test_output_dir_cannot_leave_the_run_dir(tmp_path: Path, data_file: Path, folder: str) -> None:
    with pytest.raises(RecipeError, match=r"::output\.dir: .* must be a relative folder"):
        build_recipe(recipe_document(data_file, output={"dir": folder}), tmp_path / "r.yaml")


def _fake_spec(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> RunSpec:
    return RunSpec(run_dir=run_dir, engine="trl", argv=[sys.executable, str(FAKE_ENGINE), *args],
                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, output_dir=run_dir / "outputs",
                   total_steps=2, recipe_name="fake", recipe_hash="abc", grace=2.0)


def test_cli_run_force_never_deletes_a_foreign_folder(tmp_path: Path, data_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`qwenrecipes run ... --run-dir EXISTING --force` on a folder that is not a run: refused, file kept.
    The refusal comes before the engine env is needed, so no env has to be installed. A CPU recipe: `run`
    compares a recipe with the machine first, and this machine may have no GPU."""
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document(data_file, training={"precision": "fp32"}))
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    for extra in (["--force"], []):
        code, _, err = run_cli(["run", str(recipe), "--engine", "trl", "--run-dir", str(foreign), "--target",
                                "cpu", *extra], capsys)
        assert code == 2 and "Traceback" not in err
        assert "not a qwenrecipes run" in err or "not installed" in err, err
        assert (foreign / "chapter1.tex").read_text() == "years of work"
        assert sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]


def test_force_refuses_a_folder_holding_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    (run / "inner").mkdir(parents=True)
    write_json_atomic(run / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe_hash": "abc"})
    monkeypatch.chdir(run / "inner")
    with pytest.raises(QwenRecipesError, match="current directory"):
        claim_run_dir(run, "trl", "abc", run / "outputs", resume=False, force=True)
    assert (run / MARKER_FILE).is_file()


def test_force_never_follows_a_symlinked_run_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write_json_atomic(real / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe_hash": "abc"})
    (real / "keep.txt").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(QwenRecipesError, match="not a plain folder"):
        claim_run_dir(link, "trl", "abc", link / "outputs", resume=False, force=True)
    assert (real / "keep.txt").is_file()


def test_a_forged_marker_that_is_a_symlink_is_not_trusted(tmp_path: Path) -> None:
    elsewhere = tmp_path / "marker.json"
    elsewhere.write_text(json.dumps({"kind": "qwenrecipes-run"}))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    (folder / MARKER_FILE).symlink_to(elsewhere)
    with pytest.raises(QwenRecipesError, match="not a qwenrecipes run"):
        claim_run_dir(folder, "trl", "abc", folder / "outputs", resume=False, force=True)
    assert (folder / "keep.txt").is_file()


def test_summary_and_marker_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every summary/marker write goes temp file -> os.replace, in the same folder (same filesystem)."""
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        src, dst = Path(src), Path(dst)
        assert src.parent == dst.parent and src.name.startswith(f".{dst.name}.") and src.exists()
        replaced.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_json_atomic(tmp_path / MARKER_FILE, {"kind": "qwenrecipes-run"})
    run = tmp_path / "run"
    execute(_fake_spec(run, "--steps", "2"))
    targets = [dst.name for _, dst in replaced]
    assert MARKER_FILE in targets and SUMMARY_FILE in targets
    assert not list(run.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_failed_summary_write_keeps_the_previous_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / SUMMARY_FILE
    write_json_atomic(target, {"status": "ok", "steps": 30})

    def broken(_src: Any, _dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_json_atomic(target, {"status": "failed"})
    assert json.loads(target.read_text()) == {"status": "ok", "steps": 30}


# ------------------------------------------------------------------------------------------- secrets
PLANTED = {"HF_TOKEN": "hf_PLANTEDsecret123", "HUGGING_FACE_HUB_TOKEN": "hf_PLANTEDhubtoken456",
           "WANDB_API_KEY": "PLANTEDwandbkey789abcdef"}


def _grep_tree(root: Path, needles: list[str]) -> list[str]:
    """Every file under root (binary-safe) that holds one of the needles, raw or in UTF-16 / JSON-escaped."""
    hits = []
    forms = {form for n in needles for form in (n.encode(), n.encode("utf-16-le"), json.dumps(n).encode())}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits.extend(f"{path.relative_to(root)}" for form in forms if form in data)
    return sorted(set(hits))


def test_rendered_files_and_command_never_hold_secrets(tmp_path: Path, data_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    plan = make_plan(build_recipe(recipe_document(data_file, output={"report_to": "wandb"}), tmp_path / "r.yaml"),
                     target="cuda")
    for engine in ENGINE_NAMES:
        rendered = render_plan(plan, engine)
        out = tmp_path / engine
        write_rendered(plan, rendered, out)
        assert _grep_tree(out, list(PLANTED.values())) == []
        assert not set(PLANTED) & set(rendered.environment), "secrets reach the engine via os.environ only"
        assert not any(value in rendered.command_line for value in PLANTED.values())


# An engine that echoes its tokens, as a debug print or a crash might. The code reads them from its
# environment, so argv (which the run log's header line records) never holds them.
ECHO_SECRETS = """
import os
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
    print(f"{name}={os.environ[name]}", flush=True)
print(f"{{'loss': 1.0, 'epoch': 0.1, 'note': '{os.environ['HF_TOKEN']}'}}", flush=True)
raise RuntimeError("401 Unauthorized for token " + os.environ["HF_TOKEN"] + " / " + os.environ["WANDB_API_KEY"])
"""


def test_engine_printing_every_secret_is_redacted_everywhere(tmp_path: Path) -> None:
    """Log, events (train metrics and the error), summary (error text): nothing under the run dir keeps a
    planted token."""
    run = tmp_path / "run"
    spec = _fake_spec(run, env=PLANTED)
    spec.argv = [sys.executable, "-c", ECHO_SECRETS]
    result = execute(spec)
    assert result.status == "failed"
    log = (run / LOG_FILE).read_text()
    assert all(f"{name}=***" in log for name in PLANTED), log
    assert "***" in json.dumps(json.loads((run / SUMMARY_FILE).read_text())["error"])
    assert _grep_tree(run, list(PLANTED.values())) == []


def test_token_shaped_strings_are_redacted_even_if_not_ours(tmp_path: Path) -> None:
    """An engine may read ~/.cache/huggingface/token itself and print it: hf_ tokens are redacted by shape."""
    run = tmp_path / "run"
    stray = "hf_" + "Zq9" * 12
    spec = _fake_spec(run, env={"STRAY": stray})
    spec.argv = [sys.executable, "-c", "import os; raise SystemExit('401 for ' + os.environ['STRAY'])"]
    execute(spec)
    assert "401 for ***" in (run / LOG_FILE).read_text()
    assert _grep_tree(run, [stray]) == []


def _require_env(engine: str) -> None:
    from qwenrecipes.errors import EngineError

    try:
        envs.env_for(engine)
    except EngineError as exc:
        pytest.skip(f"{engine} env not installed: {exc}")


@pytest.mark.engine
def test_real_trl_run_leaks_no_planted_secret(tmp_path: Path) -> None:
    """A real tiny TRL run with planted tokens in its environment, made to print one of them: Python prints
    the value of an invalid PYTHONWARNINGS entry at start-up ("Invalid -W option ignored: unknown warning
    category: '<value>'"), in every process of the engine, without touching any file the run keeps. Every
    file under the run dir (config, COMMAND, data, log, events, summary, checkpoints, adapter) is grepped."""
    _require_env("trl")
    document = yaml.safe_load((REPO / "recipes" / "tiny-cpu.yaml").read_text())
    document["data"]["train"]["path"] = str(REPO / "recipes" / "data" / "chat.jsonl")
    document["training"].update({"max_steps": 3, "warmup_steps": 0, "save_steps": 2})
    recipe = write_recipe(tmp_path / "tiny.yaml", document)
    run = tmp_path / "run"
    env = {**os.environ, **PLANTED, "PYTHONWARNINGS": f"ignore::{PLANTED['HF_TOKEN']}"}
    # -E: our own interpreter must not act on PYTHONWARNINGS (it would print the token itself, unredacted);
    # the engine's interpreter still gets it from the environment the runner passes on.
    proc = subprocess.run([sys.executable, "-E", "-c", "from qwenrecipes.cli import main; main()", "run", str(recipe),
                           "--engine", "trl", "--run-dir", str(run), "--target", "cpu", "--verbose"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / LOG_FILE).read_text(errors="replace")
    assert "unknown warning category: '***'" in log, "the engine did print the planted token"
    assert list((run / "outputs").rglob("adapter_model.safetensors")), "a real run, to the end"
    assert any(e["type"] == "checkpoint" for e in map(json.loads, (run / EVENTS_FILE).read_text().splitlines()))
    assert _grep_tree(run, list(PLANTED.values())) == []
    # What the user's terminal got is redacted too (the CLI prints engine lines with --verbose).
    shown = proc.stdout + proc.stderr
    assert not [line for line in shown.splitlines() if any(v in line for v in PLANTED.values())]


# ----------------------------------------------------------------------------------- privacy, offline
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _env_of(engine: str, plan: Any, *, wandb: bool = False) -> dict[str, str]:
    """The engine's variables on top of envs.base_environment, as EngineEnv.run_environment layers them."""
    return {**envs.base_environment(wandb=wandb), **render_plan(plan, engine).environment}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_local_model_and_data_run_offline_with_telemetry_off(tmp_path: Path, data_file: Path, engine: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    plan = make_plan(build_recipe(recipe_document(data_file, model={"name_or_path": str(model)}),
                                  tmp_path / "r.yaml"), target="cuda")
    env = _env_of(engine, plan)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["WANDB_MODE"] == "disabled" and env["AXOLOTL_DO_NOT_TRACK"] == "1"
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False" and env["UNSLOTH_DISABLE_STATISTICS"] == "1"
    assert env["HF_DATASETS_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("report_to", ["none", "wandb"])
def test_command_file_alone_has_every_run_variable(tmp_path: Path, data_file: Path, engine: str,
                                                   report_to: str) -> None:
    """Running COMMAND by hand, without qwenrecipes, keeps telemetry off exactly as `qwenrecipes run` does."""
    model = tmp_path / "model"
    model.mkdir()
    plan = make_plan(build_recipe(recipe_document(data_file, model={"name_or_path": str(model)},
                                                  output={"report_to": report_to}), tmp_path / "r.yaml"),
                     target="cuda")
    rendered = render_plan(plan, engine)
    base = envs.base_environment(wandb=report_to == "wandb")
    assert {k: rendered.environment.get(k) for k in base} == base
    command_line = rendered.files["COMMAND"].splitlines()[1]
    assert all(f"{k}={v}" in command_line.split() for k, v in base.items())
    assert "HF_HUB_OFFLINE=1" in command_line.split()


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_hub_model_is_not_forced_offline(tmp_path: Path, data_file: Path, engine: str) -> None:
    plan = make_plan(build_recipe(recipe_document(data_file), tmp_path / "r.yaml"), target="cuda")
    assert "HF_HUB_OFFLINE" not in _env_of(engine, plan)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_wandb_only_when_the_recipe_opts_in(tmp_path: Path, data_file: Path, engine: str) -> None:
    opted = make_plan(build_recipe(recipe_document(data_file, output={"report_to": "wandb"}), tmp_path / "r.yaml"),
                      target="cuda")
    env = _env_of(engine, opted, wandb=True)
    assert env.get("WANDB_MODE") != "disabled"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["DO_NOT_TRACK"] == "1"  # other telemetry stays off
    for report_to in ("none", "tensorboard"):
        plain = make_plan(build_recipe(recipe_document(data_file, output={"report_to": report_to}),
                                       tmp_path / "r.yaml"), target="cuda")
        assert _env_of(engine, plain)["WANDB_MODE"] == "disabled"


def test_run_environment_drops_foreign_python_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTHONPATH/PYTHONHOME meant for our interpreter would let a stray sitecustomize run in the engine."""
    from qwenrecipes.run.envs import EngineEnv

    monkeypatch.setenv("PYTHONPATH", "/somewhere/evil")
    monkeypatch.setenv("PYTHONHOME", "/somewhere/else")
    fake = EngineEnv("trl", Path("/envs/trl"), Path("/envs/trl/bin/python"), Path("/envs/trl/bin"))
    env = fake.run_environment({"X": "1"})
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert env["PATH"].startswith(str(Path("/envs/trl/bin"))) and env["WANDB_MODE"] == "disabled"


# ------------------------------------------------------------------------------------ doctor: validate
@pytest.mark.parametrize(
    ("sections", "field", "fragment"),
    [
        ({"distributed": {"gpus": 2, "strategy": "deepspeed_zero3"}}, "distributed.strategy",
         "use deepspeed_zero2"),
        ({"method": {"type": "qlora"}, "distributed": {"gpus": 2, "strategy": "deepspeed_zero3"}},
         "distributed.strategy", "use deepspeed_zero2"),
        ({"method": {"type": "qlora"}, "training": {"liger_kernel": True}}, "training.liger_kernel",
         "set liger_kernel: false"),
        ({"method": {"type": "lora", "lora": {"modules_to_save": ["embed_tokens"]}}}, "method.lora.modules_to_save",
         "add lm_head too"),
        ({"method": {"type": "lora", "lora": {"target_modules": ["q_proj", "embed_tokens"]}}},
         "method.lora.modules_to_save", "add lm_head too"),
        ({"model": {"chat_template": "qwen2.5"}}, "model.chat_template", "is not one of: qwen3, qwen3_nothink"),
        ({"model": {"chat_template": "qwen3-nothink"}}, "model.chat_template", "did you mean 'qwen3_nothink'?"),
    ],
    ids=["zero3-lora", "zero3-qlora", "liger-qlora", "embed-without-head", "embed-target-without-head",
         "unknown-template", "template-typo"],
)
def test_validate_time_doctor_rules(tmp_path: Path, data_file: Path, sections: dict[str, dict[str, Any]],
                                    field: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = recipe_document(data_file)
    for name, values in sections.items():
        merged = copy.deepcopy(document.get(name, {}))
        for key, value in values.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
        document[name] = merged
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    code, _, err = run_cli(["validate", str(recipe), "--target", "cuda"], capsys)
    assert_clean_refusal(code, err, recipe, f"::{field}: ", fragment)


def test_embed_tokens_with_lm_head_is_fine(tmp_path: Path, data_file: Path) -> None:
    document = recipe_document(data_file, method={"type": "lora",
                                                  "lora": {"modules_to_save": ["embed_tokens", "lm_head"]}})
    make_plan(build_recipe(document, tmp_path / "r.yaml"), target="cuda")


# ------------------------------------------------------------------------------------ doctor: run time
# Real error text, as torch / DeepSpeed / transformers / bitsandbytes / huggingface_hub print it.
TORCH_OOM = """Traceback (most recent call last):
  File "/envs/trl/lib/python3.11/site-packages/transformers/trainer.py", line 2325, in train
    return inner_training_loop(
  File "/envs/trl/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB. GPU 0 has a total capacity of 23.54 GiB \
of which 626.94 MiB is free. Including non-PyTorch memory, this process has 22.92 GiB memory in use. Of the \
allocated memory 21.87 GiB is allocated by PyTorch, and 612.07 MiB is reserved by PyTorch but unallocated. If \
reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid \
fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
"""
ZERO3_SHAPE0 = """Traceback (most recent call last):
  File "/envs/axolotl/lib/python3.11/site-packages/peft/tuners/lora/layer.py", line 130, in update_layer
    self.reset_lora_parameters(adapter_name, init_lora_weights)
  File "/envs/axolotl/lib/python3.11/site-packages/torch/nn/init.py", line 459, in kaiming_uniform_
    return tensor.uniform_(-bound, bound, generator=generator)
RuntimeError: The size of tensor a (0) must match the size of tensor b (4096) at non-singleton dimension 1
ValueError: weight should have at least two dimensions, got torch.Size([0])
RuntimeError: size mismatch for base_model.model.model.layers.0.self_attn.q_proj.weight: copying a param with \
shape [0] from checkpoint, the shape in current model is torch.Size([4096, 4096]).
"""
BNB_NO_GPU = """Traceback (most recent call last):
  File "/envs/trl/lib/python3.11/site-packages/transformers/quantizers/quantizer_bnb_4bit.py", line 74, in \
validate_environment
    raise RuntimeError("No GPU found. A GPU is needed for quantization.")
RuntimeError: No GPU found. A GPU is needed for quantization.
"""
BNB_NOT_COMPILED = ("UserWarning: The installed version of bitsandbytes was compiled without GPU support. 8-bit "
                    "optimizers, 8-bit multiplication, and GPU quantization are unavailable.\n"
                    "AttributeError: 'NoneType' object has no attribute 'cadam32bit_grad_fp32'\n")
MISSING_REPO = """Traceback (most recent call last):
  File "/envs/trl/lib/python3.11/site-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status
    response.raise_for_status()
huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-6752a3f1-1d2b4c5e)

Repository Not Found for url: https://huggingface.co/Qwen/Qwen3-0.7B/resolve/main/config.json.
Please make sure you specified the correct `repo_id` and `repo_type`.
If you are trying to access a private or gated repo, make sure you are authenticated.
OSError: Qwen/Qwen3-0.7B is not a local folder and is not a valid model identifier listed on \
'https://huggingface.co/models'
If this is a private repository, make sure to pass a token having permission to this repo either by logging in \
with `hf auth login` or by passing `token=<your_token>`
"""
OFFLINE_MISS = ("OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                "in the cached files.\nCheck your internet connection or see how to run the library in offline "
                "mode at 'https://huggingface.co/docs/transformers/installation#offline-mode'.\n")
CPU_OOM = "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: " \
          "you tried to allocate 34359738368 bytes. Error code 12 (Cannot allocate memory)\n"
TEMPLATE_ERROR = ("jinja2.exceptions.TemplateError: Conversation roles must alternate "
                  "user/assistant/user/assistant/...\n")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (TORCH_OOM, "cuda_oom"),
        ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`\n", "cuda_oom"),
        (ZERO3_SHAPE0, "zero3_lora"),
        (BNB_NO_GPU, "bitsandbytes"),
        (BNB_NOT_COMPILED, "bitsandbytes"),
        (MISSING_REPO, "missing_model_or_data"),
        (OFFLINE_MISS, "missing_model_or_data"),
        (CPU_OOM, "cpu_oom"),
        (TEMPLATE_ERROR, "chat_template"),
        ("ModuleNotFoundError: No module named 'peft'\n", "import_error"),
    ],
    ids=["torch-oom", "cublas-alloc", "zero3-shape0", "bnb-no-gpu", "bnb-cpu-build", "missing-repo",
         "offline-miss", "cpu-oom", "template", "import"],
)
def test_run_time_doctor_classifies_real_errors(text: str, name: str) -> None:
    diagnosis = doctor.classify(text)
    assert diagnosis is not None and diagnosis.name == name


def test_oom_remedies_are_ordered_and_keep_the_effective_batch() -> None:
    diagnosis = doctor.classify(TORCH_OOM)
    assert diagnosis is not None
    fix = diagnosis.fix
    steps = ["micro_batch_size", "max_seq_length", "gradient_checkpointing", "qlora", "lora.r"]
    positions = [fix.find(step) for step in steps]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), fix
    assert "raise gradient_accumulation_steps to keep the effective batch" in fix


def test_a_failed_fake_run_carries_the_diagnosis_in_its_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = execute(_fake_spec(run, "--crash", TORCH_OOM.splitlines()[-1]))
    assert result.status == "failed"
    error = json.loads((run / SUMMARY_FILE).read_text())["error"]
    assert error["class"] == "cuda_oom" and "effective batch" in error["fix"]



# ---------------------------------------------------------- regressions found by the property tests
# Each was a bug in a file owned by another engineer (YAML dumper, JSONL reader, resolved-recipe header).
def test_yaml_keeps_nel(tmp_path: Path, data_file: Path) -> None:
    plan = make_plan(build_recipe(recipe_document(data_file, output={"dir": "out\x85"}), tmp_path / "r.yaml"),
                     target="cuda")
    config = yaml.safe_load(render_plan(plan, "trl").files["trl_config.yaml"])
    assert config["output_dir"] == "out\x85"


def test_jsonl_with_unicode_line_separators(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "line\u2028separator"},
                        {"role": "assistant", "content": "next\x85line"}]}
    data = tmp_path / "u.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")  # valid JSONL
    plan = make_plan(build_recipe(recipe_document(data), tmp_path / "r.yaml"), target="cuda")
    assert plan.train_rows is not None and plan.train_rows[0][0]["content"] == "line\u2028separator"


def test_resolved_recipe_header_keeps_a_hostile_file_name_in_its_comment(tmp_path: Path, data_file: Path) -> None:
    source = tmp_path / "evil\ninjected: true\n#.yaml"
    plan = make_plan(build_recipe(recipe_document(data_file), source), target="cuda")
    resolved = yaml.safe_load(render_plan(plan, "trl").files["recipe.resolved.yaml"])
    assert "injected" not in resolved


def test_deeply_nested_json_row_is_a_row_problem(tmp_path: Path) -> None:
    data = tmp_path / "deep.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="line 2"):
        make_plan(build_recipe(recipe_document(data), tmp_path / "r.yaml"), target="cuda")


def test_data_path_of_an_unknown_user_is_field_qualified(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"::data\.train\.path: .*no such user"):
        build_recipe(recipe_document(Path("~no_such_user_qr/train.jsonl")), tmp_path / "r.yaml")


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_model_path_of_an_unknown_user(tmp_path: Path, data_file: Path, engine: str) -> None:
    plan = make_plan(build_recipe(recipe_document(data_file, model={"name_or_path": "~no_such_user_qr/m"}),
                                  tmp_path / "r.yaml"), target="cuda")
    assert render_plan(plan, engine).environment["HF_HUB_OFFLINE"] == "1"
