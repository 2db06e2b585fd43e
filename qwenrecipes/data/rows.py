"""The row ledger: every input row ends up trained, evaluated, or reported here by file, row and reason.

make_plan() calls prepare_local() for local datasets. Rows that are wrong (not a conversation, ambiguous
reasoning, repeated keys, literal special-token text under ``special_tokens_in_content: refuse``, ...) are never
dropped: they stop the plan with an exit-2 error naming file, row and field (prepare.canonical_conversations).
Rows that are right but cannot be trained the same way on every engine (longer than max_seq_length: each engine
would truncate differently) are dropped, and each one is listed in ``RowReport``s, which validate prints and
plan.json keeps. Rows that become several training rows (``qwen3_official``: one extra row per earlier assistant
turn whose reasoning the template drops) are listed as ``SplitReport``s, and rows kept with literal special-token
text (``special_tokens_in_content: keep``) as ``RowReport``s of kind ``special_tokens``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenrecipes.data import prepare, render_text
from qwenrecipes.data.special_tokens import special_token_fields
from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.load import DatasetRef

MAX_REPORTED_IN_WARNINGS = 20  # validate/render print this many reported rows; plan.json lists them all
Row = list[dict[str, Any]]


@dataclass(frozen=True)
class RowReport:
    """One input row that is neither trained nor evaluated (or, kind special_tokens, kept with a note), and why."""

    file: str  # as the recipe names it (data.train.path / data.eval.path): rendered files stay machine-independent
    row: int
    split: str  # "train" | "eval": which dataset the row came from
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "split": self.split, "reason": self.reason}


@dataclass(frozen=True)
class SplitReport:
    """One input row trained as several rows (qwen3_official: earlier turns' reasoning kept), and how."""

    file: str
    row: int
    split: str
    rows: int  # training rows made from it
    turns: list[int]  # 1-based turn numbers of the assistant turns that got a row of their own

    def __str__(self) -> str:
        turns = ", ".join(str(t) for t in self.turns)
        return (f"{self.file}: row {self.row}: split into {self.rows} rows (assistant turn(s) {turns} carry reasoning "
                "the official template drops: each is trained in a row that ends with it)")

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "split": self.split, "rows": self.rows, "turns": self.turns}


@dataclass(frozen=True)
class PreparedData:
    train: list[Row]
    eval: list[Row] | None
    dropped: list[RowReport]
    conversations: list[prepare.Conversation]  # the training file's rows (for the reasoning rules)
    split: list[SplitReport]
    special: list[RowReport]  # rows kept with literal special-token text (special_tokens_in_content: keep)


def _special(conversations: list[prepare.Conversation], ref: DatasetRef, split: str, chat_template: str,
             policy: str) -> list[RowReport]:
    """Rows whose own text holds special-token text: refused (RecipeError naming each), or reported."""
    found = [(c, fields) for c in conversations
             if (fields := special_token_fields(c.messages, c.tools, chat_template))]
    if not found:
        return []
    if policy == "refuse":
        problems = [Problem(str(ref.local_path), f"row {c.row}",
                            f"{fields[0]}: literal special-token text, which the tokenizer reads as the token itself "
                            "(set data.special_tokens_in_content: keep to train it so, or fix the text)")
                    for c, fields in found]
        shown = problems[:prepare.MAX_ROWS_IN_MESSAGES]
        if len(problems) > len(shown):
            shown.append(Problem(str(ref.local_path), "", f"... and {len(problems) - len(shown)} more rows with "
                                                          "special-token text"))
        raise RecipeError(shown)
    return [RowReport(ref.path, c.row, split, "; ".join(fields) + " (kept: read as the tokens)")
            for c, fields in found]


def _prepared(conversations: list[prepare.Conversation], ref: DatasetRef, split: str, chat_template: str,
              max_tokens: int) -> tuple[list[list[Row]], list[RowReport], list[SplitReport]]:
    """Per input row, its training rows (over-long ones dropped and reported); input rows with none left are
    left out of the groups."""
    groups = [render_text.conversation_rows(c.messages, c.tools, chat_template) for c in conversations]
    flat = [(g, k) for g, rows in enumerate(groups) for k in range(len(rows))]
    too_long = prepare.overlong_rows([groups[g][k] for g, k in flat], max_tokens)
    position = {pair: index for index, pair in enumerate(flat)}
    reports, kept, splits = [], [], []
    for g, rows in enumerate(groups):
        conversation = conversations[g]
        if len(rows) > 1:
            turns = [i + 1 for i in render_text.dropped_reasoning_turns(conversation.messages)]
            splits.append(SplitReport(ref.path, conversation.row, split, len(rows), turns))
        keep = []
        for k, row in enumerate(rows):
            tokens = too_long.get(position[(g, k)])
            if tokens is None:
                keep.append(row)
                continue
            part = f"row part {k + 1} of {len(rows)}: " if len(rows) > 1 else ""
            reports.append(RowReport(ref.path, conversation.row, split,
                                     f"{part}{tokens} tokens > max_seq_length {max_tokens} (dropped: no engine "
                                     "truncates)"))
        if keep:
            kept.append(keep)
    return kept, reports, splits


def prepare_local(train: DatasetRef, evaluation: DatasetRef | None, *, file: str, chat_template: str,
                  max_tokens: int, val_fraction: float, seed: int,
                  special_tokens: str = "refuse") -> PreparedData:
    """Read, check and prepare the local datasets (evaluation: a local eval file, or None)."""
    conversations = prepare.canonical_conversations(train, file)
    held = prepare.canonical_conversations(evaluation, file) if evaluation is not None else None
    special = _special(conversations, train, "train", chat_template, special_tokens)
    if held is not None:
        special += _special(held, evaluation, "eval", chat_template, special_tokens)  # type: ignore[arg-type]
    train_groups, dropped, splits = _prepared(conversations, train, "train", chat_template, max_tokens)
    if held is not None:
        # The same rule as training: an over-long eval row would be truncated differently by each engine.
        eval_groups, eval_dropped, eval_splits = _prepared(held, evaluation, "eval", chat_template,  # type: ignore[arg-type]
                                                           max_tokens)
        return PreparedData(_flat(train_groups), _flat(eval_groups), dropped + eval_dropped, conversations,
                            splits + eval_splits, special)
    # Split by input row, so the rows made from one conversation never land on both sides.
    train_part, eval_part = prepare.split_rows(train_groups, val_fraction=val_fraction, seed=seed)
    return PreparedData(_flat(train_part), _flat(eval_part), dropped, conversations, splits, special)


def _flat(groups: list[list[Row]]) -> list[Row]:
    return [row for group in groups for row in group]


def dropped_warnings(dropped: list[RowReport], max_tokens: int) -> list[str]:
    """The warning lines validate and render print: every dropped row by file and row, up to a cap."""
    if not dropped:
        return []
    lines = [f"{len(dropped)} rows are longer than max_seq_length={max_tokens} tokens and were dropped "
             "(no engine truncates); plan.json lists them as dropped_rows"]
    return lines + _capped([f"dropped {report}" for report in dropped], "dropped rows")


def split_warnings(splits: list[SplitReport], special: list[RowReport]) -> list[str]:
    """validate's lines for rows split by the official template's rule and rows kept with special-token text."""
    lines: list[str] = []
    if splits:
        made = sum(s.rows for s in splits)
        shown = ", ".join(f"{s.file}: row {s.row}" if k == 0 or s.file != splits[k - 1].file else f"row {s.row}"
                          for k, s in enumerate(splits[:MAX_REPORTED_IN_WARNINGS]))
        more = f" and {len(splits) - MAX_REPORTED_IN_WARNINGS} more" if len(splits) > MAX_REPORTED_IN_WARNINGS else ""
        lines.append(f"{len(splits)} conversations carry reasoning in earlier assistant turns, which the official "
                     f"Qwen3 template drops: they were split into {made} rows (each ends with one such turn, keeps its "
                     "reasoning and trains only it; the whole conversation trains the other turns), so every "
                     f"assistant turn is trained exactly once ({shown}{more}); plan.json lists them as split_rows")
    if special:
        lines.append(f"{len(special)} rows hold literal special-token text, kept as the tokenizer reads it "
                     "(data.special_tokens_in_content: keep); plan.json lists them as special_token_rows")
        lines += _capped([f"special tokens in {r}" for r in special], "rows with special tokens")
    return lines


def _capped(lines: list[str], what: str) -> list[str]:
    if len(lines) <= MAX_REPORTED_IN_WARNINGS:
        return lines
    return [*lines[:MAX_REPORTED_IN_WARNINGS],
            f"... and {len(lines) - MAX_REPORTED_IN_WARNINGS} more {what} (see plan.json)"]
