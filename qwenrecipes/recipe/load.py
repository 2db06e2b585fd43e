"""Load, validate and resolve a recipe into one fully explicit object (``Recipe``).

Loading is defensive (recipes are often copied from the internet): a size cap and a strict YAML loader
(``strict_yaml``). Validation collects *every* problem before raising, as ``FILE::json.path: message``: a fast
conformance check lets valid recipes skip importing jsonschema; an invalid one gets the full validator, its
errors worded by ``schema_errors``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.schema_errors import anchored, describe, output_dir_problems, screen_values
from qwenrecipes.recipe.strict_yaml import MAX_DEPTH, StrictLoader, nesting_depth
from qwenrecipes.resources import read_resource_text

MAX_RECIPE_BYTES = 1_000_000
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@lru_cache(maxsize=1)
def recipe_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that ships inside the package."""
    return json.loads(read_resource_text("recipe/schema/recipe.schema.json"))


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
        document = yaml.load(text, Loader=StrictLoader)
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
    if nesting_depth(document) > MAX_DEPTH:
        raise fail(f"YAML nested deeper than {MAX_DEPTH} levels")
    return document


@lru_cache(maxsize=1)
def _validator() -> Any:
    """The full jsonschema validator (imported only when a recipe needs its error messages: ~0.1 s)."""
    import jsonschema

    def pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not re.search(anchored(pattern), instance):
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
            ok = not isinstance(value, str) or re.search(anchored(rule), value) is not None
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
    screened = screen_values(document, [], pairs)
    pairs.extend(output_dir_problems(screened))
    if not pairs and _conforms(screened, schema):
        return []
    validator = _validator()
    flagged = {path for path, _ in pairs}

    def repeats(path: str) -> bool:
        # A value screened out above is None here: "None is not of type ..." at its path (or a oneOf
        # complaint about its parent) would only repeat that problem.
        return any(f == path or (path and f.startswith((f"{path}.", f"{path}["))) for f in flagged)

    for error in sorted(validator.iter_errors(screened), key=lambda e: list(map(str, e.absolute_path))):
        pairs.extend(p for p in describe(error, schema) if not repeats(p[0]))
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
