"""Quality columns for `compare` and `bench`: a run's held-out loss and perplexity from the eval.json that
`qwenrecipes eval` wrote into its run dir (read here, in the run layer,
so compare needs nothing from qwenrecipes.evaluate), and the promise check: the same recipe on different engines
reaches the same held-out loss (within ``PARITY_TOLERANCE``, relative), on the same held-out data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVAL_JSON = "eval.json"  # written by `qwenrecipes eval` (qwenrecipes.evaluate) into each run dir it scored
PARITY_TOLERANCE = 0.03  # tiny model, same recipe, different engines: held-out losses within 3%


@dataclass(frozen=True)
class Quality:
    """A run's held-out numbers (and its base's, when the evaluation had the base)."""

    loss: float
    perplexity: float
    tokens: int
    heldout_sha256: str
    base_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"heldout_loss": self.loss, "perplexity": self.perplexity, "heldout_tokens": self.tokens,
                "heldout_sha256": self.heldout_sha256, "base_loss": self.base_loss}


def _same_dir(a: str | None, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def read_quality(run_dir: Path) -> Quality | None:
    """The run's entry of RUN_DIR/eval.json, or None when it was never evaluated (or the file is unreadable)."""
    path = Path(run_dir) / EVAL_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("kind") != "qwenrecipes-eval":
        return None
    models = [m for m in document.get("models", []) if isinstance(m, dict)]
    entry = next((m for m in models if _same_dir(m.get("run_dir"), Path(run_dir))), None)
    if entry is None or not isinstance(entry.get("loss"), (int, float)):
        return None
    base = next((m for m in models if m.get("name") == document.get("base") and not m.get("run_dir")), None)
    return Quality(float(entry["loss"]), float(entry["perplexity"]), int(entry.get("tokens") or 0),
                   str((document.get("heldout") or {}).get("sha256") or ""),
                   float(base["loss"]) if base and isinstance(base.get("loss"), (int, float)) else None)


def parity_problems(named: Sequence[tuple[str, Quality | None]], tolerance: float = PARITY_TOLERANCE) -> list[str]:
    """Why the runs' held-out losses break the same-recipe-same-result promise (empty when they keep it).
    Runs held out on different data are reported as not comparable rather than compared."""
    present = [(name, q) for name, q in named if q is not None]
    if len(present) < 2:
        return []
    digests = {q.heldout_sha256 for _, q in present}
    if len(digests) > 1:
        return ["held-out losses are not comparable: the runs were evaluated on different held-out data"]
    losses = [q.loss for _, q in present]
    spread = (max(losses) - min(losses)) / min(abs(v) for v in losses)
    if spread <= tolerance:
        return []
    best = min(present, key=lambda p: p[1].loss)
    worst = max(present, key=lambda p: p[1].loss)
    return [f"held-out loss differs by {spread:.1%} (> {tolerance:.0%}): {worst[0]} {worst[1].loss:.4f} vs "
            f"{best[0]} {best[1].loss:.4f}; the same recipe should reach the same held-out loss on every engine"]
