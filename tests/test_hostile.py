"""The hostile-input corpus (issue 12 §2): data rows, recipe text and folder writes, each tried the way a
user meets it, through the CLI entry point. The promises (SECURITY.md):
- bad input is exit 2 with the file, the row and the field named, and never a traceback;
- every input row is trained, evaluated, or listed in plan.json's dropped_rows with its reason;
- nothing is written outside the chosen folder, nothing through a symlink, and a failed render leaves the
  previous folder as it was.
Run-time holes (locks, signals, readers of damaged run files) are the runner's and live in its tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_cli

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
LONG = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
CORPUS = REPO / "tests" / "hostile"


def recipe(tmp_path: Path, data_path: Path | str, *, name: str = "r.yaml", **sections: dict[str, Any]) -> Path:
    document: dict[str, Any] = {
        "name": "hostile",
        "model": {"name_or_path": "Qwen/Qwen3-0.6B", "chat_template": "qwen3_nothink"},
        "method": {"type": "lora"},
        "data": {"train": {"path": str(data_path)}, "max_seq_length": 256},
        "training": {"max_steps": 2, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                     "optimizer": "adamw_torch", "save_steps": None},
    }
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def refused(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def turns(*pairs: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in pairs], **extra}


def assistant(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", **fields}]}


# ------------------------------------------------------------------------------ rows: refused, named
# (row as written in the file, format, fragment of the message after "FILE::row 3: ")
BAD_ROWS: list[tuple[str, Any, str, str]] = [
    ("two-think-blocks", assistant(content="<think>a</think>x<think>b</think>y"), "messages", "2 <think> blocks"),
    ("three-think-blocks", assistant(content="<think>a</think><think>b</think><think>c</think>y"), "messages",
     "3 <think> blocks"),
    ("think-not-first", assistant(content="answer <think>why</think>"), "messages", "must open the turn"),
    ("unclosed-think", assistant(content="<think>forever"), "messages", "unclosed <think>"),
    ("stray-close", assistant(content="done</think>"), "messages", "stray </think>"),
    ("inline-and-field", assistant(content="<think>a</think>x", reasoning_content="b"), "messages",
     "give the reasoning once"),
    ("reasoning-list", assistant(content="x", reasoning_content=["a", "b"]), "messages",
     "messages[1].reasoning_content is list"),
    ("reasoning-int", assistant(content="x", reasoning_content=3), "messages", "reasoning_content is int"),
    ("reasoning-dict", assistant(content="x", reasoning_content={"a": 1}), "messages", "reasoning_content is dict"),
    ("reasoning-bool", assistant(content="x", reasoning_content=True), "messages", "reasoning_content is bool"),
    ("reasoning-on-user", {"messages": [{"role": "user", "content": "q", "reasoning_content": "r"},
                                        {"role": "assistant", "content": "a"}]}, "messages",
     "only assistant turns carry reasoning"),
    ("tool-call-no-name", assistant(content="x", tool_calls=[{"id": 1}]), "messages",
     "messages[1].tool_calls[0].name: a tool call needs its function name"),
    ("tool-call-no-arguments", assistant(content="x", tool_calls=[{"name": "f"}]), "messages",
     "messages[1].tool_calls[0].arguments: a tool call needs its arguments"),
    ("tool-call-extra-key", assistant(content="x", tool_calls=[{"name": "f", "arguments": {}, "weight": 0}]),
     "messages", "messages[1].tool_calls[0].weight: key not used"),
    ("tools-not-list", {**assistant(content="x"), "tools": {"name": "f"}}, "messages", "tools is dict"),
    ("tools-bad-json", {**assistant(content="x"), "tools": "[{"}, "messages",
     "tools: tools given as a string must be JSON"),
    ("special-token-user", turns(("user", "hi<|im_start|>assistant\nx"), ("assistant", "y")), "messages",
     "turn 1 (user) content holds <|im_start|>"),
    ("special-token-reply", turns(("user", "q"), ("assistant", "a<|im_end|>b")), "messages",
     "turn 2 (assistant) content holds <|im_end|>"),
    ("weight-zero", assistant(content="x", weight=0), "messages", "messages[1].weight: key not used"),
    ("train-false", assistant(content="x", train=False), "messages", "messages[1].train: key not used"),
    ("system-list", turns(("user", "q"), ("assistant", "a"), system=["be", "brief"]), "messages",
     "system is list"),
    ("system-int", turns(("user", "q"), ("assistant", "a"), system=0), "messages", "system is int"),
    ("content-list", turns(("user", ["a"]), ("assistant", "b")), "messages", "turn content is not a string (list)"),
    ("content-int", turns(("user", 1), ("assistant", "b")), "messages", "turn content is not a string (int)"),
    ("content-null", turns(("user", None), ("assistant", "b")), "messages", "(NoneType)"),
    ("content-missing", {"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]}, "messages",
     "(NoneType)"),
    ("role-unknown", turns(("wizard", "q"), ("assistant", "a")), "messages", "unknown role 'wizard'"),
    ("role-function", turns(("user", "q"), ("function", "x"), ("assistant", "a")), "messages",
     "unknown role 'function'"),
    ("role-null", turns((None, "q"), ("assistant", "a")), "messages", "unknown role None"),
    ("role-int", turns((1, "q"), ("assistant", "a")), "messages", "unknown role 1"),
    ("role-case", turns(("User", "q"), ("assistant", "a")), "messages", "unknown role 'User'"),
    ("no-assistant-end", turns(("user", "q")), "messages", "ends with an assistant turn"),
    ("assistant-first", turns(("assistant", "a"), ("user", "q"), ("assistant", "a")), "messages",
     "turn 1 is 'assistant'"),
    ("tool-first", turns(("tool", "a"), ("assistant", "c")), "messages", "turn 1 is 'tool', expected 'user'"),
    ("system-late", turns(("user", "a"), ("system", "s"), ("assistant", "c")), "messages", "only allowed first"),
    ("empty-messages", {"messages": []}, "messages", "missing or empty 'messages'"),
    ("messages-string", {"messages": "hi"}, "messages", "missing or empty 'messages'"),
    ("messages-dict", {"messages": {"role": "user"}}, "messages", "missing or empty 'messages'"),
    ("no-messages-key", {"text": "hi"}, "messages", "missing or empty 'messages'"),
    ("turn-string", {"messages": ["user: hi", "assistant: yo"]}, "messages", "each turn is an object"),
    ("turn-null", {"messages": [None, {"role": "assistant", "content": "a"}]}, "messages", "each turn is an object"),
    ("row-list", [GOOD], "messages", "row is not an object"),
    ("row-string", "hello", "messages", "row is not an object"),
    ("row-number", 42, "messages", "row is not an object"),
    ("row-null", None, "messages", "row is not an object"),
    ("row-true", True, "messages", "row is not an object"),
    ("surrogate-content", turns(("user", "a\ud800b"), ("assistant", "c")), "messages",
     "messages[0].content: holds a lone surrogate (U+D800)"),
    ("surrogate-low", turns(("user", "a"), ("assistant", "\udfff")), "messages", "lone surrogate (U+DFFF)"),
    ("surrogate-reasoning", assistant(content="x", reasoning_content="\ud83d"), "messages", "lone surrogate"),
    ("surrogate-metadata", {**GOOD, "id": "\ud800"}, "messages", "id: holds a lone surrogate"),
    ("surrogate-key", {**GOOD, "\ud800": 1}, "messages", "lone surrogate"),
    ("sharegpt-unknown-from", {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]},
     "sharegpt", "unknown role 'narrator'"),
    ("sharegpt-missing-key", {"messages": [{"from": "human", "value": "x"}]}, "sharegpt",
     "missing or empty 'conversations'"),
    ("sharegpt-value-list", {"conversations": [{"from": "human", "value": ["x"]}, {"from": "gpt", "value": "y"}]},
     "sharegpt", "not a string (list)"),
    ("sharegpt-weight", {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y",
                                                                            "weight": 0}]},
     "sharegpt", "conversations[1].weight: key not used"),
    ("alpaca-input-list", {"instruction": "i", "input": ["a", "b"], "output": "o"}, "alpaca", "input is list"),
    ("alpaca-input-zero", {"instruction": "i", "input": 0, "output": "o"}, "alpaca", "input is int 0"),
    ("alpaca-input-false", {"instruction": "i", "input": False, "output": "o"}, "alpaca", "input is bool"),
    ("alpaca-input-dict", {"instruction": "i", "input": {"a": 1}, "output": "o"}, "alpaca", "input is dict"),
    ("alpaca-input-float", {"instruction": "i", "input": 1.5, "output": "o"}, "alpaca", "input is float"),
    ("alpaca-system-list", {"instruction": "i", "system": ["s"], "output": "o"}, "alpaca", "system is list"),
    ("alpaca-output-list", {"instruction": "i", "output": ["o"]}, "alpaca", "output: alpaca rows need string"),
    ("alpaca-no-instruction", {"output": "o"}, "alpaca", "instruction: alpaca rows need string"),
    ("alpaca-instruction-int", {"instruction": 5, "output": "o"}, "alpaca", "(int)"),
]


@pytest.mark.parametrize(("row", "fmt", "fragment"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_is_refused_naming_file_row_and_field(tmp_path: Path, row: Any, fmt: str, fragment: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    good = {"instruction": "i", "output": "o"} if fmt == "alpaca" else (
        {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}
        if fmt == "sharegpt" else GOOD)
    data = tmp_path / "rows.jsonl"
    # ensure_ascii: lone surrogates travel as \ud800 escapes, as JSON allows
    data.write_text("".join(json.dumps(r) + "\n" for r in [good, good, row]), encoding="utf-8")
    path = recipe(tmp_path, data, data={"train": {"path": str(data), "format": fmt}})
    code, _, err = run_cli(["validate", str(path), "--target", "cpu"], capsys)
    refused(code, err, f"{data}::row 3: ", fragment)


DUPLICATES = [
    ("dup-role", '{"messages": [{"role": "user", "role": "assistant", "content": "x"}, '
                 '{"role": "assistant", "content": "y"}]}', "messages[0]: repeats the key 'role'"),
    ("dup-content", '{"messages": [{"role": "user", "content": "a", "content": "b"}, '
                    '{"role": "assistant", "content": "y"}]}', "repeats the key 'content'"),
    ("dup-messages", '{"messages": [], "messages": [{"role": "user", "content": "a"}, '
                     '{"role": "assistant", "content": "y"}]}', "row: repeats the key 'messages'"),
    ("dup-reasoning", '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "y", '
                      '"reasoning_content": "1", "reasoning_content": "2"}]}', "repeats the key 'reasoning_content'"),
]


@pytest.mark.parametrize(("line", "fragment"), [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES])
def test_repeated_json_keys_are_refused(tmp_path: Path, line: str, fragment: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "dup.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    code, _, err = run_cli(["validate", str(recipe(tmp_path, data)), "--target", "cpu"], capsys)
    refused(code, err, f"{data}::row 2: ", fragment)


def test_blank_lines_make_the_line_number_part_of_the_row_name(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "gaps.jsonl"
    data.write_text(json.dumps(GOOD) + "\n\n\n" + json.dumps({"messages": []}) + "\n", encoding="utf-8")
    code, _, err = run_cli(["validate", str(recipe(tmp_path, data)), "--target", "cpu"], capsys)
    refused(code, err, f"{data}::row 2 (line 4): missing or empty 'messages'")


# ----------------------------------------------------------------------------- files: refused, named
def _file_cases() -> list[tuple[str, str, bytes, str]]:
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    return [
        ("empty", "e.jsonl", b"", "dataset has no rows"),
        ("only-blank-lines", "b.jsonl", b"\n\n  \n", "dataset has no rows"),
        ("latin1", "l.jsonl", '{"messages": "caf\xe9"}\n'.encode("latin-1"), "not UTF-8 text"),
        ("utf16", "u.jsonl", json.dumps(GOOD).encode("utf-16"), "not UTF-8 text"),
        ("nul-bytes", "n.jsonl", json.dumps(GOOD).encode() + b"\n\x00\x00\n", "line 2"),
        ("truncated-json", "t.jsonl", json.dumps(GOOD).encode() + b'\n{"messages": [\n', "line 2: invalid JSON"),
        ("trailing-comma", "c.jsonl", b'{"messages": [],}\n', "line 1: invalid JSON"),
        ("deep-nesting", "d.jsonl", json.dumps(GOOD).encode() + b"\n" + deep + b"\n", "line 2"),
        ("json-object", "o.json", b'{"rows": []}', "a .json data file holds a list of rows"),
        ("json-scalar", "s.json", b"3", "a .json data file holds a list of rows"),
        ("json-bad", "x.json", b"[1,", "invalid JSON"),
        ("json-deep", "y.json", deep, "nested too deeply"),
        ("json-empty-list", "z.json", b"[]", "dataset has no rows"),
        ("parquet-garbage", "p.parquet", b"PAR1 not really", "Parquet"),
        ("nan-literal", "nan.jsonl", b'{"messages": NaN}\n', "missing or empty 'messages'"),
    ]


@pytest.mark.parametrize(("name", "content", "fragment"), [c[1:] for c in _file_cases()],
                         ids=[c[0] for c in _file_cases()])
def test_bad_data_file_is_refused_naming_it(tmp_path: Path, name: str, content: bytes, fragment: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / name
    data.write_bytes(content)
    code, _, err = run_cli(["validate", str(recipe(tmp_path, data)), "--target", "cpu"], capsys)
    refused(code, err, str(data), fragment)


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing", "dangling-symlink"])
def test_data_path_that_is_not_a_file(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    if kind == "directory":
        data.mkdir()
    elif kind == "fifo":
        os.mkfifo(data)
    elif kind == "dangling-symlink":
        data.symlink_to(tmp_path / "nowhere.jsonl")
    code, _, err = run_cli(["validate", str(recipe(tmp_path, data)), "--target", "cpu"], capsys)
    refused(code, err, "d.jsonl")


# ------------------------------------------------------------------------- rows: accepted, accounted
def _plan_json(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out"
    code, _, err = run_cli(["render", str(path), "-e", "trl", "-o", str(out), "--target", "cpu"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads((out / "plan.json").read_text()), err


def _rows_in(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8-sig").split("\n") if line.strip())


def test_overlong_train_and_eval_rows_are_each_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = jsonl(tmp_path / "train.jsonl", [GOOD, LONG, GOOD, GOOD, LONG])
    evaluation = jsonl(tmp_path / "eval.jsonl", [LONG, GOOD])
    path = recipe(tmp_path, train, data={"train": {"path": str(train)}, "eval": {"path": str(evaluation)},
                                         "max_seq_length": 256})
    plan, err = _plan_json(tmp_path, path, capsys)
    dropped = plan["dropped_rows"]
    assert [(d["file"], d["row"], d["split"]) for d in dropped] == [
        (str(train), 2, "train"), (str(train), 5, "train"), (str(evaluation), 1, "eval")]
    assert all("max_seq_length 256" in d["reason"] for d in dropped)
    assert f"dropped {train}: row 2:" in err and f"dropped {evaluation}: row 1:" in err
    assert plan["train_rows"] + len([d for d in dropped if d["split"] == "train"]) == _rows_in(train)
    assert plan["eval_rows"] + len([d for d in dropped if d["split"] == "eval"]) == _rows_in(evaluation)


@pytest.mark.parametrize(("n", "fraction"), [(20, 0.25), (7, 0.4), (3, 0.34), (10, 0.0)])
def test_held_out_split_accounts_for_every_row(tmp_path: Path, n: int, fraction: float,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rows = [turns(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(n)]
    train = jsonl(tmp_path / "t.jsonl", rows)
    path = recipe(tmp_path, train, data={"val_fraction": fraction})
    plan, _ = _plan_json(tmp_path, path, capsys)
    assert plan["train_rows"] + (plan["eval_rows"] or 0) + len(plan["dropped_rows"]) == n


def test_eval_file_with_val_fraction_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = jsonl(tmp_path / "t.jsonl", [GOOD] * 20)
    evaluation = jsonl(tmp_path / "e.jsonl", [GOOD] * 3)
    path = recipe(tmp_path, train, data={"eval": {"path": str(evaluation)}, "val_fraction": 0.25})
    code, _, err = run_cli(["validate", str(path), "--target", "cpu"], capsys)
    refused(code, err, f"{path}::data.val_fraction: set either data.eval")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_row_over_the_limit_is_an_error_not_an_empty_run(tmp_path: Path, split: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    train = jsonl(tmp_path / "t.jsonl", [LONG] * 3 if split == "train" else [GOOD] * 3)
    evaluation = jsonl(tmp_path / "e.jsonl", [LONG])
    data: dict[str, Any] = {"eval": {"path": str(evaluation)}} if split == "eval" else {}
    code, _, err = run_cli(["validate", str(recipe(tmp_path, train, data=data)), "--target", "cpu"], capsys)
    refused(code, err, "data.max_seq_length", f"every {'training' if split == 'train' else 'eval'} row is longer")


ACCEPTED = [
    ("bom", b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode() + b"\n"),
    ("crlf", (json.dumps(GOOD) + "\r\n" + json.dumps(GOOD) + "\r\n").encode()),
    ("no-final-newline", (json.dumps(GOOD) + "\n" + json.dumps(GOOD)).encode()),
    ("u2028-inside", json.dumps(turns(("user", "a\u2028b"), ("assistant", "c\x85d")),
                                ensure_ascii=False).encode() + b"\n" + json.dumps(GOOD).encode()),
    ("null-extras", json.dumps(assistant(content="x", refusal=None, tool_calls=[])).encode() + b"\n"
     + json.dumps(GOOD).encode()),
    ("metadata-keys", json.dumps({**GOOD, "id": 7, "source": {"a": [1, 2]}}).encode() + b"\n"
     + json.dumps(GOOD).encode()),
    ("nul-escape-in-text", json.dumps(turns(("user", "a\x00b"), ("assistant", "c"))).encode() + b"\n"
     + json.dumps(GOOD).encode()),
]


@pytest.mark.parametrize("content", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_odd_but_valid_files_train_every_row(tmp_path: Path, content: bytes,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "ok.jsonl"
    data.write_bytes(content)
    plan, _ = _plan_json(tmp_path, recipe(tmp_path, data), capsys)
    assert plan["train_rows"] == _rows_in(data) and plan["dropped_rows"] == []
    written = (tmp_path / "out" / "data" / "train.jsonl").read_text(encoding="utf-8")
    assert all(json.loads(line) for line in written.split("\n") if line)


def test_alpaca_input_empty_or_null_means_no_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "input": "", "output": "o"},
                                        {"instruction": "i", "input": None, "output": "o"},
                                        {"instruction": "i", "input": "x", "output": "o"}])
    _plan_json(tmp_path, recipe(tmp_path, data, data={"train": {"path": str(data), "format": "alpaca"}}), capsys)
    rows = [json.loads(line) for line in (tmp_path / "out/data/train.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows[:3]] == ["i", "i", "i\n\nx"]


def test_the_corpus_folder_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tests/hostile/*.jsonl: each file's first line says `// expect: fragment`; the rest is the data."""
    files = sorted(CORPUS.glob("*.jsonl"))
    assert files
    for source in files:
        header, _, body = source.read_text(encoding="utf-8").partition("\n")
        data = tmp_path / source.name
        data.write_text(body, encoding="utf-8")
        code, _, err = run_cli(["validate", str(recipe(tmp_path, data, data={
            "train": {"path": str(data), "format": source.stem.split("-")[0]
                      if source.stem.split("-")[0] in ("sharegpt", "alpaca") else "messages"}})),
            "--target", "cpu"], capsys)
        refused(code, err, str(data), header.removeprefix("// expect: "))


# ------------------------------------------------------------------------------------ recipe text
def _yaml_recipe(tmp_path: Path, data: Path, model: str = "Qwen/Qwen3-0.6B", output: str = "outputs",
                 extra: str = "") -> Path:
    """Written by hand: double-quoted YAML escapes reach the loader exactly as a user can type them."""
    path = tmp_path / "r.yaml"
    path.write_text(f'name: hostile\nmodel: {{name_or_path: "{model}", chat_template: qwen3_nothink}}\n'
                    f'method: {{type: lora}}\ndata: {{train: {{path: "{data}"}}, max_seq_length: 256}}\n'
                    f'training: {{max_steps: 2, micro_batch_size: 1, gradient_accumulation_steps: 1, '
                    f'warmup_steps: 0, save_steps: null}}\noutput: {{dir: "{output}"}}\n{extra}', encoding="utf-8")
    return path


TEXT = [
    ("surrogate-model", {"model": "Qwen\\ud800"}, "::model.name_or_path: contains a lone surrogate (U+D800)"),
    ("surrogate-output", {"output": "o\\udfff"}, "::output.dir: contains a lone surrogate"),
    ("surrogate-extra-key", {"extra": 'notes: "\\ud800"\n'}, "::notes: contains a lone surrogate"),
    ("newline-model", {"model": "Qwen/x\\n--deepspeed=evil.json"}, "::model.name_or_path:", "a line break"),
    ("cr-model", {"model": "Qwen/x\\r--foo=1"}, "::model.name_or_path:", "a line break"),
    ("newline-output", {"output": "out\\n--report_to=wandb"}, "::output.dir:", "a line break"),
    ("tab-output", {"output": "out\\tx"}, "::output.dir:", "a control character"),
    ("escape-model", {"model": "\\x1b[31mred"}, "::model.name_or_path:", "a control character"),
    ("del-model", {"model": "a\\x7fb"}, "::model.name_or_path:", "a control character"),
    ("interp-model", {"model": "${oc.env:HOME}"}, "::model.name_or_path:", "OmegaConf"),
    ("interp-output", {"output": "out${x}"}, "::output.dir:", "OmegaConf"),
    ("interp-nested", {"model": "a/${b:${c}}"}, "OmegaConf"),
]


@pytest.mark.parametrize(("values", "fragments"), [(c[1], c[2:]) for c in TEXT], ids=[c[0] for c in TEXT])
def test_recipe_text_that_engine_files_cannot_carry(tmp_path: Path, values: dict[str, str],
                                                    fragments: tuple[str, ...],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = jsonl(tmp_path / "t.jsonl", [GOOD, GOOD])
    path = _yaml_recipe(tmp_path, data, **values)
    for command in (["validate", str(path), "--target", "cpu"],
                    ["render", str(path), "-e", "llamafactory", "--target", "cpu"]):
        code, _, err = run_cli(command, capsys)
        refused(code, err, str(path), *fragments)


@pytest.mark.parametrize("field", ["path", "split"])
def test_hub_dataset_id_with_a_newline_or_interpolation(tmp_path: Path, field: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for bad, why in (("x\ny", "a line break"), ("x${y}", "OmegaConf")):
        train = {"path": "org/data", field: bad} if field == "split" else {"path": "org/" + bad}
        path = recipe(tmp_path, "org/data", data={"train": train})
        code, _, err = run_cli(["validate", str(path), "--target", "cpu"], capsys)
        refused(code, err, f"::data.train.{field}:", why)


def test_local_data_path_may_hold_what_engine_files_cannot(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A local file is read by qwenrecipes only (engines get data/train.jsonl): no reason to refuse it."""
    folder = tmp_path / "odd ${x} dir"
    folder.mkdir()
    data = jsonl(folder / "t.jsonl", [GOOD, GOOD])
    plan, _ = _plan_json(tmp_path, recipe(tmp_path, data), capsys)
    assert plan["train_rows"] == 2


@pytest.mark.parametrize("spelling", ["./models/m", "models/m", "../elsewhere/models/m"])
def test_relative_model_path_resolves_next_to_the_recipe(tmp_path: Path, spelling: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "proj" if spelling.startswith("..") else tmp_path
    base.mkdir(exist_ok=True)
    target = (base / spelling).resolve()
    target.mkdir(parents=True)
    data = jsonl(tmp_path / "t.jsonl", [GOOD, GOOD])
    path = recipe(base, data, model={"name_or_path": spelling})
    out = tmp_path / "out"
    code, _, err = run_cli(["render", str(path), "-e", "llamafactory", "-o", str(out), "--target", "cpu"], capsys)
    assert code == 0, err
    assert json.loads((out / "plan.json").read_text())["model_path"] == str(target)
    assert f"model_name_or_path: {target}" in (out / "llamafactory.yaml").read_text()


def test_hub_id_stays_a_hub_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = jsonl(tmp_path / "t.jsonl", [GOOD, GOOD])
    plan, _ = _plan_json(tmp_path, recipe(tmp_path, data, model={"name_or_path": "Qwen/Qwen3-0.6B"}), capsys)
    assert plan["model_path"] == "Qwen/Qwen3-0.6B"


# ----------------------------------------------------------------------------------------- writes
def _render(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str,
            rows: int = 2) -> tuple[int, str]:
    data = jsonl(tmp_path / "t.jsonl", [GOOD] * rows)
    code, _, err = run_cli(["render", str(recipe(tmp_path, data)), "-e", "trl", "-o", str(out), "--target", "cpu",
                            *extra], capsys)
    assert "Traceback" not in err
    return code, err


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["data/train.jsonl", "trl_config.yaml", "COMMAND", "plan.json"])
def test_a_planted_file_symlink_is_never_written_through(tmp_path: Path, where: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _render(tmp_path, out, capsys)[0] == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / where).unlink()
    (out / where).symlink_to(victim)
    for extra in ([], ["--force"]):
        _render(tmp_path, out, capsys, *extra)
        assert victim.read_text() == "keep"


def test_a_planted_folder_symlink_is_never_written_through(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / "outputs").mkdir(parents=True)  # a run folder: --force writes into it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "data").symlink_to(elsewhere)
    code, err = _render(tmp_path, out, capsys, "--force")
    assert code == 2 and f"{out}/data" in err and "symlink" in err
    assert list(elsewhere.iterdir()) == []


def test_the_output_folder_itself_as_a_symlink_is_refused(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    code, err = _render(tmp_path, tmp_path / "out", capsys)
    assert code == 2 and "symlink" in err and list(real.iterdir()) == []


def test_a_run_folder_is_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    (out / "outputs" / "checkpoint-10").mkdir(parents=True)
    (out / "trl_config.yaml").write_text("the run's own config")
    before = _tree(out)
    code, err = _render(tmp_path, out, capsys)
    assert code == 2 and str(out) in err and "--force" in err
    assert _tree(out) == before
    code, err = _render(tmp_path, out, capsys, "--force")
    assert code == 0, err
    assert (out / "outputs" / "checkpoint-10").is_dir()
    assert (out / "trl_config.yaml").read_text() != "the run's own config"


def test_an_earlier_render_is_replaced_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _render(tmp_path, out, capsys, rows=2)[0] == 0
    assert _render(tmp_path, out, capsys, rows=3)[0] == 0
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) >= 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []  # no staging left


def test_an_empty_existing_folder_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert _render(tmp_path, out, capsys)[0] == 0 and (out / "COMMAND").exists()


def test_a_file_in_the_way_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").write_text("a file")
    code, err = _render(tmp_path, tmp_path / "out", capsys)
    assert code == 2 and "not a folder" in err and (tmp_path / "out").read_text() == "a file"


FULL_DISK = """
import resource, signal, sys
from qwenrecipes.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as ENOSPC would be
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
main(sys.argv[2:])
"""


def test_a_failed_write_leaves_the_previous_render_and_names_the_file(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _render(tmp_path, out, capsys)[0] == 0
    before = _tree(out)
    big = turns(("user", "x" * 2000), ("assistant", "y"))
    data = jsonl(tmp_path / "big.jsonl", [big] * 40)
    path = recipe(tmp_path, data, name="big.yaml", data={"max_seq_length": 4096})
    result = subprocess.run([sys.executable, "-c", FULL_DISK, "20000", "render", str(path), "-e", "trl", "-o",
                             str(out), "--target", "cpu"], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "QWENRECIPES_HOME": str(tmp_path / "home")})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"could not write {out}/data/train.jsonl" in result.stderr
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_nothing_is_written_outside_the_chosen_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data = jsonl(work / "t.jsonl", [GOOD, GOOD])
    path = recipe(work, data, output={"dir": "outputs"})
    before = {p for p in tmp_path.rglob("*")}
    code, _, err = run_cli(["render", str(path), "-e", "llamafactory", "-o", str(tmp_path / "out"),
                            "--target", "cpu"], capsys)
    assert code == 0, err
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == tmp_path / "out" or (tmp_path / "out") in p.parents for p in new)
