"""`qwenrecipes check`: prove that every engine tokenizes and masks exactly what qwenrecipes says it trains.

For a recipe, sample conversations (rows of its prepared data plus built-in hard cases, all through
qwenrecipes' own data path so the think rule applies) are written into a render folder of each engine, and
that engine's own preprocessing runs inside its own env (``engines/<engine>/check_tokens.py``, named so that
the script's folder on sys.path never shadows the engine package). Its input ids and labels are compared
with one reference: the Qwen3 tokenizer (``tokenizers``) on each row's training text with the canonical loss
mask, both from ``data/render_text.training_text``:

- ``train_on: assistant``: a token is trained when it overlaps the assistant content or the ``<|im_end|>``
  that closes it (less a context turn of a split ``qwen3_official`` row and the empty think block that template
  inserts); the ``<|im_start|>assistant\\n`` header, system, user and tool turns and the ``\\n`` after each
  ``<|im_end|>`` are masked (-100). "Overlaps" is the rule transformers' ``{% generation %}`` masks use.
- ``train_on: all``: every token is trained.

A difference the engine makes impossible to remove (``Engine.residuals``) is reported as a known residual, not a
failure: the engine's labels must then equal the reference with exactly that documented change applied.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import as_file
from pathlib import Path
from typing import Any, Literal

from qwenrecipes.check.samples import DEFAULT_SAMPLES, Sample, Tokens, _tokenizer, build_samples
from qwenrecipes.data.render_text import training_text
from qwenrecipes.data.tokens import tokenize_row, tokenize_rows
from qwenrecipes.engines import ENGINES
from qwenrecipes.engines.base import Residual
from qwenrecipes.errors import EngineError, QwenRecipesError
from qwenrecipes.recipe.plan import EVAL_FILE, Plan

IGNORE = -100
CHECK_SCRIPT = "check_tokens.py"  # in each engine's folder; runs inside the engine env
# Engine imports alone take 10-60 s on a busy 2-core machine; tokenizing a dozen rows is nothing next to it.
ENGINE_TIMEOUT_S = 900.0
OUTPUT_FILE = "check_result.json"
CONTEXT_TOKENS = 6  # tokens shown on each side of the first divergence

Status = Literal["equal", "residual", "mismatch", "error", "skipped"]


# -------------------------------------------------------------------------------------------- reference


def trained_char_spans(messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Character ranges of chatml_text(messages) that the canonical rule trains (data/render_text.training_text:
    content + <|im_end|> of every assistant turn, less context turns and the masked empty think block)."""
    return training_text(messages, "assistant").trained_spans


def reference_tokens(messages: Sequence[Mapping[str, Any]], train_on: str) -> Tokens:
    """The one reference: data/tokens.tokenize_row, the same function that makes the token handoff every engine
    trains (Qwen3 tokenizer on the row's training text, a token trained when it overlaps a trained span)."""
    row = tokenize_row(messages, train_on)
    return Tokens(row.input_ids, row.labels)


def reference_batch(rows: Sequence[Sequence[Mapping[str, Any]]], train_on: str) -> list[Tokens]:
    """reference_tokens of many rows at once (the tokenizer encodes a batch on every core)."""
    return [Tokens(row.input_ids, row.labels) for row in tokenize_rows(rows, train_on)]


# -------------------------------------------------------------------------------------------- residuals


def residuals_for(engine: str, train_on: str, handoff: str = "text") -> list[Residual]:
    """The engine's known residuals (``Engine.residuals``) for the recipe's train_on and handoff. With the token
    handoff the engine trains the ids and labels qwenrecipes made: only a residual that says it survives even that
    (``Residual.handoffs``) applies."""
    return [r for r in ENGINES[engine].residuals() if r.train_on == train_on and handoff in r.handoffs]


def check_engines() -> list[str]:
    """Every registered engine that ships a token-check script (``check_tokens.py`` in its folder)."""
    return [name for name in ENGINES if ENGINES[name].folder.joinpath(CHECK_SCRIPT).is_file()]


# ------------------------------------------------------------------------------------------- comparison


def _piece(token: int) -> str:
    return repr(_tokenizer().decode([token], skip_special_tokens=False))


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive indices as inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _window(ids: list[int], labels: list[int], centre: int) -> str:
    start, end = max(0, centre - CONTEXT_TOKENS), min(len(ids), centre + CONTEXT_TOKENS + 1)
    parts = [("+" if labels[i] != IGNORE else "·") + _piece(ids[i]) for i in range(start, end)]
    return ("… " if start else "") + " ".join(parts) + (" …" if end < len(ids) else "")


MAX_RUNS = 4


def describe_difference(reference: Tokens, engine: Tokens) -> str:
    """A readable diff: the first divergence with decoded tokens around it, and for labels which spans are
    trained where the reference masks them and vice versa (+ trained, · masked)."""
    lines: list[str] = []
    if engine.input_ids != reference.input_ids:
        first = next((i for i, (a, b) in enumerate(zip(reference.input_ids, engine.input_ids, strict=False))
                      if a != b),
                     min(len(reference.input_ids), len(engine.input_ids)))
        lines.append(f"input_ids differ from token {first} (engine {len(engine.input_ids)} tokens, reference "
                     f"{len(reference.input_ids)})")
        lines.append(f"  reference: {_window(reference.input_ids, reference.labels, first)}")
        lines.append(f"  engine:    {_window(engine.input_ids, engine.labels, first)}")
        return "\n".join(lines)
    if len(engine.labels) != len(engine.input_ids):
        return f"engine returned {len(engine.labels)} labels for {len(engine.input_ids)} input ids"
    # A label that is neither -100 nor the token itself would be a shifted or corrupted label.
    wrong = [i for i, (token, label) in enumerate(zip(engine.input_ids, engine.labels, strict=True))
             if label not in (IGNORE, token)]
    if wrong:
        lines.append(f"labels that are neither -100 nor the input token (shifted?) at tokens {wrong[:10]}")
    tokenizer = _tokenizer()
    pairs = list(zip(reference.labels, engine.labels, strict=True))
    for title, picked in (
        ("trained where it should be masked", [i for i, (r, e) in enumerate(pairs) if r == IGNORE and e != IGNORE]),
        ("masked where it should be trained", [i for i, (r, e) in enumerate(pairs) if r != IGNORE and e == IGNORE]),
    ):
        runs = _runs(picked)
        if not runs:
            continue
        lines.append(f"{title}: {len(picked)} tokens in {len(runs)} spans")
        for first, last in runs[:MAX_RUNS]:
            text = tokenizer.decode(reference.input_ids[first:last + 1], skip_special_tokens=False)
            lines.append(f"  tokens {first}-{last}: {text!r}")
        if len(runs) > MAX_RUNS:
            lines.append(f"  ... and {len(runs) - MAX_RUNS} more spans")
    first = next((i for i, (r, e) in enumerate(pairs) if r != e), 0)
    lines.append(f"around token {first} (+ trained, · masked):")
    lines.append(f"  reference: {_window(reference.input_ids, reference.labels, first)}")
    lines.append(f"  engine:    {_window(engine.input_ids, engine.labels, first)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class SampleResult:
    """One engine on one sample."""

    sample: str
    status: Status
    tokens: Tokens | None = None
    residuals: list[str] = field(default_factory=list)
    diff: str = ""


def compare_tokens(engine: str, sample: Sample, reference: Tokens, tokens: Tokens, train_on: str,
                   handoff: str = "text") -> SampleResult:
    if tokens.input_ids == reference.input_ids and tokens.labels == reference.labels:
        return SampleResult(sample.name, "equal", tokens)
    if tokens.input_ids == reference.input_ids:
        # The engine's residuals applied together, each named only where it changed something.
        expected, applied = list(reference.labels), []
        for residual in residuals_for(engine, train_on, handoff):
            changed = residual.apply(sample.messages, reference, expected)
            if changed != expected:
                applied.append(residual.name)
            expected = changed
        if applied and tokens.labels == expected:
            return SampleResult(sample.name, "residual", tokens, applied, describe_difference(reference, tokens))
    return SampleResult(sample.name, "mismatch", tokens, diff=describe_difference(reference, tokens))


# ---------------------------------------------------------------------------------------------- engines


@dataclass(frozen=True)
class EngineReport:
    engine: str
    status: Literal["checked", "skipped", "error"]
    reason: str = ""  # why skipped / what failed
    results: list[SampleResult] = field(default_factory=list)
    detail: str = ""  # the engine's traceback or output tail, on error
    handoff: str = "text"  # how the rows reached the engine: "tokens" (made by qwenrecipes) or "text"

    @property
    def ok(self) -> bool:
        return self.status != "error" and all(r.status in ("equal", "residual") for r in self.results)


def check_plan_for(plan: Plan) -> Plan:
    """The plan whose render the engines preprocess: a hub model id is swapped for the bundled tiny Qwen3,
    which carries the real Qwen3 tokenizer (one tokenizer for every Qwen3 size), so nothing is downloaded
    and no multi-GB weights are needed to tokenize. A local model dir is kept: its own tokenizer counts.
    Packing is switched off: check compares each row's tokens and mask, and a packed recipe's bins are those same
    rows concatenated (data/packing.py; tests/test_packing.py proves each engine's bins keep their rows apart)."""
    if plan.recipe.data["packing"]:
        raw = {**plan.recipe.raw, "data": {**plan.recipe.raw["data"], "packing": False}}
        plan = dataclasses.replace(plan, recipe=dataclasses.replace(plan.recipe, raw=raw), packing=None)
    if Path(os.path.expanduser(plan.model_path)).is_dir():  # os.path's never raises for an unknown ~user
        return plan
    from qwenrecipes.data.tiny import TINY_QWEN3_REF, resolve_builtin_model

    return dataclasses.replace(plan, model_path=str(resolve_builtin_model(TINY_QWEN3_REF)))


def _script_output(engine: str, python: Path, folder: Path, environment: dict[str, str],
                   timeout: float) -> dict[str, Any]:
    out_file = folder / OUTPUT_FILE
    resource = ENGINES[engine].folder.joinpath(CHECK_SCRIPT)
    with as_file(resource) as script:
        try:
            # -P: `python script.py` puts the script's folder first on sys.path, and that folder is the engine's
            # package folder, whose sibling modules (native.py, bundle.py, logs.py, ...) would shadow any real
            # module of that name in the engine env. -P (Python 3.11+, every engine lock) leaves it out.
            proc = subprocess.run([str(python), "-P", str(script), str(out_file)], cwd=folder, env=environment,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"{engine}'s preprocessing did not finish in {timeout:.0f} s"}
    try:
        result: dict[str, Any] = json.loads(out_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"ok": False, "error": f"{engine}'s check script crashed (exit {proc.returncode})", "traceback": tail}
    return result


def run_engine(plan: Plan, engine: str, samples: Sequence[Sample], *, python: Path | None = None,
               environment: Mapping[str, str] | None = None, timeout: float = ENGINE_TIMEOUT_S) -> list[Tokens]:
    """Run `engine`'s own preprocessing, in its env, on the samples; their tokens in sample order.
    Raises EngineError when the env is missing or the engine fails."""
    from qwenrecipes.engines.base import HF_OFFLINE
    from qwenrecipes.render.folder import data_jobs, render_plan, write_rendered
    from qwenrecipes.render.write import write_file

    check_plan = check_plan_for(plan)
    rendered = render_plan(check_plan, engine)
    with tempfile.TemporaryDirectory(prefix=f"qwenrecipes-check-{engine}-") as tmp:
        folder = Path(tmp)
        write_rendered(check_plan, rendered, folder)
        # The engine reads the samples where the render put the training data (as text and, with the token
        # handoff, as the tokens qwenrecipes hands it), through its own data config.
        eval_rows = [samples[0].messages] if (folder / EVAL_FILE).exists() else None
        for relative, job in data_jobs(check_plan, engine, [s.messages for s in samples], eval_rows):
            write_file(folder, relative, job)
        if python is None:
            from qwenrecipes.run.envs import env_for

            engine_env = env_for(engine)
            python = engine_env.python
            env = engine_env.run_environment(rendered.environment)
        else:
            env = dict(environment or {})
        env.update(HF_OFFLINE)  # everything is local (check_plan_for)
        env.update({
            # A private datasets cache so nothing stale is reused and nothing is left behind.
            "HF_DATASETS_CACHE": str(folder / ".hf_datasets"), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        })
        result = _script_output(engine, python, folder, env, timeout)
    if not result.get("ok"):
        raise EngineError(f"{engine}: {result.get('error')}\n{result.get('traceback', '')}".rstrip())
    rows = result["rows"]
    if len(rows) != len(samples):
        raise EngineError(f"{engine} returned {len(rows)} rows for {len(samples)} samples (it dropped or added rows)")
    return [Tokens([int(t) for t in r["input_ids"]], [int(t) for t in r["labels"]]) for r in rows]


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class CheckReport:
    recipe: str
    chat_template: str
    train_on: str
    samples: list[Sample]
    reference: list[Tokens]
    engines: list[EngineReport]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.engines)

    def to_json(self) -> dict[str, Any]:
        """Per sample: the reference and every engine's input_ids/labels (-100 masked) with its verdict."""
        by_engine = {e.engine: {r.sample: r for r in e.results} for e in self.engines}
        samples = []
        for sample, reference in zip(self.samples, self.reference, strict=True):
            engines: dict[str, Any] = {}
            for report in self.engines:
                result = by_engine[report.engine].get(sample.name)
                if sample.dropped:
                    engines[report.engine] = {"status": "dropped", "reason": sample.dropped}
                    continue
                if result is None:
                    engines[report.engine] = {"status": report.status, "reason": report.reason}
                    continue
                engines[report.engine] = {"status": result.status, "residuals": result.residuals,
                                          "diff": result.diff or None,
                                          **(result.tokens.to_json() if result.tokens else {})}
            samples.append({"name": sample.name, "source": sample.source, "messages": sample.messages,
                            "reference": reference.to_json(), "engines": engines})
        return {
            "recipe": self.recipe, "chat_template": self.chat_template, "train_on": self.train_on, "ok": self.ok,
            "engines": {e.engine: {"status": e.status, "ok": e.ok, "reason": e.reason or None, "handoff": e.handoff,
                                   "detail": e.detail or None} for e in self.engines},
            "residuals": {r.name: {"engine": r.engine, "train_on": r.train_on, "description": r.description}
                          for e in self.engines for r in residuals_for(e.engine, self.train_on, e.handoff)},
            "samples": samples,
        }


def check_recipe(plan: Plan, engines: Sequence[str] | None = None, *, data_samples: int | None = DEFAULT_SAMPLES,
                 pythons: Mapping[str, Path] | None = None,
                 on_engine: Callable[[str], None] | None = None) -> CheckReport:
    """Check every engine (default: all four) against the reference. An engine named in `engines` whose env
    is missing is an error; with the default list it is skipped (reported, not a failure)."""
    explicit = engines is not None
    known = check_engines()
    names = list(engines) if engines is not None else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise QwenRecipesError(f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    if plan.train_rows is None:
        raise QwenRecipesError("check needs local training data (a hub dataset is not read by qwenrecipes)")
    train_on = plan.recipe.data["train_on"]
    samples = build_samples(plan, data_samples=data_samples)
    reference = reference_batch([s.messages for s in samples], train_on)
    # A sample qwenrecipes drops (over max_seq_length) is never handed to an engine: it stays in the report only.
    handed = [(s, ref) for s, ref in zip(samples, reference, strict=True) if not s.dropped]
    reports: list[EngineReport] = []
    for engine in names:
        if on_engine is not None:
            on_engine(engine)
        python = (pythons or {}).get(engine)
        if python is None:
            from qwenrecipes.run.envs import env_for

            try:
                env_for(engine)
            except EngineError as exc:
                status: Literal["skipped", "error"] = "error" if explicit else "skipped"
                reports.append(EngineReport(engine, status, f"not checkable here: {exc}"))
                continue
        try:
            tokens = run_engine(plan, engine, [s for s, _ in handed], python=python)
        except EngineError as exc:
            reason, _, detail = str(exc).partition("\n")
            reports.append(EngineReport(engine, "error", reason, detail=detail))
            continue
        handoff = ENGINES[engine].handoff(plan)
        results = [compare_tokens(engine, s, ref, tok, train_on, handoff)
                   for (s, ref), tok in zip(handed, tokens, strict=True)]
        reports.append(EngineReport(engine, "checked", results=results, handoff=handoff))
    return CheckReport(plan.recipe.name, plan.recipe.model["chat_template"], train_on, samples, reference, reports)
