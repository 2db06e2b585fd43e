"""Read training data and turn it into one canonical form that every engine receives.

qwenrecipes owns the data path so the engines have nothing left to decide:
- every format (messages / sharegpt / alpaca, tools included) becomes a canonical conversation (data/turns.py);
- the recipe's ``chat_template`` rule (think blocks, tools, the official template) is applied here, once, in the
  text itself (data/render_text.py), so every engine can use the same plain ChatML template;
- rows longer than ``max_seq_length`` are dropped here, so no engine truncates (they all truncate
  differently);
- the held-out split and the row order are decided here, with the recipe's seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.data import render_text
from qwenrecipes.data.turns import check_order, messages_from_row
from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.load import DatasetRef

MAX_ROWS_IN_MESSAGES = 5  # how many bad rows one problem list names before summarizing
DUPLICATE_KEYS = "\x00duplicate keys"  # marks a JSON object that repeated a key (json keeps the last silently)


@dataclass(frozen=True)
class Conversation:
    """One canonical row: messages of {role, content[, reasoning_content][, tool_calls]} (roles system, user,
    assistant, tool), the row's tool definitions, and where it came from (data/turns.py reads them)."""

    messages: list[dict[str, Any]]
    row: int = 0  # 1-based row number in its file (0: not read from a file)
    tools: list[Any] = field(default_factory=list)

    @property
    def has_reasoning(self) -> bool:
        return any(m.get("reasoning_content") or "<think>" in m.get("content", "")
                   for m in self.messages if m["role"] == "assistant")


def row_label(number: int, line: int | None = None) -> str:
    """How problems and reports name a row: its number in the file, plus its line when blank lines make
    the two differ (JSONL)."""
    return f"row {number}" if line in (None, number) else f"row {number} (line {line})"


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: keep every key, and mark objects that repeat one (the row is then refused)."""
    out: dict[str, Any] = {}
    repeated = []
    for key, value in pairs:
        if key in out:
            repeated.append(key)
        out[key] = value
    if repeated:
        out[DUPLICATE_KEYS] = repeated
    return out


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_object_pairs)


def read_rows(ref: DatasetRef, file_label: str) -> list[dict[str, Any]]:
    """Rows of a local JSONL / JSON / Parquet file."""
    return [row for _, row in read_numbered_rows(ref, file_label)]


def read_numbered_rows(ref: DatasetRef, file_label: str) -> list[tuple[str, Any]]:
    """(label, row) for every row of a local JSONL / JSON / Parquet file; labels as row_label() words them."""
    path = ref.local_path
    assert path is not None, "hub datasets are not read locally"
    if not path.exists():
        shown = ref.path if str(path) == ref.path else f"{ref.path} ({path})"  # a dangling symlink: both
        raise RecipeError([Problem(file_label, "data", f"data file not found: {shown}")])
    if not path.is_file():  # a FIFO or /dev/zero would be read forever
        raise RecipeError([Problem(file_label, "data", f"data path is not a regular file: {path}")])
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                message = f"reading {path} (Parquet) needs pyarrow: pip install pyarrow"
                raise RecipeError([Problem(file_label, "data", message)]) from None
            try:
                table = pq.read_table(path).to_pylist()
            except Exception as exc:  # pyarrow raises its own types (ArrowInvalid, OSError) for a damaged file
                raise RecipeError([Problem(str(path), "", f"not a readable Parquet file ({exc})")]) from None
            return [(row_label(n), row) for n, row in enumerate(table, start=1)]
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first row.
        text = path.read_bytes().decode("utf-8-sig")
        if suffix == ".json":
            document = _loads(text)
            if isinstance(document, dict) and isinstance(document.get("data"), list):
                document = document["data"]
            if not isinstance(document, list):
                raise RecipeError([Problem(str(path), "", "a .json data file holds a list of rows")])
            return [(row_label(n), row) for n, row in enumerate(document, start=1)]
        rows: list[tuple[str, Any]] = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028, NEL and other characters that
        # splitlines() also treats as line ends. A CRLF line's "\r" is JSON whitespace.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                label = row_label(len(rows) + 1, number)
                try:
                    rows.append((label, _loads(line)))
                except json.JSONDecodeError as exc:
                    raise RecipeError([Problem(str(path), f"line {number}", f"invalid JSON: {exc.msg}")]) from None
                except RecursionError:
                    raise RecipeError([Problem(str(path), f"line {number}", "JSON nested too deeply")]) from None
        return rows
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem(str(path), "", f"data file is not UTF-8 text (byte {exc.start})")]) from None
    except json.JSONDecodeError as exc:
        raise RecipeError([Problem(str(path), "", f"invalid JSON: {exc.msg}")]) from None
    except RecursionError:
        raise RecipeError([Problem(str(path), "", "JSON nested too deeply")]) from None


def _field(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _scan(value: Any, parts: list[Any]) -> None:
    """Refuse what no engine file can hold or what JSON silently resolved: lone surrogates (valid as JSON
    escapes, not encodable as UTF-8) and repeated keys (json keeps the last one). Iterative: rows may nest
    deeply without recursing."""
    stack: list[tuple[Any, list[Any]]] = [(value, parts)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(item[exc.start])
                raise ValueError(f"{_field(where) or 'row'}: holds a lone surrogate (U+{code:04X}), "
                                 "which is not text and cannot be written as UTF-8") from None
        elif isinstance(item, dict):
            if DUPLICATE_KEYS in item:
                keys = ", ".join(repr(k) for k in dict.fromkeys(item[DUPLICATE_KEYS]))
                raise ValueError(f"{_field(where) or 'row'}: repeats the key {keys} (JSON keeps only the last "
                                 "value; give it once)")
            for key, child in item.items():
                if isinstance(key, str):
                    stack.append((key, [*where, "(key)"]))
                stack.append((child, [*where, key]))
        elif isinstance(item, list):
            stack.extend((child, [*where, index]) for index, child in enumerate(item))


def canonical_conversations(ref: DatasetRef, file_label: str) -> list[Conversation]:
    """Read and convert a local dataset; every bad row is reported (up to a few, then a count)."""
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for index, (label, row) in enumerate(read_numbered_rows(ref, file_label), start=1):
        try:
            if not isinstance(row, dict):
                raise ValueError("row is not an object")
            _scan(row, [])
            messages, tools = messages_from_row(row, ref)
            check_order(messages)
            conversations.append(Conversation(messages, index, tools))
        except ValueError as exc:
            problems.append(Problem(str(ref.local_path), label, str(exc)))
    if problems:
        shown = problems[:MAX_ROWS_IN_MESSAGES]
        if len(problems) > len(shown):
            shown.append(Problem(str(ref.local_path), "", f"... and {len(problems) - len(shown)} more bad rows"))
        raise RecipeError(shown)
    if not conversations:
        raise RecipeError([Problem(str(ref.local_path), "", "dataset has no rows")])
    return conversations


def apply_think_rule(conversation: Conversation, chat_template: str) -> list[dict[str, Any]]:
    """The conversation as one prepared row under `chat_template` (data/render_text.py). Under
    ``qwen3_official`` this is the whole conversation's row; render_text.conversation_rows gives every row."""
    return render_text.conversation_rows(conversation.messages, conversation.tools, chat_template)[-1]


def chatml_text(messages: Iterable[dict[str, Any]]) -> str:
    """The plain ChatML rendering every engine is pinned to (no default system prompt)."""
    return render_text.chatml_text(list(messages))


def token_lengths(texts: list[str]) -> list[int]:
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer()
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def overlong_rows(rows: list[list[dict[str, str]]], max_tokens: int) -> dict[int, int]:
    """{index: token count} of the rows longer than max_tokens. Tokenize only rows that could be too long:
    a token covers at least one byte except the ChatML specials, so a row of at most max_tokens bytes fits."""
    texts = [chatml_text(r) for r in rows]
    suspects = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > max_tokens]
    if not suspects:
        return {}
    lengths = token_lengths([texts[i] for i in suspects])
    return {i: n for i, n in zip(suspects, lengths, strict=True) if n > max_tokens}


def drop_overlong(rows: list[list[dict[str, str]]], max_tokens: int) -> tuple[list[list[dict[str, str]]], int]:
    """Rows longer than max_tokens dropped, and how many."""
    too_long = overlong_rows(rows, max_tokens)
    return [r for i, r in enumerate(rows) if i not in too_long], len(too_long)


def split_rows(rows: list[Any], *, val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded held-out split; both parts keep the file's order."""
    n_val = round(len(rows) * val_fraction)
    if not n_val:
        return list(rows), []
    held_out = set(random.Random(seed).sample(range(len(rows)), n_val))
    return ([r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out])


def epoch_stream(rows: list[Any], *, copies: int, seed: int, shuffle: bool) -> list[Any]:
    """The exact row order training consumes: `copies` passes, each shuffled with its own seed.

    Engines are told to read the file sequentially, so the order is qwenrecipes' and the same for all of
    them (each engine's sampler would otherwise shuffle with its own RNG state)."""
    stream: list[Any] = []
    for epoch in range(copies):
        order = list(range(len(rows)))
        if shuffle:
            random.Random(seed + epoch).shuffle(order)
        stream.extend(rows[i] for i in order)
    return stream


def write_jsonl(path: Path, rows: list[list[dict[str, str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for messages in rows:
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
