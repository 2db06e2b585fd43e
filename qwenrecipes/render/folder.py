"""Render a plan into a ready-to-run folder for one engine."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from qwenrecipes.engines import ENGINES
from qwenrecipes.engines.base import Engine
from qwenrecipes.engines.templating import dump_yaml
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.plan import EVAL_FILE, EVAL_TOKENS_FILE, TRAIN_FILE, TRAIN_TOKENS_FILE, Plan
from qwenrecipes.render.multinode import LAUNCH_FILE, SBATCH_FILE, multinode_files
from qwenrecipes.render.resolve import resolve_for_engine
from qwenrecipes.render.write import publish, write_file

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
    # Several nodes: the per-node launch script, sbatch and SkyPilot task (render/multinode.py); what the
    # engine's launcher cannot run is said now and refused by `run`.
    files.update(multinode_files(plan, engine_name, rendered.argv, rendered.environment, rendered.command_line))
    rendered.warnings.extend(f"{engine_name} cannot run this recipe ({field}): {reason}"
                             for field, reason in engine.launch_problems(plan))
    files["plan.json"] = json.dumps({"engine": engine_name, **plan.summary(with_bins=True)}, indent=2) + "\n"
    return rendered


def _text(text: str) -> Callable[[TextIO], None]:
    def write(handle: TextIO) -> None:
        handle.write(text)

    return write


def _jsonl(rows: list[list[dict[str, str]]]) -> Callable[[TextIO], None]:
    def write(handle: TextIO) -> None:
        for messages in rows:
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")

    return write


def _token_jsonl(plan: Plan, engine: Engine, rows: list[list[dict[str, Any]]]) -> Callable[[TextIO], None]:
    def write(handle: TextIO) -> None:
        from qwenrecipes.data.tokens import tokenize_rows, tokenizer_for

        # The train stream repeats the same row objects once per pass: each is tokenized once.
        unique = list({id(row): row for row in rows}.values())
        tokens = tokenize_rows(unique, plan.recipe.data["train_on"], tokenizer_for(plan.model_path))
        lines = {id(row): json.dumps(engine.token_row(t.input_ids, t.labels), separators=(",", ":")) + "\n"
                 for row, t in zip(unique, tokens, strict=True)}
        for row in rows:
            handle.write(lines[id(row)])

    return write


def _packed_jsonl(plan: Plan, engine: Engine, eval_rows: list[list[dict[str, Any]]] | None
                  ) -> Callable[[TextIO], None]:
    """Packed recipes: one line per bin in training order (Plan.bin_stream); eval rows one per line, each a
    bin of one row, so the engine reads both through the same packed path."""
    def write(handle: TextIO) -> None:
        from qwenrecipes.data.packing import packed_row
        from qwenrecipes.data.tokens import tokenize_rows, tokenizer_for

        assert plan.packing is not None
        if eval_rows is None:
            tokens, bins = list(plan.packing.tokens), plan.bin_stream or []
        else:
            tokens = tokenize_rows(eval_rows, plan.recipe.data["train_on"], tokenizer_for(plan.model_path))
            bins = [(i,) for i in range(len(tokens))]
        for members in bins:
            handle.write(json.dumps(engine.packed_row(packed_row(tokens, members)), separators=(",", ":")) + "\n")

    return write


def data_jobs(plan: Plan, engine_name: str, train_rows: list[list[dict[str, Any]]] | None,
              eval_rows: list[list[dict[str, Any]]] | None) -> list[tuple[str, Callable[[TextIO], None]]]:
    """The data files of a render folder: the prepared rows as ChatML messages (data/train.jsonl, in the order
    they are trained) and, with the token handoff, the same rows as the engine's input_ids + labels."""
    jobs: list[tuple[str, Callable[[TextIO], None]]] = []
    tokens = get_engine(engine_name).handoff(plan) == "tokens"
    for relative, token_file, rows in ((TRAIN_FILE, TRAIN_TOKENS_FILE, train_rows),
                                       (EVAL_FILE, EVAL_TOKENS_FILE, eval_rows)):
        if rows:
            jobs.append((relative, _jsonl(rows)))
            if plan.packing is not None:
                jobs.append((token_file, _packed_jsonl(plan, get_engine(engine_name),
                                                       None if relative == TRAIN_FILE else rows)))
            elif tokens:
                jobs.append((token_file, _token_jsonl(plan, get_engine(engine_name), rows)))
    return jobs


def write_rendered(plan: Plan, rendered: Rendered, out_dir: Path, *, shown_as: Path | None = None) -> list[Path]:
    """Write the engine files and the prepared data into out_dir (created if needed), each file atomically and
    never through a symlink (render/write.py); errors name shown_as/<file> (the folder the user asked for)."""
    if out_dir.is_symlink():
        raise QwenRecipesError(f"{shown_as or out_dir} is a symlink: give the real folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(relative, _text(text)) for relative, text in rendered.files.items()]
    jobs.extend(data_jobs(plan, rendered.engine, plan.train_stream, plan.eval_rows))
    scripts = (COMMAND_FILE, LAUNCH_FILE, SBATCH_FILE)
    return [write_file(out_dir, relative, job, shown_root=shown_as, executable=relative in scripts)
            for relative, job in jobs]


def render_to_folder(plan: Plan, rendered: Rendered, out_dir: Path, *, force: bool = False) -> list[str]:
    """`render -o`: the folder is built aside and renamed into place (render/write.publish), so a failure
    leaves what was there before; an existing folder that is not an earlier render needs ``force``."""
    written: list[str] = []

    def build(staging: Path) -> list[str]:
        paths = write_rendered(plan, rendered, staging, shown_as=out_dir)
        written.extend(path.relative_to(staging).as_posix() for path in paths)
        return written

    publish(out_dir, build, force=force)
    return written
