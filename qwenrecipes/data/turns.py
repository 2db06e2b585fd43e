"""One input row -> the canonical conversation: messages of {role, content[, reasoning_content][, tool_calls]}
and the row's ``tools``. Formats: ``messages`` (OpenAI / Qwen: roles system, user, assistant, tool; assistant
``tool_calls``; row-level ``tools``), ``sharegpt`` (from/value turns, with LLaMA-Factory's ``function_call`` and
``observation`` roles and its ``tools`` JSON string) and ``alpaca``.

Every problem is a ValueError whose message names the field (``messages[2].tool_calls[0].name``); the caller adds
the file and row. Nothing is dropped without a word: a key qwenrecipes does not read is refused, except the ones
the official Qwen3 template itself ignores (``tool_call_id`` / ``name`` of a tool message, ``id`` / ``type`` of a
tool call), listed here so a standard OpenAI export passes as is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from qwenrecipes.recipe.load import DatasetRef

THINK_RE = re.compile(r"<think>(.*?)</think>\s*", re.DOTALL)
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant",
                "system": "system", "bot": "assistant", "model": "assistant", "tool": "tool",
                "function_call": "function_call", "observation": "tool"}
# Keys the official Qwen3 template never renders, accepted so OpenAI-style exports load unchanged.
TEMPLATE_IGNORED = {"tool": {"tool_call_id", "name"}, "tool_call": {"id", "type", "index"}}


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def optional_text(row: dict[str, Any], key: str, where: str) -> str:
    """A field that may be absent, null or "", else must be one string (a list or a number would be
    written into the prompt as its Python repr, or vanish when falsy)."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where} is {type(value).__name__} {short(value)}, not a string: give one string "
                         "or leave it out")
    return value


def check_think(content: str, reasoning: str, where: str) -> None:
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


def _json_value(value: Any, where: str, what: str) -> Any:
    """A value given either as JSON data or as a JSON string of it (LLaMA-Factory writes tools and function
    calls as strings)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: {what} given as a string must be JSON ({exc.msg})") from None


def parse_tools(row: dict[str, Any], key: str) -> list[Any]:
    """The row's tool definitions (each rendered by the template with tojson, whatever its shape)."""
    value = _json_value(row.get(key), key, "tools")
    if value in (None, "", []):
        return []
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise ValueError(f"{key} is {type(value).__name__} {short(value)}: give a list of tool definitions "
                         "(objects, e.g. {\"type\": \"function\", \"function\": {...}})")
    return value


def parse_tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """Assistant tool calls as the template reads them: {name, arguments} (an OpenAI {function: {...}} wrapper
    is unwrapped, as the template does). arguments: an object (rendered with tojson) or a string (verbatim)."""
    value = _json_value(value, where, "tool calls")
    if isinstance(value, dict):  # sharegpt function_call: one call as an object
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} is {type(value).__name__} {short(value)}: give a list of tool calls")
    calls = []
    for index, call in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(call, dict):
            raise ValueError(f"{here}: a tool call is an object {{name, arguments}}")
        inner = call.get("function")
        if inner is not None:
            extra = [k for k in call if k != "function" and k not in TEMPLATE_IGNORED["tool_call"]]
            if not isinstance(inner, dict) or extra:
                raise ValueError(f"{here}: give {{function: {{name, arguments}}}} or {{name, arguments}}")
            call, here = inner, f"{here}.function"
        unknown = [k for k in call if k not in ("name", "arguments") and k not in TEMPLATE_IGNORED["tool_call"]]
        if unknown:
            raise ValueError(f"{here}.{unknown[0]}: key not used by the Qwen3 template (its value would be dropped)")
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{here}.name: a tool call needs its function name (a non-empty string)")
        if "arguments" not in call or call["arguments"] is None:
            raise ValueError(f"{here}.arguments: a tool call needs its arguments (an object, or a JSON string)")
        calls.append({"name": name, "arguments": call["arguments"]})
    return calls


def messages_from_row(row: dict[str, Any], ref: DatasetRef) -> tuple[list[dict[str, Any]], list[Any]]:
    """(messages, tools) of one row; see the module doc."""
    fields = ref.fields
    if ref.format == "alpaca":
        keys = {name: fields.get(name, name) for name in ("instruction", "input", "output", "system")}
        instruction, output = row.get(keys["instruction"]), row.get(keys["output"])
        for name in ("instruction", "output"):
            if not isinstance(row.get(keys[name]), str):
                found = type(row.get(keys[name])).__name__ if keys[name] in row else "missing"
                raise ValueError(f"{keys[name]}: alpaca rows need string 'instruction' and 'output' ({found})")
        extra = optional_text(row, keys["input"], keys["input"])
        system = optional_text(row, keys["system"], keys["system"])
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "system", "content": system}] if system else []
        return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}], []
    sharegpt = ref.format == "sharegpt"
    list_key = fields.get("messages", "conversations" if sharegpt else "messages")
    turns = row.get(list_key)
    role_key = fields.get("role", "from" if sharegpt else "role")
    content_key = fields.get("content", "value" if sharegpt else "content")
    reasoning_key = fields.get("reasoning_content", "reasoning_content")
    calls_key = fields.get("tool_calls", "tool_calls")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"missing or empty '{list_key}' list")
    tools_key = fields.get("tools", "tools")
    tools = parse_tools(row, tools_key)
    messages: list[dict[str, Any]] = []
    system_key = fields.get("system", "system")
    system = optional_text(row, system_key, system_key)
    if system:
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        messages.append(_turn(turn, f"{list_key}[{index}]", role_key, content_key, reasoning_key, calls_key))
    return messages, tools


def _turn(turn: Any, where: str, role_key: str, content_key: str, reasoning_key: str,
          calls_key: str) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise ValueError("each turn is an object")
    role = ROLE_ALIASES.get(str(turn.get(role_key)))
    content = turn.get(content_key)
    if role is None:
        raise ValueError(f"unknown role {turn.get(role_key)!r}")
    if role == "function_call":  # sharegpt: the assistant's tool call(s), as JSON in the value
        return {"role": "assistant", "content": "", "tool_calls": parse_tool_calls(content, f"{where}.{content_key}")}
    calls = turn.get(calls_key) if role == "assistant" else None
    if content is None and calls:
        content = ""  # OpenAI: an assistant turn that only calls tools has content null
    if not isinstance(content, str):
        raise ValueError(f"turn content is not a string ({type(content).__name__})")
    known = {role_key, content_key, reasoning_key} | ({calls_key} if role == "assistant" else set())
    known |= TEMPLATE_IGNORED.get(role, set())
    # Keys qwenrecipes does not read would be dropped without a word (weight, train, ...); empty ones (OpenAI
    # exports carry "refusal": null, "tool_calls": []) carry nothing.
    ignored = [k for k, v in turn.items() if k not in known and v not in (None, "", [], {})]
    if ignored:
        raise ValueError(f"{where}.{ignored[0]}: key not used by qwenrecipes (its value would be dropped): "
                         f"remove it, or map a field with data.*.fields")
    message: dict[str, Any] = {"role": role, "content": content}
    reasoning = optional_text(turn, reasoning_key, f"{where}.{reasoning_key}")
    if reasoning and role != "assistant":
        raise ValueError(f"{where}.{reasoning_key}: only assistant turns carry reasoning (this is '{role}')")
    if role == "assistant":
        check_think(content, reasoning, f"{where}.{content_key}")
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls not in (None, "", []):
        message["tool_calls"] = parse_tool_calls(calls, f"{where}.{calls_key}")
    return message


def is_tool_wrapper(content: str) -> bool:
    """A user message that is a pasted tool result: the Qwen3 template does not count it as a query."""
    return content.startswith("<tool_response>") and content.endswith("</tool_response>")


def check_order(messages: list[dict[str, Any]]) -> None:
    """What every rule needs: a system message only first, a user query first, an assistant turn last. Roles
    may repeat (two user turns, several tool results, an assistant turn per tool call): the template renders
    each as it comes."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body or body[-1]["role"] != "assistant":
        raise ValueError("a conversation ends with an assistant turn")
    if any(m["role"] == "system" for m in body):
        raise ValueError("a system message is only allowed first")
    first = body[0]
    if first["role"] != "user" or is_tool_wrapper(first["content"]):
        what = "a pasted <tool_response>" if first["role"] == "user" else f"'{first['role']}'"
        raise ValueError(f"turn 1 is {what}, expected 'user' (a conversation opens with the user's query)")
