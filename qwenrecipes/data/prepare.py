"""Read training data and turn it into one canonical form that every engine receives.

qwenrecipes owns the data path so the engines have nothing left to decide:
- every format (messages / sharegpt / alpaca) becomes ChatML ``messages`` rows;
- the think-block rule of the recipe's ``chat_template`` is applied here, once, in the text itself
  (``qwen3``: each assistant turn is ``<think>\\n{reasoning}\\n</think>\\n\\n{content}``;
  ``qwen3_nothink``: no think block), so every engine can use the same plain ChatML template;
- rows longer than ``max_seq_length`` are dropped here, so no engine truncates (they all truncate
  differently);
- the held-out split and the row order are decided here, with the recipe's seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe.load import DatasetRef

THINK_RE = re.compile(r"<think>(.*?)</think>\s*", re.DOTALL)
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant",
                "system": "system", "bot": "assistant", "model": "assistant"}
MAX_ROWS_IN_MESSAGES = 5  # how many bad rows one problem list names before summarizing


@dataclass(frozen=True)
class Conversation:
    """One canonical row: messages of {role, content[, reasoning_content]}."""

    messages: list[dict[str, str]]

    @property
    def has_reasoning(self) -> bool:
        return any(m.get("reasoning_content") or "<think>" in m.get("content", "")
                   for m in self.messages if m["role"] == "assistant")


def read_rows(ref: DatasetRef, file_label: str) -> list[dict[str, Any]]:
    """Rows of a local JSONL / JSON / Parquet file."""
    path = ref.local_path
    assert path is not None, "hub datasets are not read locally"
    if not path.exists():
        raise RecipeError([Problem(file_label, "data", f"data file not found: {path}")])
    if not path.is_file():  # a FIFO or /dev/zero would be read forever
        raise RecipeError([Problem(file_label, "data", f"data path is not a regular file: {path}")])
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                message = "reading Parquet needs pyarrow: pip install pyarrow"
                raise RecipeError([Problem(file_label, "data", message)]) from None
            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            document = json.loads(text)
            if isinstance(document, dict) and isinstance(document.get("data"), list):
                document = document["data"]
            if not isinstance(document, list):
                raise RecipeError([Problem(str(path), "", "a .json data file holds a list of rows")])
            return document
        rows = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028, NEL and other characters that
        # splitlines() also treats as line ends.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
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


def _messages_from_row(row: dict[str, Any], ref: DatasetRef) -> list[dict[str, str]]:
    fields = ref.fields
    if ref.format == "alpaca":
        instruction = row.get(fields.get("instruction", "instruction"))
        extra = row.get(fields.get("input", "input")) or ""
        output = row.get(fields.get("output", "output"))
        system = row.get(fields.get("system", "system"))
        if not isinstance(instruction, str) or not isinstance(output, str):
            raise ValueError("alpaca rows need string 'instruction' and 'output'")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    default_key = "conversations" if ref.format == "sharegpt" else "messages"
    turns = row.get(fields.get("messages", default_key))
    role_key = fields.get("role", "from" if ref.format == "sharegpt" else "role")
    content_key = fields.get("content", "value" if ref.format == "sharegpt" else "content")
    reasoning_key = fields.get("reasoning_content", "reasoning_content")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"missing or empty '{fields.get('messages', default_key)}' list")
    messages: list[dict[str, str]] = []
    system = row.get(fields.get("system", "system"))
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError("each turn is an object")
        role = ROLE_ALIASES.get(str(turn.get(role_key)))
        content = turn.get(content_key)
        if role is None:
            raise ValueError(f"unknown role {turn.get(role_key)!r}")
        if not isinstance(content, str):
            raise ValueError(f"turn content is not a string ({type(content).__name__})")
        message = {"role": role, "content": content}
        reasoning = turn.get(reasoning_key)
        if isinstance(reasoning, str) and reasoning and role == "assistant":
            message["reasoning_content"] = reasoning
        messages.append(message)
    return messages


def _check_order(messages: list[dict[str, str]]) -> None:
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body or body[-1]["role"] != "assistant":
        raise ValueError("a conversation ends with an assistant turn")
    if any(m["role"] == "system" for m in body):
        raise ValueError("a system message is only allowed first")
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"turn {index + 1} is '{message['role']}', expected '{expected}' (roles alternate)")


def canonical_conversations(ref: DatasetRef, file_label: str) -> list[Conversation]:
    """Read and convert a local dataset; every bad row is reported (up to a few, then a count)."""
    rows = read_rows(ref, file_label)
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise ValueError("row is not an object")
            messages = _messages_from_row(row, ref)
            _check_order(messages)
            conversations.append(Conversation(messages))
        except ValueError as exc:
            problems.append(Problem(str(ref.local_path), f"row {index + 1}", str(exc)))
    if problems:
        shown = problems[:MAX_ROWS_IN_MESSAGES]
        if len(problems) > len(shown):
            shown.append(Problem(str(ref.local_path), "", f"... and {len(problems) - len(shown)} more bad rows"))
        raise RecipeError(shown)
    if not conversations:
        raise RecipeError([Problem(str(ref.local_path), "", "dataset has no rows")])
    return conversations


def apply_think_rule(conversation: Conversation, chat_template: str) -> list[dict[str, str]]:
    """The one think-block rule qwenrecipes enforces, written into the text (see module doc)."""
    out = []
    for message in conversation.messages:
        if message["role"] != "assistant":
            out.append({"role": message["role"], "content": message["content"]})
            continue
        content = message["content"]
        inline = THINK_RE.findall(content)
        reasoning = message.get("reasoning_content") or (inline[0] if inline else "")
        answer = THINK_RE.sub("", content).lstrip("\n")
        text = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{answer}" if chat_template == "qwen3" else answer
        out.append({"role": "assistant", "content": text})
    return out


def chatml_text(messages: Iterable[dict[str, str]]) -> str:
    """The plain ChatML rendering every engine is pinned to (no default system prompt)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def token_lengths(texts: list[str]) -> list[int]:
    from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer()
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def drop_overlong(rows: list[list[dict[str, str]]], max_tokens: int) -> tuple[list[list[dict[str, str]]], int]:
    """Drop rows longer than max_tokens. Tokenize only rows that could be too long: a token covers at
    least one byte except the ChatML specials, so a row of at most max_tokens bytes always fits."""
    texts = [chatml_text(r) for r in rows]
    suspects = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > max_tokens]
    if not suspects:
        return rows, 0
    lengths = token_lengths([texts[i] for i in suspects])
    too_long = {i for i, n in zip(suspects, lengths, strict=True) if n > max_tokens}
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
