"""The row ledger: every input row ends up trained, evaluated, or reported here by file, row and reason.

make_plan() calls prepare_local() for local datasets. Rows that are wrong (not a conversation, ambiguous
reasoning, repeated keys, ...) are never dropped: they stop the plan with an exit-2 error naming file,
row and field (prepare.canonical_conversations). Rows that are right but cannot be trained the same way
on every engine (longer than max_seq_length: each engine would truncate differently) are dropped, and
each one is listed in ``RowReport``s, which validate prints and plan.json keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenrecipes.data import prepare
from qwenrecipes.recipe.load import DatasetRef

MAX_REPORTED_IN_WARNINGS = 20  # validate/render print this many dropped rows; plan.json lists them all


@dataclass(frozen=True)
class RowReport:
    """One input row that is neither trained nor evaluated, and why."""

    file: str
    row: int
    split: str  # "train" | "eval": which dataset the row came from
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "split": self.split, "reason": self.reason}


@dataclass(frozen=True)
class PreparedData:
    train: list[list[dict[str, str]]]
    eval: list[list[dict[str, str]]] | None
    dropped: list[RowReport]
    conversations: list[prepare.Conversation]  # the training file's rows (for the reasoning rules)


def _prepared(conversations: list[prepare.Conversation], ref: DatasetRef, split: str, chat_template: str,
              max_tokens: int) -> tuple[list[list[dict[str, str]]], list[RowReport]]:
    rows = [prepare.apply_think_rule(c, chat_template) for c in conversations]
    too_long = prepare.overlong_rows(rows, max_tokens)
    reports = [RowReport(str(ref.local_path), conversations[i].row, split,
                         f"{tokens} tokens > max_seq_length {max_tokens} (dropped: no engine truncates)")
               for i, tokens in sorted(too_long.items())]
    return [r for i, r in enumerate(rows) if i not in too_long], reports


def prepare_local(train: DatasetRef, evaluation: DatasetRef | None, *, file: str, chat_template: str,
                  max_tokens: int, val_fraction: float, seed: int) -> PreparedData:
    """Read, check and prepare the local datasets (evaluation: a local eval file, or None)."""
    conversations = prepare.canonical_conversations(train, file)
    held = prepare.canonical_conversations(evaluation, file) if evaluation is not None else None
    train_rows, dropped = _prepared(conversations, train, "train", chat_template, max_tokens)
    if held is not None:
        # The same rule as training: an over-long eval row would be truncated differently by each engine.
        eval_rows, eval_dropped = _prepared(held, evaluation, "eval", chat_template, max_tokens)  # type: ignore[arg-type]
        return PreparedData(train_rows, eval_rows, dropped + eval_dropped, conversations)
    train_rows, eval_rows = prepare.split_rows(train_rows, val_fraction=val_fraction, seed=seed)
    return PreparedData(train_rows, eval_rows, dropped, conversations)


def dropped_warnings(dropped: list[RowReport], max_tokens: int) -> list[str]:
    """The warning lines validate and render print: every dropped row by file and row, up to a cap."""
    if not dropped:
        return []
    lines = [f"{len(dropped)} rows are longer than max_seq_length={max_tokens} tokens and were dropped "
             "(no engine truncates); plan.json lists them as dropped_rows"]
    lines += [f"dropped {report}" for report in dropped[:MAX_REPORTED_IN_WARNINGS]]
    if len(dropped) > MAX_REPORTED_IN_WARNINGS:
        lines.append(f"... and {len(dropped) - MAX_REPORTED_IN_WARNINGS} more dropped rows (see plan.json)")
    return lines
