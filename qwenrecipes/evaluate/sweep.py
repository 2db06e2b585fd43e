"""`qwenrecipes sweep`: recipe fields varied over a grid (or searched with Optuna), each point an ordinary
run (run.runner.run_recipe, its run dir under the sweep folder) scored on the held-out split by
`evaluate_runs`; the sweep's objective is that held-out loss.

State: ``sweep.json`` in the sweep folder records every point (overrides, status, run dir, numbers) and is
rewritten after each step, so rerunning the same command resumes: finished points are kept, a point whose
run stopped part-way continues from its last checkpoint (else starts over), a trained but unscored point is
only scored. A different sweep in the same folder is refused. Point recipes are written next to their runs
with data and model paths made absolute, so they run from anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qwenrecipes.errors import QwenRecipesError

STATE_FILE = "sweep.json"
PATH_FIELDS = (("data", "train", "path"), ("data", "eval", "path"), ("model", "name_or_path"))

Echo = Callable[[str], None]


def parse_value(text: str) -> Any:
    """A command-line value: int, float (1e-4 too, which YAML 1.1 reads as a string), bool/null, or text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    value = yaml.safe_load(text)
    return value if value is not None or text.strip() in ("null", "~") else text


def _split(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise QwenRecipesError(f"{option} {text!r}: expected FIELD=VALUE (e.g. method.lora.r=8,16)")
    return key.strip(), value.strip()


@dataclass(frozen=True)
class Range:
    """An Optuna search range for one numeric field."""

    low: float
    high: float
    log: bool
    integer: bool


def parse_range(text: str) -> Range:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise QwenRecipesError(f"--param range {text!r}: expected LOW:HIGH or LOW:HIGH:log")
    low, high = parse_value(parts[0]), parse_value(parts[1])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise QwenRecipesError(f"--param range {text!r}: LOW and HIGH must be numbers with LOW < HIGH")
    return Range(float(low), float(high), len(parts) == 3, isinstance(low, int) and isinstance(high, int))


def set_field(document: dict[str, Any], dotted: str, value: Any) -> None:
    node = document
    *parents, last = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise QwenRecipesError(f"{dotted}: {key} is not a mapping in the recipe")
        node = child
    node[last] = value


def label(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())


def point_id(overrides: dict[str, Any]) -> str:
    """A folder name for the point: readable, unique (the same overrides always give the same name)."""
    text = "_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in overrides.items())
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]
    return (re.sub(r"[^A-Za-z0-9.=+-]", "", text)[:60] or "point") + f"-{digest}"


@dataclass
class SweepSpec:
    recipe: Path
    engine: str
    grid: list[tuple[str, list[Any]]]
    ranges: list[tuple[str, Range]] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    search: str = "grid"
    trials: int = 10
    out: Path | None = None
    target: str | None = None

    @classmethod
    def from_cli(cls, recipe: Path, engine: str, *, grid: Sequence[str], params: Sequence[str] = (),
                 fixed: Sequence[str] = (), search: str = "grid", trials: int = 10, out: Path | None = None,
                 target: str | None = None) -> SweepSpec:
        axes = []
        for text in grid:
            key, values = _split("--grid", text)
            parsed = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
            axes.append((key, list(dict.fromkeys(parsed))))
        ranges = [(key, parse_range(value)) for key, value in (_split("--param", t) for t in params)]
        fixed_values = {key: parse_value(value) for key, value in (_split("--set", t) for t in fixed)}
        keys = [k for k, _ in axes] + [k for k, _ in ranges]
        if len(set(keys)) != len(keys):
            raise QwenRecipesError("a field is given twice in --grid/--param: give each field once")
        if search == "grid" and ranges:
            raise QwenRecipesError("--param ranges need --search optuna (a grid takes --grid values)")
        if not keys:
            raise QwenRecipesError("nothing to sweep: give at least one --grid FIELD=V1,V2 (or --param with optuna)")
        if search == "optuna" and trials < 1:
            raise QwenRecipesError("--trials must be at least 1")
        return cls(Path(recipe), engine, axes, ranges, fixed_values, search, trials, out, target)

    def points(self) -> list[dict[str, Any]]:
        """Every grid point's overrides, in a stable order (the first axis varies slowest)."""
        keys = [k for k, _ in self.grid]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in self.grid))]

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same sweep (resume) or different ones (refused)."""
        return {"recipe": str(self.recipe.resolve()), "engine": self.engine, "search": self.search,
                "grid": [[k, v] for k, v in self.grid], "fixed": self.fixed,
                "ranges": [[k, r.__dict__] for k, r in self.ranges]}


def absolutize(document: dict[str, Any], recipe: Path) -> dict[str, Any]:
    """The recipe document with its relative data / model paths made absolute (when they exist locally)."""
    out = copy.deepcopy(document)
    base = recipe.resolve().parent
    for path in PATH_FIELDS:
        node: Any = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(path[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and not value.startswith(("builtin:", "/")) and (base / value).exists():
            node[path[-1]] = str(base / value)
    return out


def point_document(spec: SweepSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    from qwenrecipes.recipe.load import build_recipe, load_recipe_document

    document = absolutize(load_recipe_document(spec.recipe), spec.recipe)
    for key, value in {**spec.fixed, **overrides}.items():
        set_field(document, key, value)
    build_recipe(copy.deepcopy(document), spec.recipe)  # every schema problem of the point, before it runs
    return document


def write_recipe(path: Path, document: dict[str, Any], header: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body, encoding="utf-8")
    return path


def default_out(spec: SweepSpec) -> Path:
    from qwenrecipes.recipe.load import load_recipe_document

    name = load_recipe_document(spec.recipe).get("name") or spec.recipe.stem
    return Path("sweeps") / f"{name}-{spec.engine}"


# ----------------------------------------------------------------------------------------------- state


class SweepState:
    """sweep.json: the sweep's identity and every point, rewritten atomically after each change."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder, self.path = folder, folder / STATE_FILE
        self.data: dict[str, Any] = {"kind": "qwenrecipes-sweep", "identity": identity, "points": {}}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise QwenRecipesError(f"cannot read {self.path}: {exc}") from exc
            if saved.get("identity") != identity:
                raise QwenRecipesError(f"{folder} holds a different sweep ({STATE_FILE} records another recipe, "
                                       "engine or grid): pass another --out, or delete the folder to start over")
            self.data = saved

    @property
    def points(self) -> dict[str, dict[str, Any]]:
        return self.data["points"]  # type: ignore[no-any-return]

    def update(self, pid: str, **values: Any) -> dict[str, Any]:
        self.points.setdefault(pid, {}).update(values)
        from qwenrecipes.run.rundir import write_json_atomic

        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)
        return self.points[pid]
