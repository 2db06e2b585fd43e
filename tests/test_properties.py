"""Property-based hardening (issue 6): hostile strings in every user-controlled string field render into every
engine's files as data, never as code or structure; bad numbers and wrong types are refused with a
field-qualified message.

For each example a recipe is built in memory (``build_recipe`` + ``make_plan``, no YAML file), rendered and
written with the real writer, then every file is parsed back the way its consumer reads it: YAML with
``yaml.safe_load``, JSON with ``json.loads``, Python with ``ast`` (never executed), argument files and COMMAND
with ``shlex.split``. Each hostile value must come back identical at its key, and each file must have the
same structure as the render of a benign recipe of the same shape (no injected key, argument or call).

Budget: derandomized, 500 examples per engine, no deadline (a 2-core CI machine under load is slow).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import re
import shlex
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenrecipes.data.render_text import chatml_text
from qwenrecipes.data.tokens import IGNORE, tokenize_row, tokenizer_for
from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.load import build_recipe, recipe_schema
from qwenrecipes.recipe.plan import TRAIN_FILE, TRAIN_TOKENS_FILE, make_plan
from qwenrecipes.render.folder import COMMAND_FILE, RESOLVED_RECIPE, render_plan, write_rendered
from tests.conftest import run_cli

ENGINE_NAMES = list(ENGINES)
EXAMPLES_PER_ENGINE = 500
RENDER_SETTINGS = settings(max_examples=EXAMPLES_PER_ENGINE, derandomize=True, deadline=None, database=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                  HealthCheck.data_too_large])
CHEAP_SETTINGS = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])

# Fragments that mean something to YAML, JSON, Python, Jinja, shells or terminals.
SNIPPETS = [
    "'", '"', "\n", "\r\n", "\r", "\t", "\\", "\\n", "\\x00", "{{ x }}", "{{", "}}", "{% if true %}", "{% endif %}",
    "{#", "#}", "{% raw %}", "$(id)", "`id`", "${HOME}", "&a", "*a", "&a [1]", "!!python/object:os.system",
    "!!python/object/apply:os.system ['id']", "!!binary", "!tag", "'''", '"""', "# c", ": ", ":", "- ", "? ",
    "[", "]", "{", "}", "|", ">", "%", "@", "---", "...", ",", "=", ";", "&&", "||", "--", "--deepspeed", "-",
    "null", "true", "~", "0x1F", "1e3", ".nan", "<<: *a", "__import__('os').system('id')",
    "\"); import os; os.system('id'); (\"", "'); import os #", "\\'", "é", "字", "🙂", "\ufeff", "\u2028",
    "\u2029", "\x85", "\x0b", "\x0c", "\x1b[31m", "\x7f", "\x01", " ", "  ",
]
fragment = st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=6))
hostile_text = st.lists(fragment, min_size=1, max_size=6).map("".join)
# NUL has its own property (it must be refused); everything else must render.
hostile = hostile_text.map(lambda s: s.replace("\x00", "")).filter(bool)


def carriable(text: str) -> str:
    """`text` without what a string written into engine files may not hold (recipe/text.py): control characters
    (NEL aside) and `${`. Those are refused at their field (test_uncarriable_text_is_refused_at_its_field)."""
    text = "".join(c for c in text if not (unicodedata.category(c) == "Cc" and c != "\x85"))
    while "${" in text:
        text = text.replace("${", "$")
    return text


# Model paths, output dirs and hub ids/splits: everything that engine files can carry still renders as data.
hostile_carried = hostile.map(carriable).filter(bool)
UNCARRIABLE = ["\n", "\r\n", "\r", "\t", "\x0b", "\x0c", "\x1b[31m", "\x7f", "\x01", "\x9b", "${HOME}", "${"]
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
OFFLINE_FLAGS = {"HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"}
# libyaml when present: the same safe resolver and constructors as yaml.safe_load (what the engines call),
# ~10x faster to parse, which is what makes 500 examples per engine affordable on a small CI machine.
YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------------------------- setup
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


@dataclass(frozen=True)
class Case:
    """One generated recipe: the hostile values and where they should come back."""

    model: str
    output_dir: str
    hub: bool
    data_path: str  # the recipe's data.train.path
    split: str
    fields: dict[str, str]  # local data only: canonical name -> the file's (hostile) key
    system: str
    user: str
    answer: str


def _output_dir(text: str) -> str:
    """A hostile folder that is still a legal output.dir (relative, no `..`): the refusal of the others is
    a property of its own below."""
    return "o" + text.replace("..", "._")


@st.composite
def cases(draw: st.DrawFn, workdir: Path) -> Case:
    # "~user..." model paths: tests/hardening/test_hostile_files.py::test_model_path_of_an_unknown_user (plan.py bug).
    model = draw(hostile_carried.filter(lambda s: not s.startswith(("builtin:", "~"))))
    output_dir = _output_dir(draw(hostile_carried))
    system, user, answer = draw(hostile), draw(hostile), draw(hostile)
    if draw(st.booleans()):
        # A hub dataset id: rendered verbatim. "hub" in front: no leading ./~, which would mean a local file.
        path = "hub" + draw(hostile_carried.filter(
            lambda s: PurePosixPath("hub" + s).suffix not in LOCAL_SUFFIXES
            and all(len(p.encode()) < 200 for p in ("hub" + s).split("/"))))
        return Case(model, output_dir, True, path, draw(hostile_carried), {}, system, user, answer)
    # A local file with a hostile name, keyed by hostile field names, holding hostile text.
    name = "d" + draw(hostile).replace("/", "_")[:60] + ".jsonl"
    keys = draw(st.lists(hostile.map(lambda s: s[:40]), min_size=4, max_size=4, unique=True))
    fields = dict(zip(("messages", "role", "content", "system"), keys, strict=True))
    folder = Path(tempfile.mkdtemp(dir=workdir))
    row = {fields["system"]: system, fields["messages"]: [
        {fields["role"]: "user", fields["content"]: user}, {fields["role"]: "assistant", fields["content"]: answer}]}
    # Raw unicode (U+2028, NEL, ...) inside JSON strings, as scraped data has it.
    (folder / name).write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return Case(model, output_dir, False, str(folder / name), "train", fields, system, user, answer)


def document_for(case: Case) -> dict[str, Any]:
    train: dict[str, Any] = {"path": case.data_path, "format": "messages"}
    if case.hub:
        train["split"] = case.split
    else:
        train["fields"] = dict(case.fields)
    return {
        "name": "prop-run",
        "model": {"name_or_path": case.model, "chat_template": "qwen3_nothink"},
        "method": {"type": "lora"},
        # max_seq_length above any generated row in bytes: no tokenizer load, nothing dropped.
        "data": {"train": train, "max_seq_length": 4096, "shuffle": False},
        "training": {"max_steps": 2, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                     "optimizer": "adamw_torch", "save_steps": None, "epochs": 1},
        "output": {"dir": case.output_dir, "report_to": "none"},
    }


BENIGN_ROW = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}


@cache
def benign(engine: str, hub: bool, workdir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    files = benign_files(engine, hub, workdir)
    return files, parse_all(files)


def benign_files(engine: str, hub: bool, workdir: Path) -> dict[str, str]:
    """The files of a benign recipe of the same shape, to compare structure against."""
    data = workdir / "benign.jsonl"
    data.write_text(json.dumps(BENIGN_ROW) + "\n", encoding="utf-8")
    # A model id with no known dims, like the hostile ones: the memory decisions (and so the files' shape)
    # depend on the model, and a hostile model never has a memory estimate.
    case = Case("org/benign-model", "outputs", hub, "org/dataset" if hub else str(data), "train",
                {"messages": "messages", "role": "role", "content": "content", "system": "system"}, "s", "u", "a")
    return rendered_files(case, engine, workdir)


def rendered_files(case: Case, engine: str, workdir: Path) -> dict[str, str]:
    """Render and write with the real writer; return every written file's text, by relative path."""
    plan = make_plan(build_recipe(document_for(case), workdir / "recipe.yaml"), target="cuda")
    out = Path(tempfile.mkdtemp(dir=workdir))
    try:
        write_rendered(plan, render_plan(plan, engine), out)
        # Bytes decoded as is: read_text() would turn a \r inside a value into \n (universal newlines).
        return {str(p.relative_to(out)): p.read_bytes().decode("utf-8") for p in sorted(out.rglob("*"))
                if p.is_file()}
    finally:
        shutil.rmtree(out)


# --------------------------------------------------------------------------------------------- parsing
def shape(value: Any) -> Any:
    """The structure of a parsed file with every string leaf blanked: keys, nesting and non-string values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return "" if isinstance(value, str) else value


class _BlankStrings(ast.NodeTransformer):
    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        return ast.Constant("") if isinstance(node.value, str) else node


def code_shape(text: str) -> str:
    """A script's AST with every string literal blanked: equal shapes = the same code, only data differs."""
    return ast.dump(_BlankStrings().visit(ast.parse(text)))


def call_names(text: str) -> list[str]:
    return sorted(ast.unparse(n.func) for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call))


def string_constants(text: str) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def call_keywords(text: str, name: str) -> dict[str, ast.expr]:
    calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call) and ast.unparse(n.func) == name]
    assert len(calls) == 1, name
    return {k.arg: k.value for k in calls[0].keywords if k.arg is not None}


def assigned(text: str, name: str) -> ast.expr:
    """The value assigned to module-level `name` (exactly once)."""
    values = [n.value for n in ast.parse(text).body if isinstance(n, ast.Assign)
              and [ast.unparse(t) for t in n.targets] == [name]]
    assert len(values) == 1, name
    return values[0]


def literal(node: ast.expr) -> Any:
    return ast.literal_eval(node)


def parse_args_file(text: str) -> list[tuple[str, str]]:
    """`--key=value` tokens (shell-quoted), as argparse reads them."""
    tokens = shlex.split(text)
    assert all(token.startswith("--") and "=" in token for token in tokens), "every token is --key=value"
    return [tuple(token.split("=", 1)) for token in tokens]  # type: ignore[misc]


def parse_all(files: dict[str, str]) -> dict[str, Any]:
    """Every file the way its consumer reads it. Raises if any of them does not parse."""
    parsed: dict[str, Any] = {}
    for name, text in files.items():
        if name.endswith((".yaml", ".yml")):
            parsed[name] = yaml.load(text, Loader=YAML_LOADER)
        elif name.endswith(".jsonl"):  # JSONL lines end at \n only (not at U+2028 & co. as splitlines would)
            parsed[name] = [json.loads(line) for line in text.split("\n") if line]
        elif name.endswith(".json"):
            parsed[name] = json.loads(text)
        elif name.endswith(".py"):
            parsed[name] = code_shape(text)
        elif name.endswith(".args"):
            parsed[name] = parse_args_file(text)
        elif name == COMMAND_FILE:
            parsed[name] = shlex.split(text.splitlines()[1])
        else:
            parsed[name] = text
    return parsed


# ---------------------------------------------------------------------------------- the main property
def expected_at_keys(engine: str, files: dict[str, str], parsed: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(label, value read back) for every place a user string lands in this engine's files."""
    if engine == "axolotl":
        cfg = parsed["axolotl.yaml"]
        yield "model", cfg["base_model"]
        yield "model", cfg["tokenizer_config"]
        yield "output_dir", cfg["output_dir"]
        yield "train_file", cfg["datasets"][0]["path"]
        yield "split", cfg["datasets"][0]["split"]
    elif engine == "llamafactory":
        cfg = parsed["llamafactory.yaml"]
        args = dict(parsed["llamafactory.args"])
        yield "model", cfg["model_name_or_path"]
        yield "model", args["--model_name_or_path"]
        yield "output_dir", cfg["output_dir"]
        yield "output_dir", args["--output_dir"]
        entry = parsed["data/dataset_info.json"]["qwenrecipes_train"]
        if "load_tokens.py" in files:  # token handoff: it saves these rows where tokenized_path loads them
            yield "train_file", literal(assigned(files["load_tokens.py"], "FILES"))["train"]
            yield "train_text_file", f"data/{entry['file_name']}"  # the dataset entry LF still needs, unread
        else:
            yield "train_file", entry.get("hf_hub_url") or f"data/{entry['file_name']}"
        yield "split", entry.get("split", "train")
    elif engine == "trl":
        cfg = parsed["trl_config.yaml"]
        yield "model", cfg["model_name_or_path"]
        yield "output_dir", cfg["output_dir"]
        source = cfg["datasets"][0]
        if "data_files" in source:
            yield "train_file", source["data_files"]["train"]
        else:  # a hub dataset, by name
            yield "train_file", source["path"]
            yield "split", source["split"]
    elif engine == "unsloth":
        text = files["train_unsloth.py"]
        yield "model", literal(call_keywords(text, "FastLanguageModel.from_pretrained")["model_name"])
        yield "output_dir", literal(call_keywords(text, "SFTConfig")["output_dir"])
        yield "train_file", literal(call_keywords(text, "load_dataset")["data_files"])["train"]
        save = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)
                and ast.unparse(n.func) == "trainer.save_model"]
        yield "output_dir", literal(save[0].args[0])


def expected_model(case: Case, workdir: Path) -> str:
    """The recipe's model as the engines must get it: a local path ("./x", "../x", ".", "..", or a folder next
    to the recipe) made absolute against the recipe's folder, since engines run in the run dir; else verbatim."""
    model = case.model
    local = model in (".", "..") or model.startswith(("./", "../"))
    with contextlib.suppress(OSError, ValueError):
        local = local or (workdir / model).is_dir()
    return str((workdir / model).resolve()) if local else model


def check_case(case: Case, engine: str, workdir: Path) -> None:
    files = rendered_files(case, engine, workdir)
    benign_text, benign_parsed = benign(engine, case.hub, workdir)
    assert sorted(files) == sorted(benign_text), "the same files as a benign recipe"
    parsed = parse_all(files)
    for name in files:
        if name.endswith(".py"):
            # Same code (AST with string literals blanked) and the same calls as the benign render.
            assert parsed[name] == benign_parsed[name], name
            assert call_names(files[name]) == call_names(benign_text[name]), name
        elif name.endswith(".args"):
            assert [k for k, _ in parsed[name]] == [k for k, _ in benign_parsed[name]], "no injected argument"
        elif name == COMMAND_FILE:
            # The offline flags follow whether the model path looks local ("./x", "/x", "~x"), by design.
            assert ([t for t in parsed[name] if t not in OFFLINE_FLAGS]
                    == [t for t in benign_parsed[name] if t not in OFFLINE_FLAGS]), "COMMAND holds no recipe string"
            assert files[name].splitlines()[0] == benign_text[name].splitlines()[0]
        elif name not in (TRAIN_FILE, TRAIN_TOKENS_FILE):  # the data files: compared as data below
            assert shape(parsed[name]) == shape(benign_parsed[name]), name

    # Local data: the engine reads the prepared rows, as token ids under the token handoff (the default).
    local_file = TRAIN_TOKENS_FILE if TRAIN_TOKENS_FILE in files else TRAIN_FILE
    expected = {"model": expected_model(case, workdir), "output_dir": case.output_dir,
                "train_file": case.data_path if case.hub else local_file, "train_text_file": TRAIN_FILE,
                "split": case.split}
    for label, value in expected_at_keys(engine, files, parsed):
        assert value == expected[label], (label, value)

    if engine == "unsloth":
        constants = string_constants(files["train_unsloth.py"])
        assert expected["model"] in constants and case.output_dir in constants

    resolved = parsed[RESOLVED_RECIPE]["recipe"]
    assert resolved["model"]["name_or_path"] == case.model
    assert resolved["output"]["dir"] == case.output_dir
    assert resolved["data"]["train"]["path"] == case.data_path
    assert resolved["data"]["train"]["split"] == case.split
    assert resolved["data"]["train"]["fields"] == case.fields
    assert parsed["plan.json"]["model_path"] == expected["model"]

    if not case.hub:  # data content: the prepared rows hold the hostile text, unchanged
        messages = [{"role": "system", "content": case.system}, {"role": "user", "content": case.user},
                    {"role": "assistant", "content": case.answer}]
        # The one row, once per pass of the consumption order (Plan.train_stream): max_steps 2 x batch 1 = 2.
        passes = document_for(case)["training"]["max_steps"]
        assert parsed[TRAIN_FILE] == [{"messages": messages}] * passes, "the hostile text unchanged"
        # The token handoff: that row's ids and labels as qwenrecipes' one tokenization makes them (the
        # tokenizer reads the hostile text as text), in the engine's own pre-tokenized form.
        if TRAIN_TOKENS_FILE in files:
            tokenizer = tokenizer_for(expected["model"])
            tokens = tokenize_row(messages, "assistant", tokenizer)
            assert parsed[TRAIN_TOKENS_FILE] == [ENGINES[engine].token_row(tokens.input_ids, tokens.labels)] * passes
            # Those ids are the ChatML text (NFC-normalized, as the Qwen tokenizer reads any text: engines too),
            # with no turn marker but the row's own three, and only the reply and its <|im_end|> are trained.
            text = unicodedata.normalize("NFC", chatml_text(messages))
            assert tokenizer.decode(tokens.input_ids, skip_special_tokens=False) == text
            for marker in ("<|im_start|>", "<|im_end|>"):
                assert tokens.input_ids.count(tokenizer.token_to_id(marker)) == 3, marker
            trained = tokenizer.decode([t for t in tokens.labels if t != IGNORE], skip_special_tokens=False)
            answer = unicodedata.normalize("NFC", case.answer)
            assert trained.endswith(answer + "<|im_end|>") and len(trained) <= len(answer) + 11, trained


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_hostile_strings_render_as_data(engine: str, workdir: Path) -> None:
    ran: list[bool] = []

    @RENDER_SETTINGS
    @given(case=cases(workdir))
    def check(case: Case) -> None:
        check_case(case, engine, workdir)
        ran.append(case.hub)

    check()
    # The budget is the point: make sure filters did not quietly shrink it, and both data modes ran.
    assert len(ran) >= EXAMPLES_PER_ENGINE and 0 < sum(ran) < len(ran), (len(ran), sum(ran))


# --------------------------------------------------------------------------------- refusals (strings)
def _problems(document: dict[str, Any], workdir: Path) -> list[str]:
    try:
        build_recipe(document, workdir / "recipe.yaml")
    except RecipeError as exc:
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return []


def _base(workdir: Path) -> dict[str, Any]:
    data = workdir / "base.jsonl"
    data.write_text(json.dumps(BENIGN_ROW) + "\n", encoding="utf-8")
    return {"name": "base", "model": {"name_or_path": "Qwen/Qwen3-0.6B"}, "data": {"train": {"path": str(data)}}}


NAME_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z"


@CHEAP_SETTINGS
@given(name=st.one_of(hostile_text, st.from_regex(NAME_PATTERN)))
def test_run_name_is_validated_by_its_pattern(name: str, workdir: Path) -> None:
    """The run name reaches LLaMA-Factory's run_name and run-dir names: only the schema's pattern passes,
    anything else is refused at `name`, never a crash."""
    problems = _problems({**_base(workdir), "name": name}, workdir)
    if re.fullmatch(NAME_PATTERN[2:-2], name):
        assert problems == []
    else:
        assert problems and all(p.startswith("name: ") for p in problems), problems


STRING_FIELDS: list[tuple[str, ...]] = [("model", "name_or_path"), ("data", "train", "path"), ("output", "dir"),
                                        ("data", "train", "split"), ("data", "train", "fields", "content")]


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = document
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return document


@CHEAP_SETTINGS
@given(field=st.sampled_from(STRING_FIELDS), before=hostile, after=hostile)
def test_nul_in_any_string_field_is_refused_at_that_field(field: tuple[str, ...], before: str, after: str,
                                                          workdir: Path) -> None:
    problems = _problems(_set(_base(workdir), field, f"{before}\x00{after}"), workdir)
    assert problems == [f"{'.'.join(field)}: contains a NUL character (\\0), which no path or setting can hold"]


@CHEAP_SETTINGS
@given(text=hostile)
def test_output_dir_is_refused_or_stays_inside(text: str, workdir: Path) -> None:
    """Any output.dir is either refused at `output.dir` or, joined to a run dir, stays inside it."""
    problems = _problems(_set(_base(workdir), ("output", "dir"), text), workdir)
    run_dir = Path("/runs/r")
    inside = (run_dir / text).resolve() if "\x00" not in text else None
    if problems:
        assert all(p.startswith("output.dir: ") for p in problems), problems
    else:
        assert inside is not None and run_dir in (inside, *inside.parents), text


RENDERED_FIELDS: list[tuple[str, ...]] = [("model", "name_or_path"), ("output", "dir"), ("data", "train", "path"),
                                          ("data", "train", "split")]


@CHEAP_SETTINGS
@given(field=st.sampled_from(RENDERED_FIELDS), before=hostile_carried, bad=st.sampled_from(UNCARRIABLE),
       after=hostile_carried)
def test_uncarriable_text_is_refused_at_its_field(field: tuple[str, ...], before: str, bad: str, after: str,
                                                 workdir: Path) -> None:
    """A string written into engine files with a control character or `${` in it is refused at its field (the
    CLI's exit 2), never escaped differently per engine nor written. Hub path and split: a hub dataset."""
    document = document_for(Case("org/model", "outputs", True, "org/data", "train", {}, "s", "u", "a"))
    value = f"{before}{bad}{after}"
    if field == ("output", "dir"):
        value = _output_dir(value)
    elif field == ("data", "train", "path"):
        value = "hub" + value.replace("/", "_")
    with pytest.raises(RecipeError) as caught:
        make_plan(build_recipe(_set(document, field, value), workdir / "recipe.yaml"), target="cuda")
    assert any(p.path == ".".join(field) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("field,value", [("output.dir", "out\n--deepspeed=x"), ("model.name_or_path", "org/m${X}"),
                                         ("model.name_or_path", "org/m\x1b[31m")])
def test_uncarriable_text_exits_2_from_the_cli(field: str, value: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(BENIGN_ROW) + "\n", encoding="utf-8")
    section, key = field.split(".")
    document = {"name": "r", "model": {"name_or_path": "org/m"}, "data": {"train": {"path": str(data)}},
                "training": {"precision": "fp32", "optimizer": "adamw_torch"}}
    document.setdefault(section, {})[key] = value
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(document), encoding="utf-8")  # JSON is YAML: the escapes stay exact
    code, out, err = run_cli(["render", str(recipe), "-e", "trl", "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and field in err and "Traceback" not in err + out
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- refusals (numbers)
def _numeric_fields() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, the number schema) of every numeric field in the recipe schema, found by walking it."""
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, sub in node.get("properties", {}).items():
            branches = sub.get("oneOf", [sub])
            numbers = [b for b in branches if b.get("type") in ("integer", "number")]
            if numbers:
                out.append(((*path, key), {**numbers[0], "nullable": any(b.get("type") == "null" for b in branches)}))
            for branch in branches:
                if branch.get("type") == "object":
                    walk(branch, (*path, key))

    walk(recipe_schema(), ())
    return out


NUMERIC_FIELDS = _numeric_fields()


def _bad_values(spec: dict[str, Any]) -> list[Any]:
    values: list[Any] = [math.nan, math.inf, -math.inf, 10**100, -(10**100), 2**64, True, False, "1", "1e-3",
                         [1], {"value": 1}, b"1"]
    if not spec["nullable"]:
        values.append(None)
    if "minimum" in spec:
        values.append(spec["minimum"] - 1)
    if "exclusiveMinimum" in spec:
        values.append(spec["exclusiveMinimum"])
    if "maximum" in spec:
        values.extend([spec["maximum"] + 1, float(spec["maximum"]) * 10])
    if "exclusiveMaximum" in spec:
        values.append(spec["exclusiveMaximum"])
    if spec["type"] == "integer":
        values.extend([2.5, 1.0])  # 1.0 too: engines' int fields do not take floats
    if "enum" in spec:
        values.append(max(spec["enum"]) + 1)
    return values


def test_the_schema_walk_found_the_numeric_fields() -> None:
    found = {".".join(path) for path, _ in NUMERIC_FIELDS}
    assert {"training.learning_rate", "method.lora.r", "training.max_steps", "data.max_seq_length",
            "distributed.gpus", "training.warmup_ratio", "method.quantization.bits"} <= found
    assert len(found) >= 20


@CHEAP_SETTINGS
@given(data=st.data())
def test_bad_numbers_are_refused_at_their_field(data: st.DataObject, workdir: Path) -> None:
    """NaN/inf, huge integers, booleans (YAML `true`), strings, containers, None and out-of-range values in
    any numeric field: refused, and the problem names that field."""
    path, spec = data.draw(st.sampled_from(NUMERIC_FIELDS), label="field")
    value = data.draw(st.one_of(st.sampled_from(_bad_values(spec)), _out_of_range(spec)), label="value")
    problems = _problems(_set(_base(workdir), path, value), workdir)
    dotted = ".".join(path)
    assert problems, f"{dotted}={value!r} was accepted"
    assert any(p.startswith(f"{dotted}: ") for p in problems), problems
    assert all("Traceback" not in p and len(p) < 400 for p in problems)


def _out_of_range(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = []
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    if low is not None:
        below = low - 1 if "minimum" in spec else low
        options.append(st.integers(max_value=math.floor(below)))
        options.append(st.floats(max_value=below - 1e-9 if "minimum" in spec else below, allow_nan=False,
                                 allow_infinity=False).filter(lambda v: v < low or ("exclusiveMinimum" in spec
                                                                                   and v <= low)))
    if high is not None:
        options.append(st.integers(min_value=math.floor(high) + 1))
        options.append(st.floats(min_value=high, allow_nan=False, exclude_min="maximum" in spec))
    return st.one_of(options) if options else st.nothing()
