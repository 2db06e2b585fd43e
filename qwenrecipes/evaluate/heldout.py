"""The held-out split a run was given (``data/eval.jsonl`` in its run dir, written by qwenrecipes with the think
rule already applied), turned into the exact token ids and loss mask `check` proves every engine trains on.

Scoring and generation prompts are built here, in qwenrecipes' own env, and passed to the model as token ids:
every engine's adapter and the base model are scored on identical tokens and an identical mask.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qwenrecipes.data.prepare import chatml_text
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.recipe.plan import EVAL_FILE

RESOLVED_RECIPE = "recipe.resolved.yaml"
IM_START = "<|im_start|>"


@dataclass(frozen=True)
class HeldOutRow:
    """One held-out conversation: what it is, and its tokens as trained (labels -100 where masked)."""

    index: int  # 1-based row of data/eval.jsonl
    messages: list[dict[str, str]]
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        # The first token is never predicted (nothing precedes it), so it never counts.
        return sum(1 for label in self.labels[1:] if label != -100)

    @property
    def preview(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        text = (users[-1] if users else self.messages[0]["content"]).replace("\n", " ")
        return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class HeldOut:
    """The held-out split of one recipe, with the recipe facts scoring depends on."""

    source: Path  # the data/eval.jsonl it came from
    digest: str  # sha256 of that file: every evaluated run must share it
    chat_template: str
    train_on: str
    rows: list[HeldOutRow]


def read_resolved(run_dir: Path) -> dict[str, Any]:
    """The run's recipe.resolved.yaml as {"recipe": ..., "resolved": ...}."""
    path = run_dir / RESOLVED_RECIPE
    if not path.is_file():
        raise QwenRecipesError(f"{run_dir} is not a qwenrecipes run dir (no {RESOLVED_RECIPE})")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise QwenRecipesError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("recipe"), dict):
        raise QwenRecipesError(f"{path}: no 'recipe' mapping (was it written by qwenrecipes?)")
    return document


def _rows(path: Path) -> list[list[dict[str, str]]]:
    rows: list[list[dict[str, str]]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            raise QwenRecipesError(f"{path}, row {number}: not a qwenrecipes 'messages' row ({exc})") from None
        if not isinstance(messages, list) or not any(m.get("role") == "assistant" for m in messages):
            raise QwenRecipesError(f"{path}, row {number}, field messages: no assistant turn to score")
        rows.append(messages)
    return rows


def load_heldout(run_dir: Path) -> HeldOut:
    """data/eval.jsonl of the run dir, tokenized with the reference tokenizer and the canonical mask."""
    from qwenrecipes.check.tokens import reference_tokens

    document = read_resolved(run_dir)
    recipe = document["recipe"]
    path = run_dir / EVAL_FILE
    if not path.is_file():
        raise QwenRecipesError(
            f"{run_dir}: no held-out split ({EVAL_FILE} is missing): set data.val_fraction (e.g. 0.1) or "
            f"data.eval in the recipe and run it again")
    raw = path.read_bytes()
    data = recipe.get("data") or {}
    train_on = str(data.get("train_on") or "assistant")
    rows = []
    for index, messages in enumerate(_rows(path), start=1):
        tokens = reference_tokens(messages, train_on)
        rows.append(HeldOutRow(index, messages, tokens.input_ids, tokens.labels))
    if not rows:
        raise QwenRecipesError(f"{path}: the held-out split is empty")
    return HeldOut(path, hashlib.sha256(raw).hexdigest(),
                   str((recipe.get("model") or {}).get("chat_template") or "qwen3"), train_on, rows)


def generation_prompt(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt text, reference answer) for a held-out conversation: every turn before its last assistant turn
    rendered as trained (chatml_text: the recipe's think rule is already in the text), then the assistant
    header. For a single-turn prompt this is what the Qwen3 template renders with a generation prompt; for
    qwen3 recipes the model then writes its own think block, as it was trained to."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return chatml_text(messages[:last]) + f"{IM_START}assistant\n", messages[last]["content"]


def prompt_ids(text: str) -> list[int]:
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    return list(load_qwen3_tokenizer().encode(text, add_special_tokens=False).ids)


def decode(ids: list[int]) -> str:
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    return str(load_qwen3_tokenizer().decode(ids, skip_special_tokens=True))


def split_think(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a generation: Qwen3 writes <think>…</think> before the answer."""
    if "</think>" not in text:
        return None, text.strip()
    head, _, answer = text.rpartition("</think>")
    return head.replace("<think>", "").strip(), answer.strip()
