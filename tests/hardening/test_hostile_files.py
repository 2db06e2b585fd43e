"""Hostile recipe and data files (YAML bombs, huge files, binary garbage, odd values and types) are refused through
the CLI with exit 2 and the file named; regressions the property tests found stay fixed."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.load import MAX_RECIPE_BYTES, build_recipe, load_recipe_document
from qwenrecipes.recipe.plan import make_plan
from qwenrecipes.render.folder import render_plan
from tests.conftest import run_cli
from tests.hardening.conftest import ENGINE_NAMES, ROW, assert_clean_refusal, recipe_document, write_jsonl, write_recipe

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
