"""The recipe side of the web app: load, save, validate, render, explain and the token view.

Every answer comes from the same library calls the CLI makes (`validate`, `render`, `explain`, `check`), so the
page shows the CLI's own messages. The form sends the document it holds plus the path it was loaded from (or will
be saved to): relative data paths in a recipe are resolved against that file's folder, as the CLI does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qwenrecipes.errors import EngineError, Problem, QwenRecipesError, RecipeError
from qwenrecipes.ui.safety import Forbidden, project_path, relative_to_project

RECIPE_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", "runs", "outputs", "build", "dist"}
MAX_LISTED = 200
MAX_TOKENS_SHOWN = 4096


def engine_names() -> list[str]:
    from qwenrecipes.engines import ENGINES

    return list(ENGINES)


def _problem_json(problem: Problem) -> dict[str, str]:
    return {"path": problem.path, "message": problem.message, "text": str(problem)}


def recipe_files(project: Path) -> list[str]:
    """YAML files in the project folder and two levels below (skipping runs, venvs, hidden folders)."""
    root = project.resolve()
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and depth < 2)
        for name in sorted(names):
            path = Path(folder) / name
            # A symlinked file is listed only when it stays inside the project (project_path's rule).
            if name.endswith(RECIPE_SUFFIXES) and (not path.is_symlink() or root in path.resolve().parents):
                found.append(path.relative_to(root).as_posix())
        if len(found) >= MAX_LISTED:
            break
    return found[:MAX_LISTED]


def load_document(project: Path, relative: str) -> dict[str, Any]:
    """The recipe file as a plain mapping, through the CLI's strict loader (no aliases, tags, duplicates)."""
    from qwenrecipes.recipe.load import load_recipe_document

    path = project_path(project, relative)
    try:
        return {"path": relative, "document": load_recipe_document(path), "problems": []}
    except RecipeError as exc:
        return {"path": relative, "document": None, "problems": [_problem_json(p) for p in exc.problems]}


def save_document(project: Path, relative: str, document: Any) -> dict[str, Any]:
    """Write the form's document as YAML (atomically) inside the project. The document is saved even when it
    does not validate yet (a draft), and its problems are answered with it."""
    from qwenrecipes.engines.templating import dump_yaml

    if not relative.endswith(RECIPE_SUFFIXES):
        raise Forbidden(f"{relative!r}: a recipe is saved as a .yaml or .yml file")
    if not isinstance(document, dict):
        raise QwenRecipesError("the recipe document must be a mapping of sections")
    target = project_path(project, relative, must_exist=False)
    unresolved = project.resolve() / relative
    if unresolved.is_symlink():
        raise Forbidden(f"{relative!r} is a symlink: save to a plain file")
    if not target.parent.is_dir():
        raise QwenRecipesError(f"{relative}: folder {relative_to_project(project, target.parent)} does not exist")
    text = f"# saved by qwenrecipes ui\n{dump_yaml(document)}"
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return {"path": relative, "bytes": len(text.encode()), **validate_document(project, relative, document)}


def _plan(project: Path, relative: str, document: Any, target: str | None) -> Any:
    """The Plan for a document as if it were the file `relative` (RecipeError with every problem)."""
    from qwenrecipes.recipe.load import build_recipe
    from qwenrecipes.recipe.plan import make_plan

    if not isinstance(document, dict):
        raise RecipeError([Problem(relative, "", "a recipe is a mapping of sections (model, data, ...)")])
    source = project_path(project, relative, must_exist=False)
    try:
        return make_plan(build_recipe(document, source), target=target)
    except RecipeError as exc:
        # Data paths resolve against the absolute file; messages name it as the page does (like the CLI's argv).
        raise RecipeError([Problem(relative if p.file == str(source) else p.file, p.path, p.message)
                           for p in exc.problems]) from None


def validate_document(project: Path, relative: str, document: Any, target: str | None = None) -> dict[str, Any]:
    """What `qwenrecipes validate` reports, as data: problems (at their field), warnings, summary, memory.

    Same steps as the CLI: schema + cross-field rules + data (make_plan), then each engine's memory resolution;
    an engine whose resolution fails is a warning unless every engine fails."""
    from qwenrecipes.render.resolve import memory_lines, resolve_engines

    try:
        plan = _plan(project, relative, document, target)
    except RecipeError as exc:
        return {"ok": False, "problems": [_problem_json(p) for p in exc.problems], "warnings": []}
    warnings = [f"{relative}: {w}" for w in plan.warnings]
    resolved = resolve_engines(plan, engine_names())
    errors = [r for r in resolved.values() if isinstance(r, RecipeError)]
    failed = [problem for error in errors for problem in error.problems]
    if errors and len(errors) == len(resolved):
        return {"ok": False, "problems": [_problem_json(p) for p in failed], "warnings": warnings}
    warnings += [str(p) for p in failed]
    for name, result in resolved.items():
        if not isinstance(result, RecipeError):
            warnings += [f"{relative}: {name}: {w}" for w in result.warnings[len(plan.warnings):]]
    return {"ok": True, "problems": [], "warnings": warnings, "summary": plan.summary(),
            "target_why": getattr(plan, "target_why", ""), "memory": memory_lines(resolved)}


def render_document(project: Path, relative: str, document: Any, target: str | None = None) -> dict[str, Any]:
    """Every engine's rendered files (as `render -o` writes them), its memory decisions, and the explain table."""
    from qwenrecipes.render.explain import explain_json, explain_plan
    from qwenrecipes.render.folder import get_engine, render_plan
    from qwenrecipes.render.resolve import memory_lines, resolve_engines

    plan = _plan(project, relative, document, target)
    resolved = resolve_engines(plan, engine_names())
    engines: dict[str, Any] = {}
    for name, result in resolved.items():
        if isinstance(result, RecipeError):
            engines[name] = {"error": [str(p) for p in result.problems]}
            continue
        rendered = render_plan(plan, name)
        engines[name] = {"main_file": get_engine(name).main_file, "files": rendered.files,
                         "command": rendered.command_line, "warnings": rendered.warnings, "memory": result.memory}
    usable = [name for name, result in resolved.items() if not isinstance(result, RecipeError)]
    rows = explain_json(explain_plan(plan, usable)) if usable else []
    return {"engines": engines, "explain": rows, "explain_engines": usable, "memory": memory_lines(resolved),
            "summary": plan.summary()}


def token_view(project: Path, relative: str, document: Any, row: int, engines: list[str],
               target: str | None = None) -> dict[str, Any]:
    """One prepared training row as `check` sees it: the reference tokens and loss mask, and for each engine
    asked for, that engine's own preprocessing in its env (slow: the engine is imported) with check's verdict."""
    from qwenrecipes.check.tokens import IGNORE, Sample, compare_tokens, reference_tokens, run_engine
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    plan = _plan(project, relative, document, target)
    rows = plan.train_rows
    if not rows:
        raise QwenRecipesError("the token view needs local training data (a hub dataset is not read by qwenrecipes)")
    if not 0 <= row < len(rows):
        raise QwenRecipesError(f"row {row + 1} does not exist: the prepared training data has {len(rows)} rows")
    train_on = plan.recipe.data["train_on"]
    sample = Sample(f"data_row_{row + 1}", "data", rows[row])
    reference = reference_tokens(sample.messages, train_on)
    tokenizer = load_qwen3_tokenizer()

    def view(ids: list[int], labels: list[int]) -> dict[str, Any]:
        shown = ids[:MAX_TOKENS_SHOWN]
        return {"pieces": [tokenizer.decode([t], skip_special_tokens=False) for t in shown],
                "trained": [label != IGNORE for label in labels[:MAX_TOKENS_SHOWN]], "ids": shown,
                "count": len(ids), "trained_count": sum(label != IGNORE for label in labels)}

    out: dict[str, Any] = {"row": row, "rows": len(rows), "train_on": train_on, "messages": sample.messages,
                           "reference": view(reference.input_ids, reference.labels), "engines": {}}
    for name in engines:
        if name not in engine_names():
            raise QwenRecipesError(f"unknown engine {name!r}: choose from {', '.join(engine_names())}")
        try:
            tokens = run_engine(plan, name, [sample])[0]
        except EngineError as exc:
            out["engines"][name] = {"status": "error", "reason": str(exc).splitlines()[0]}
            continue
        result = compare_tokens(name, sample, reference, tokens, train_on)
        out["engines"][name] = {"status": result.status, "residuals": result.residuals, "diff": result.diff,
                                **view(tokens.input_ids, tokens.labels)}
    return out


def engine_envs() -> dict[str, bool]:
    """Which engines have an installed env here (the token view offers only those)."""
    from qwenrecipes.run.envs import env_for

    present = {}
    for name in engine_names():
        try:
            env_for(name)
            present[name] = True
        except (EngineError, QwenRecipesError):
            present[name] = False
    return present
