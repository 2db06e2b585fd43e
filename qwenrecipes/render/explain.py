"""Effective settings per engine, read back from the rendered files, with every divergence flagged."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from qwenrecipes.recipe.concepts import CONCEPTS
from qwenrecipes.recipe.plan import Plan
from qwenrecipes.render.folder import get_engine, render_plan
from qwenrecipes.render.resolve import resolve_for_engine


@dataclass(frozen=True)
class ExplainRow:
    concept: str
    label: str
    values: dict[str, Any]  # engine -> effective value
    why: str  # the engines' own notes on this concept; empty when all agree

    @property
    def diverges(self) -> bool:
        return len({json.dumps(v, sort_keys=True, default=str) for v in self.values.values()}) > 1


def explain_plan(plan: Plan, engines: list[str]) -> list[ExplainRow]:
    effective: dict[str, dict[str, Any]] = {}
    notes: dict[str, dict[str, str]] = {}
    for name in engines:
        engine = get_engine(name)
        resolved = resolve_for_engine(plan, name)
        effective[name] = engine.effective(render_plan(resolved, name).files)
        notes[name] = dict(engine.notes)
        # The memory decisions (checkpointing, Liger, micro-batch) differ per engine by design: say why.
        for concept, reason in ((resolved.memory or {}).get("why") or {}).items():
            notes[name][concept] = f"{notes[name][concept]}; {reason}" if concept in notes[name] else reason
    rows = []
    for concept, label in CONCEPTS.items():
        values = {name: effective[name].get(concept) for name in engines}
        row = ExplainRow(concept, label, values, "")
        if row.diverges:
            # Explain the odd ones out: notes of engines whose value differs from the most common one.
            encoded = {name: json.dumps(v, sort_keys=True, default=str) for name, v in values.items()}
            common = Counter(encoded.values()).most_common(1)[0][0]
            odd = [name for name in engines if encoded[name] != common] or engines
            why = "; ".join(f"{name}: {notes[name][concept]}" for name in odd if concept in notes[name])
            row = ExplainRow(concept, label, values, why or "engines differ (no note recorded)")
        rows.append(row)
    return rows


def explain_json(rows: list[ExplainRow]) -> list[dict[str, Any]]:
    return [{"concept": r.concept, "label": r.label, "values": r.values, "diverges": r.diverges, "why": r.why}
            for r in rows]
