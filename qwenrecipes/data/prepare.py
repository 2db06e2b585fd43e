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
DUPLICATE_KEYS = "\x00duplicate keys"  # marks a JSON object that repeated a key (json keeps the last silently)


@dataclass(frozen=True)
class Conversation:
    """One canonical row: messages of {role, content[, reasoning_content]}, and where it came from."""

    messages: list[dict[str, str]]
    row: int = 0  # 1-based row number in its file (0: not read from a file)

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


def _optional_text(row: dict[str, Any], key: str, where: str) -> str:
    """A field that may be absent, null or "", else must be one string (a list or a number would be
    written into the prompt as its Python repr, or vanish when falsy)."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where} is {type(value).__name__} {_short(value)}, not a string: give one string "
                         "or leave it out")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_think(content: str, reasoning: str, where: str) -> None:
    """One reasoning block per assistant turn, first in the turn: anything else has no single meaning
    (which block is the reasoning? is the text before it part of the answer?)."""
    opens, closes = content.count("<think>"), content.count("</think>")
    if opens > 1 or closes > 1:
        raise ValueError(f"{where} holds {max(opens, closes)} <think> blocks: an assistant turn carries at most "
                         "one reasoning block (split the turn, or merge the reasoning)")
    if opens != closes:
        raise ValueError(f"{where} has an unclosed <think> or a stray </think>")
    if opens and not content.lstrip().startswith("<think>"):
        raise ValueError(f"{where}: the <think> block must open the turn (text before it would be moved)")
    inline = THINK_RE.findall(content)
    if inline and inline[0].strip() and reasoning.strip():
        raise ValueError(f"{where} has an inline <think> block and reasoning_content: give the reasoning once")


def _messages_from_row(row: dict[str, Any], ref: DatasetRef) -> list[dict[str, str]]:
    fields = ref.fields
    if ref.format == "alpaca":
        keys = {name: fields.get(name, name) for name in ("instruction", "input", "output", "system")}
        instruction, output = row.get(keys["instruction"]), row.get(keys["output"])
        for name in ("instruction", "output"):
            if not isinstance(row.get(keys[name]), str):
                found = type(row.get(keys[name])).__name__ if keys[name] in row else "missing"
                raise ValueError(f"{keys[name]}: alpaca rows need string 'instruction' and 'output' ({found})")
        extra = _optional_text(row, keys["input"], keys["input"])
        system = _optional_text(row, keys["system"], keys["system"])
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "system", "content": system}] if system else []
        return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    default_key = "conversations" if ref.format == "sharegpt" else "messages"
    list_key = fields.get("messages", default_key)
    turns = row.get(list_key)
    role_key = fields.get("role", "from" if ref.format == "sharegpt" else "role")
    content_key = fields.get("content", "value" if ref.format == "sharegpt" else "content")
    reasoning_key = fields.get("reasoning_content", "reasoning_content")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"missing or empty '{list_key}' list")
    messages: list[dict[str, str]] = []
    system_key = fields.get("system", "system")
    system = _optional_text(row, system_key, system_key)
    if system:
        messages.append({"role": "system", "content": system})
    known = {role_key, content_key, reasoning_key}
    for index, turn in enumerate(turns):
        where = f"{list_key}[{index}]"
        if not isinstance(turn, dict):
            raise ValueError("each turn is an object")
        role = ROLE_ALIASES.get(str(turn.get(role_key)))
        content = turn.get(content_key)
        if role is None:
            raise ValueError(f"unknown role {turn.get(role_key)!r}")
        if not isinstance(content, str):
            raise ValueError(f"turn content is not a string ({type(content).__name__})")
        # Keys qwenrecipes does not read would be dropped without a word (tool_calls, weight, train, ...);
        # empty ones (OpenAI exports carry "refusal": null) carry nothing.
        ignored = [k for k, v in turn.items() if k not in known and v not in (None, "", [], {})]
        if ignored:
            raise ValueError(f"{where}.{ignored[0]}: key not used by qwenrecipes (its value would be dropped): "
                             f"remove it, or map a field with data.*.fields")
        message = {"role": role, "content": content}
        reasoning = _optional_text(turn, reasoning_key, f"{where}.{reasoning_key}")
        if reasoning and role != "assistant":
            raise ValueError(f"{where}.{reasoning_key}: only assistant turns carry reasoning (this is '{role}')")
        if role == "assistant":
            _check_think(content, reasoning, f"{where}.{content_key}")
        if reasoning:
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
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for index, (label, row) in enumerate(read_numbered_rows(ref, file_label), start=1):
        try:
            if not isinstance(row, dict):
                raise ValueError("row is not an object")
            _scan(row, [])
            messages = _messages_from_row(row, ref)
            _check_order(messages)
            conversations.append(Conversation(messages, index))
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
