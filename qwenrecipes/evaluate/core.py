"""`qwenrecipes eval`: did it learn? Teacher-forced loss and perplexity of base and fine-tuned models on the
recipe's held-out split, per sample, plus greedy generations side by side.

Numbers are token-weighted: a model's loss is the summed cross-entropy over every trained held-out token
divided by their count (what a trainer's eval loss is, up to batching), perplexity is exp(loss). The tokens
and mask come from qwenrecipes (heldout.py), so the base and every engine's adapter are scored on the same
ones; a run held out on other data (another recipe, seed or val_fraction) is refused rather than compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.evaluate.heldout import HeldOut, decode, generation_prompt, load_heldout, prompt_ids, split_think
from qwenrecipes.evaluate.models import BASE, ModelSpec, ProgressCallback, run_eval_script, run_model, unique_names
from qwenrecipes.run.quality import EVAL_JSON

REPORT_MD = "report.md"
EVAL_PNG = "eval.png"
SCHEMA_VERSION = 1
DEFAULT_SAMPLES = 3
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class ModelScore:
    """One model's numbers on the held-out split."""

    spec: ModelSpec
    loss: float
    tokens: int
    row_losses: list[float | None]  # mean loss per held-out row (None: the row trains no token)
    generations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {"name": spec.name, "engine": spec.engine, "run_dir": str(spec.run_dir) if spec.run_dir else None,
                "model": spec.model, "adapter": spec.adapter, "dtype": spec.dtype, "loss": self.loss,
                "perplexity": self.perplexity, "tokens": self.tokens, "row_losses": self.row_losses,
                "generations": self.generations}


@dataclass
class EvalResult:
    heldout: HeldOut
    scores: list[ModelScore]  # base first when evaluated
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    benchmarks: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> ModelScore | None:
        return next((s for s in self.scores if s.spec.name == BASE and s.spec.run_dir is None), None)

    @property
    def runs(self) -> list[ModelScore]:
        return [s for s in self.scores if s.spec.run_dir is not None]

    def to_json(self) -> dict[str, Any]:
        held = self.heldout
        return {
            "kind": "qwenrecipes-eval", "version": SCHEMA_VERSION, "created": time.time(),
            "heldout": {"file": str(held.source), "sha256": held.digest, "rows": len(held.rows),
                        "tokens": sum(r.trained_tokens for r in held.rows), "train_on": held.train_on,
                        "chat_template": held.chat_template,
                        "previews": [r.preview for r in held.rows]},
            "base": BASE if self.base else None,
            "models": [s.to_json() for s in self.scores],
            "benchmarks": self.benchmarks,
            "environment": self.environment,
        }


def _specs(run_dirs: Sequence[Path], base: bool) -> list[ModelSpec]:
    names = unique_names(list(run_dirs))
    pairs = [run_model(path, name) for path, name in zip(run_dirs, names, strict=True)]
    specs = [model for model, _ in pairs]
    if base:
        bases = {(b.model, b.dtype) for _, b in pairs}
        if len(bases) > 1:
            listed = ", ".join(f"{m} ({d})" for m, d in sorted(bases))
            raise QwenRecipesError(f"the runs were trained from different bases or dtypes ({listed}): evaluate "
                                   "them separately, or pass --no-base")
        specs.insert(0, pairs[0][1])
    return specs


def shared_heldout(run_dirs: Sequence[Path]) -> HeldOut:
    """The held-out split every run shares; runs held out on different data are refused."""
    if not run_dirs:
        raise QwenRecipesError("eval needs at least one run dir")
    held = [load_heldout(Path(p)) for p in run_dirs]
    for path, other in zip(run_dirs[1:], held[1:], strict=True):
        if other.digest != held[0].digest:
            raise QwenRecipesError(f"{path} was held out on different data than {run_dirs[0]} ({other.source} "
                                   f"differs from {held[0].source}): compare runs of the same recipe")
    return held[0]


def default_out_dir(run_dirs: Sequence[Path], heldout: HeldOut) -> Path:
    """One run: its run dir. Several: eval-<recipe name> next to them."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    parents = {Path(p).resolve().parent for p in run_dirs}
    parent = parents.pop() if len(parents) == 1 else Path.cwd()
    from qwenrecipes.evaluate.heldout import read_resolved

    name = read_resolved(Path(run_dirs[0]))["recipe"].get("name") or "runs"
    return parent / f"eval-{name}"


def _row_losses(rows: list[dict[str, Any]]) -> tuple[float, int, list[float | None]]:
    total = sum(float(r["loss_sum"]) for r in rows)
    tokens = sum(int(r["tokens"]) for r in rows)
    per_row = [float(r["loss_sum"]) / int(r["tokens"]) if int(r["tokens"]) else None for r in rows]
    return (total / tokens if tokens else float("nan")), tokens, per_row


def evaluate_runs(run_dirs: Sequence[str | Path], *, base: bool = True, samples: int = DEFAULT_SAMPLES,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 4, out: Path | None = None,
                  progress: ProgressCallback | None = None, write: bool = True) -> EvalResult:
    """Score the base (with ``base``) and each run's model on the held-out split; write eval.json, report.md
    and eval.png into ``out`` (and eval.json into each run dir, where compare and bench read it)."""
    paths = [Path(p) for p in run_dirs]
    heldout = shared_heldout(paths)
    specs = _specs(paths, base)
    chosen = heldout.rows[:max(0, samples)]
    prompts = [generation_prompt(r.messages) for r in chosen]
    request = {"models": [s.request() for s in specs], "batch_size": batch_size, "max_new_tokens": max_new_tokens,
               "rows": [{"input_ids": r.input_ids, "labels": r.labels} for r in heldout.rows],
               "prompts": [prompt_ids(text) for text, _ in prompts]}
    data = run_eval_script("score", request, what="eval", progress=progress)
    scores = []
    for spec in specs:
        entry = data["models"][spec.name]
        loss, tokens, per_row = _row_losses(entry["rows"])
        generations = []
        for row, (text, reference), gen in zip(chosen, prompts, entry["generations"], strict=True):
            full = decode(gen["tokens"])
            reasoning, answer = split_think(full)
            generations.append({"row": row.index, "prompt": text, "reference": reference, "text": full,
                                "reasoning": reasoning, "answer": answer, "stopped_on_eos": gen["stopped_on_eos"]})
        scores.append(ModelScore(spec, loss, tokens, per_row, generations))
    result = EvalResult(heldout, scores, Path(out) if out else default_out_dir(paths, heldout),
                        environment={k: data.get(k) for k in ("torch", "transformers", "device")})
    if write:
        write_result(result)
    return result


def write_result(result: EvalResult) -> list[Path]:
    """eval.json + report.md + eval.png into the out dir; eval.json also into each run dir."""
    from qwenrecipes.evaluate.report import plot_rows, report_markdown
    from qwenrecipes.run.rundir import write_json_atomic

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    document = result.to_json()
    files = [out / EVAL_JSON, out / REPORT_MD]
    write_json_atomic(out / EVAL_JSON, document)
    for score in result.runs:
        assert score.spec.run_dir is not None
        if score.spec.run_dir.resolve() != out.resolve():
            write_json_atomic(score.spec.run_dir / EVAL_JSON, document)
            files.append(score.spec.run_dir / EVAL_JSON)
    png = plot_rows(result, out / EVAL_PNG)
    if png:
        files.append(png)
    (out / REPORT_MD).write_text(report_markdown(result, png), encoding="utf-8")
    result.files = files
    return files
