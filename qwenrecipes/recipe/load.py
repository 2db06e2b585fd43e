"""Load, validate and resolve a recipe into one fully explicit object.

Loading is defensive (recipes are often copied from the internet): a size cap, a safe YAML loader that
refuses duplicate keys, aliases and tags, and a depth cap. Validation collects *every* problem before
raising, as ``FILE::json.path: message``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.resources import read_resource_text

MAX_RECIPE_BYTES = 1_000_000
MAX_DEPTH = 20
# Above every bound in the schema by far. A bigger int is a typo or an attack: jsonschema repr()s the value
# in its messages, and Python refuses to print ints of more than 4300 digits (ValueError, not a YAML error).
MAX_INT_BITS = 64
# Names people carry over from engine configs, mapped to the recipe's field (for "did you mean").
SYNONYMS = {"rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
            "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs",
            "batch_size": "micro_batch_size",
            "per_device_train_batch_size": "micro_batch_size", "cutoff_len": "max_seq_length",
            "sequence_len": "max_seq_length", "max_length": "max_seq_length", "base_model": "name_or_path",
            "model_name_or_path": "name_or_path", "lr_scheduler": "scheduler", "lr_scheduler_type": "scheduler",
            "optim": "optimizer", "output_dir": "dir", "template": "chat_template", "bf16": "precision",
            "fp16": "precision", "adapter": "type", "finetuning_type": "type", "lora_target_modules": "target_modules",
            "lora_target": "target_modules", "warmup": "warmup_steps"}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@lru_cache(maxsize=1)
def recipe_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that ships inside the package."""
    return json.loads(read_resource_text("recipe/schema/recipe.schema.json"))


# --------------------------------------------------------------------------------------------- loading
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, aliases (billion laughs) and custom tags."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:  # `? [a, b]` keys: PyYAML would fail later with a bare TypeError
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain values, not lists or mappings", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


def _compose_node_without_aliases(self: _StrictLoader, parent: Any, index: Any) -> Any:
    # Aliases are how "billion laughs" documents explode in memory; a recipe never needs one.
    if self.check_event(yaml.events.AliasEvent):
        event = self.peek_event()
        raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in recipes",
                                          event.start_mark)
    # Stop a nesting bomb at the cap while composing: events are parsed lazily, so the rest of the file is
    # never scanned. Letting PyYAML recurse until RecursionError took seconds per file (and more under load).
    depth = getattr(self, "_depth", 0)
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"YAML nested deeper than {MAX_DEPTH} levels",
                                          self.peek_event().start_mark)
    self._depth = depth + 1
    try:
        return yaml.composer.Composer.compose_node(self, parent, index)
    finally:
        self._depth = depth


def _checked(constructor: Any, kind: str) -> Any:
    """Scalars whose conversion raises ValueError (`2020-13-45`, a 5000-digit int) become YAML errors with a
    line number, instead of escaping the loader as a bare ValueError (a traceback at the CLI)."""

    def construct(loader: _StrictLoader, node: yaml.ScalarNode) -> Any:
        try:
            return constructor(loader, node)
        except ValueError as exc:
            # Drop CPython's "use sys.set_int_max_str_digits()" advice: the fix is in the recipe.
            reason = str(exc).split(";")[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {str(node.value)[:40]!r} as {kind} ({reason})", node.start_mark
            ) from None

    return construct


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _checked(yaml.SafeLoader.construct_yaml_int, "an integer"))
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _checked(yaml.SafeLoader.construct_yaml_float, "a number"))
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp",
                              _checked(yaml.SafeLoader.construct_yaml_timestamp, "a date"))
_StrictLoader.compose_node = _compose_node_without_aliases  # type: ignore[method-assign]


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def load_recipe_document(path: Path) -> dict[str, Any]:
    """Read a recipe file into a plain dict, or raise RecipeError naming the file."""
    name = str(path)

    def fail(message: str) -> RecipeError:
        return RecipeError([Problem(name, "", message)])

    if not path.exists():
        raise fail("file not found")
    if not path.is_file():
        raise fail("not a file")
    size = path.stat().st_size
    if size == 0:
        raise fail("file is empty; start from one of the examples (`qwenrecipes recipes`)")
    if size > MAX_RECIPE_BYTES:
        raise fail(f"file is {size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise fail("binary file (contains NUL bytes), not a YAML recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start})") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise fail(f"invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise fail("YAML nested too deeply") from None
    if document is None:
        raise fail("file holds no YAML document")
    if not isinstance(document, dict):
        raise fail(f"a recipe is a mapping of sections (model, data, ...), not a {type(document).__name__}")
    if _depth(document) > MAX_DEPTH:
        raise fail(f"YAML nested deeper than {MAX_DEPTH} levels")
    return document


# ------------------------------------------------------------------------------------------ validation
def _json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_at(schema: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
    node = schema
    for part in parts:
        if isinstance(part, int):
            node = node.get("items", {})
            continue
        if "oneOf" in node:
            node = next((s for s in node["oneOf"] if s.get("type") == "object"), node)
        node = node.get("properties", {}).get(part, {})
    return node


def _describe(error: Any, schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Turn one jsonschema error into (path, message) pairs a person can act on."""
    import difflib  # only invalid recipes get "did you mean" hints; valid ones never load it

    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(_schema_at(schema, path).get("properties", {}))
        # key=str: YAML keys may be ints, dates or None next to strings, which do not sort together.
        extras = sorted(set(error.instance) - set(allowed), key=str)
        out = []
        for key in extras:
            synonym = SYNONYMS.get(str(key))
            hint = [synonym] if synonym in allowed else difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
            out.append((_json_path([*path, key]), f"unknown key '{key}'{suggestion}"))
        return out
    if error.validator == "required":
        return [(_json_path(path) or "(top)", error.message.replace("is a required property", "is required"))]
    if error.validator == "oneOf":
        # Report the most specific branch (the one of the right type), not "is not valid under any".
        # A branch whose type does not match says nothing useful (1 against {type: string, enum: [auto]}).
        mistyped = {e.schema_path[0] for e in (error.context or []) if e.validator == "type" and e.schema_path}
        branches = [e for e in (error.context or []) if e.validator != "type"
                    and (not e.schema_path or e.schema_path[0] not in mistyped)]
        if branches:
            return _describe(min(branches, key=lambda e: len(list(e.schema_path))), schema)
        types = [s.get("type") for s in error.validator_value]
        enum = [v for s in error.validator_value for v in s.get("enum", [])]
        expected = " or ".join(str(t) for t in types if t) + (f" ({', '.join(map(str, enum))})" if enum else "")
        return [(_json_path(path), f"{error.instance!r} is not valid: expected {expected}")]
    if error.validator == "enum":
        hint = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        choices = ", ".join(str(v) for v in error.validator_value)
        extra = f"; did you mean '{hint[0]}'?" if hint else ""
        return [(_json_path(path), f"{error.instance!r} is not one of: {choices}{extra}")]
    if error.validator == "type":
        return [(_json_path(path), f"{error.instance!r} is not of type {error.validator_value}")]
    return [(_json_path(path), error.message)]


def _screen_values(value: Any, parts: list[Any], problems: list[tuple[str, str]]) -> Any:
    """Check what JSON Schema cannot express, and return the document with the offending values replaced by
    None so the schema validator (which repr()s values in its messages) never sees them:
    - NaN/inf: YAML has `.nan` and `.inf`, JSON Schema has no notion of them;
    - ints too large to print (see MAX_INT_BITS);
    - NUL characters: no path, argv entry or engine config can hold one (os calls raise ValueError)."""
    if isinstance(value, float) and not math.isfinite(value):
        problems.append((_json_path(parts), f"{value!r} is not a finite number"))
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        digits = int(value.bit_length() * math.log10(2)) + 1
        problems.append((_json_path(parts), f"an integer of about {digits} digits is out of range"))
        return None
    if isinstance(value, str) and "\x00" in value:
        problems.append((_json_path(parts), "contains a NUL character (\\0), which no path or setting can hold"))
        return None
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a "\ud800" escape: not text, no file or argv can hold it
            problems.append((_json_path(parts), f"contains a lone surrogate (U+{ord(value[exc.start]):04X}), "
                                                "which is not text: no file or setting can hold it"))
            return None
    if isinstance(value, dict):
        return {key: _screen_values(child, [*parts, key], problems) for key, child in value.items()}
    if isinstance(value, list):
        return [_screen_values(child, [*parts, index], problems) for index, child in enumerate(value)]
    return value


def _output_dir_problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    """output.dir is joined onto the run/render folder; an absolute path or `..` would let the engine write
    (and LLaMA-Factory's overwrite_output_dir overwrite) outside it, and the runner's artifact scan
    assumes it is inside."""
    output = document.get("output")
    folder = output.get("dir") if isinstance(output, dict) else None
    if not isinstance(folder, str):
        return []
    pure = PurePosixPath(folder)
    if pure.is_absolute() or ".." in pure.parts or folder.startswith("~"):
        return [("output.dir", f"{folder!r} must be a relative folder inside the run dir (no leading /, ~ or ..)")]
    return []


def _anchored(pattern: str) -> str:
    """`pattern` as the schema means it. Python's re.search lets `$` match before a final newline, so a name
    or target module ending in a newline would pass; an end-of-string anchor does not."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern


@lru_cache(maxsize=1)
def _validator() -> Any:
    """The full jsonschema validator (imported only when a recipe needs its error messages: ~0.1 s)."""
    import jsonschema

    def pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not re.search(_anchored(pattern), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")

    # Draft 2020-12 counts 8.0 as an integer; engines' argparse/dataclass fields do not (`lora_r: 8.0`).
    type_checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    extended = jsonschema.validators.extend(jsonschema.Draft202012Validator, validators={"pattern": pattern},
                                            type_checker=type_checker)
    return extended(recipe_schema())


_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}
_ANNOTATIONS = {"$schema", "$id", "title", "description", "default"}


def _conforms(value: Any, node: dict[str, Any]) -> bool:
    """A fast yes for the keywords this schema uses, so valid recipes never pay for importing jsonschema.
    Never more lenient than the full validator: anything unexpected answers False, and the full validator
    then decides (and words the messages)."""
    for keyword, rule in node.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "type":
            ok = _TYPES[rule](value)
        elif keyword == "enum":
            ok = any(v == value and type(v) is type(value) for v in rule)
        elif keyword == "oneOf":
            ok = sum(_conforms(value, branch) for branch in rule) == 1
        elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            ok = not _TYPES["number"](value) or {
                "minimum": value >= rule, "maximum": value <= rule,
                "exclusiveMinimum": value > rule, "exclusiveMaximum": value < rule}[keyword]
        elif keyword == "minLength":
            ok = not isinstance(value, str) or len(value) >= rule
        elif keyword == "pattern":
            ok = not isinstance(value, str) or re.search(_anchored(rule), value) is not None
        elif keyword == "minItems":
            ok = not isinstance(value, list) or len(value) >= rule
        elif keyword == "uniqueItems":
            ok = not isinstance(value, list) or not rule or (
                all(isinstance(v, str) for v in value) and len(set(value)) == len(value))
        elif keyword == "items":
            ok = not isinstance(value, list) or all(_conforms(v, rule) for v in value)
        elif keyword == "required":
            ok = not isinstance(value, dict) or all(key in value for key in rule)
        elif keyword == "properties":
            ok = not isinstance(value, dict) or all(_conforms(value[k], sub) for k, sub in rule.items() if k in value)
        elif keyword == "additionalProperties":
            extra = [k for k in value if k not in node.get("properties", {})] if isinstance(value, dict) else []
            ok = not extra if rule is False else all(_conforms(value[k], rule) for k in extra)
        elif keyword == "propertyNames":
            ok = not isinstance(value, dict) or all(_conforms(k, rule) for k in value)
        else:
            return False
        if not ok:
            return False
    return True


def schema_problems(document: dict[str, Any], file: str) -> list[Problem]:
    schema = recipe_schema()
    pairs: list[tuple[str, str]] = []
    screened = _screen_values(document, [], pairs)
    pairs.extend(_output_dir_problems(screened))
    if not pairs and _conforms(screened, schema):
        return []
    validator = _validator()
    flagged = {path for path, _ in pairs}

    def repeats(path: str) -> bool:
        # A value screened out above is None here: "None is not of type ..." at its path (or a oneOf
        # complaint about its parent) would only repeat that problem.
        return any(f == path or (path and f.startswith((f"{path}.", f"{path}["))) for f in flagged)

    for error in sorted(validator.iter_errors(screened), key=lambda e: list(map(str, e.absolute_path))):
        pairs.extend(p for p in _describe(error, schema) if not repeats(p[0]))
    unique = list(dict.fromkeys(pairs))
    return [Problem(file, path, message) for path, message in unique]


def apply_defaults(document: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill every default from the schema, recursively, so nothing is left to an engine."""
    schema = schema or recipe_schema()
    out = copy.deepcopy(document)
    for key, sub in schema.get("properties", {}).items():
        if key not in out:
            if sub.get("type") == "object":
                out[key] = {}
            elif "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            else:
                continue
        value = out[key]
        if isinstance(value, dict):
            object_schema = sub if sub.get("type") == "object" else next(
                (s for s in sub.get("oneOf", []) if s.get("type") == "object"), None)
            if object_schema is not None:
                out[key] = apply_defaults(value, object_schema)
    return out


# --------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class DatasetRef:
    path: str
    format: str
    fields: dict[str, str]
    split: str
    local_path: Path | None  # resolved file when local, None for a hub dataset id


@dataclass(frozen=True)
class Recipe:
    """A validated recipe with every default filled in. ``raw`` keeps the defaulted document."""

    source: Path
    raw: dict[str, Any]
    train: DatasetRef
    eval: DatasetRef | None
    target_modules: list[str] = field(default_factory=list)

    # Sections as plain dicts: the schema fixed their keys, and dict access keeps the renderers short.
    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def model(self) -> dict[str, Any]:
        return self.raw["model"]

    @property
    def method(self) -> dict[str, Any]:
        return self.raw["method"]

    @property
    def lora(self) -> dict[str, Any]:
        return self.raw["method"]["lora"]

    @property
    def quantization(self) -> dict[str, Any]:
        return self.raw["method"]["quantization"]

    @property
    def data(self) -> dict[str, Any]:
        return self.raw["data"]

    @property
    def training(self) -> dict[str, Any]:
        return self.raw["training"]

    @property
    def output(self) -> dict[str, Any]:
        return self.raw["output"]

    @property
    def distributed(self) -> dict[str, Any]:
        return self.raw["distributed"]

    @property
    def hardware(self) -> dict[str, Any]:
        return self.raw["hardware"]

    @property
    def uses_adapter(self) -> bool:
        return self.method["type"] in ("lora", "qlora")


def _dataset_ref(spec: dict[str, Any], base: Path, file: str, where: str) -> DatasetRef:
    path = spec["path"]
    try:
        candidate = Path(path).expanduser()
    except RuntimeError:  # "~someone/x" for a user this machine does not know
        raise RecipeError([Problem(file, f"{where}.path", f"{path!r}: no such user's home folder")]) from None
    if not candidate.is_absolute():
        candidate = base / candidate
    try:
        exists = candidate.exists()
    except OSError as exc:  # e.g. ENAMETOOLONG: exists() only swallows "not found"-like errors
        raise RecipeError([Problem(file, f"{where}.path", f"not a usable path: {exc.strerror}")]) from None
    looks_local = exists or path.startswith((".", "/", "~")) or Path(path).suffix in (
        ".jsonl", ".json", ".parquet")
    return DatasetRef(path=path, format=spec.get("format", "messages"), fields=dict(spec.get("fields", {})),
                      split=spec.get("split", "train"), local_path=candidate.resolve() if looks_local else None)


def build_recipe(document: dict[str, Any], source: Path) -> Recipe:
    """Validate a document against the schema and fill its defaults. Raises RecipeError with every problem."""
    file = str(source)
    problems = schema_problems(document, file)
    if problems:
        raise RecipeError(problems)
    raw = apply_defaults(document)
    if document.get("training", {}).get("warmup_ratio") is not None and "warmup_steps" not in document["training"]:
        raw["training"]["warmup_steps"] = None  # an explicit ratio replaces the default step count
    base = source.parent
    train = _dataset_ref(raw["data"]["train"], base, file, "data.train")
    evaluation = _dataset_ref(raw["data"]["eval"], base, file, "data.eval") if raw["data"].get("eval") else None
    targets = raw["method"]["lora"]["target_modules"]
    return Recipe(source=source, raw=raw, train=train, eval=evaluation,
                  target_modules=list(ALL_LINEAR) if targets == "all-linear" else list(targets))


def load_recipe(path: str | Path) -> Recipe:
    """Load and schema-validate a recipe file. Cross-field rules that need the data live in plan.py."""
    source = Path(path)
    return build_recipe(load_recipe_document(source), source)
