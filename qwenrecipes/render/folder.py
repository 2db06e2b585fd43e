"""Render a plan into a ready-to-run folder for one engine."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from qwenrecipes.data.prepare import write_jsonl
from qwenrecipes.engines import ENGINES
from qwenrecipes.engines.base import Engine, dump_yaml
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.plan import EVAL_FILE, TRAIN_FILE, Plan
from qwenrecipes.recipe.resolve import resolve_for_engine

RESOLVED_RECIPE = "recipe.resolved.yaml"
COMMAND_FILE = "COMMAND"


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise QwenRecipesError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}") from None


@dataclass(frozen=True)
class Rendered:
    engine: str
    files: dict[str, str]  # relative path -> text (data files not included)
    argv: list[str]
    environment: dict[str, str]
    warnings: list[str] = field(default_factory=list)  # the plan's, plus this engine's memory decisions

    @property
    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environment.items())
        return f"{env} {shlex.join(self.argv)}".strip()


def resolved_recipe_text(plan: Plan) -> str:
    """The recipe with every default filled and the resolved values, as the render folder keeps it."""
    document = {"recipe": plan.recipe.raw, "resolved": plan.summary(), "warnings": plan.warnings}
    source = " ".join(plan.recipe.source.name.split())  # a newline in a file name would end the comment
    header = f"# {source}, resolved by qwenrecipes. Every value below is what the engines got.\n"
    return header + dump_yaml(document)


def render_plan(plan: Plan, engine_name: str) -> Rendered:
    """Every path (render, run, bench, check, explain) comes here: the memory-dependent settings are resolved
    for this engine first (resolve.resolve_for_engine), so engines only read concrete values."""
    engine = get_engine(engine_name)
    plan = resolve_for_engine(plan, engine_name)
    files = dict(engine.render(plan))
    rendered = Rendered(engine_name, files, engine.command(plan), engine.environment(plan), list(plan.warnings))
    files[RESOLVED_RECIPE] = resolved_recipe_text(plan)
    files[COMMAND_FILE] = f"cd \"$(dirname \"$0\")\" 2>/dev/null || true\n{rendered.command_line}\n"
    files["plan.json"] = json.dumps({"engine": engine_name, **plan.summary()}, indent=2) + "\n"
    return rendered


def _safe_join(root: Path, relative: str) -> Path:
    """Engines name files relative to the folder; refuse anything that would land outside it."""
    target = (root / relative).resolve()
    if root.resolve() not in target.parents:
        raise QwenRecipesError(f"refusing to write {relative!r} outside {root}")
    return target


def write_rendered(plan: Plan, rendered: Rendered, out_dir: Path) -> list[Path]:
    """Write the engine files and the prepared data into out_dir (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, text in rendered.files.items():
        target = _safe_join(out_dir, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
        written.append(target)
    stream = plan.train_stream
    if stream is not None:
        write_jsonl(out_dir / TRAIN_FILE, stream)
        written.append(out_dir / TRAIN_FILE)
    if plan.eval_rows:
        write_jsonl(out_dir / EVAL_FILE, plan.eval_rows)
        written.append(out_dir / EVAL_FILE)
    (out_dir / COMMAND_FILE).chmod(0o755)
    return written
