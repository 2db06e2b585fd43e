"""What the recipe schema check reports, worded for a person: values JSON Schema cannot express (NaN/inf, huge
ints, NUL, lone surrogates, an output.dir outside the run dir) screened out first, and each jsonschema error turned
into ``(json.path, message)`` pairs with "did you mean" hints (engine-config synonyms, close matches)."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

# Above every bound in the schema by far. A bigger int is a typo or an attack: jsonschema repr()s the value
# in its messages, and Python refuses to print ints of more than 4300 digits (ValueError, not a YAML error).
MAX_INT_BITS = 64
# Names people carry over from engine configs, mapped to the recipe's field (for "did you mean").
SYNONYMS = {"rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
            "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs",
            "batch_size": "micro_batch_size",
            "per_device_train_batch_size": "micro_batch_size", "cutoff_len": "max_seq_length",
            "sequence_len": "max_seq_length", "max_length": "max_seq_length", "base_model": "name_or_path",
            "model_name_or_path": "name_or_path", "lr_scheduler": "scheduler", "lr_scheduler_type": "scheduler",
            "optim": "optimizer", "output_dir": "dir", "template": "chat_template", "bf16": "precision",
            "fp16": "precision", "adapter": "type", "finetuning_type": "type", "lora_target_modules": "target_modules",
            "lora_target": "target_modules", "warmup": "warmup_steps"}


def json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_at(schema: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
    node = schema
    for part in parts:
        if isinstance(part, int):
            node = node.get("items", {})
            continue
        if "oneOf" in node:
            node = next((s for s in node["oneOf"] if s.get("type") == "object"), node)
        node = node.get("properties", {}).get(part, {})
    return node


def describe(error: Any, schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Turn one jsonschema error into (path, message) pairs a person can act on."""
    import difflib  # only invalid recipes get "did you mean" hints; valid ones never load it

    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(schema_at(schema, path).get("properties", {}))
        # key=str: YAML keys may be ints, dates or None next to strings, which do not sort together.
        extras = sorted(set(error.instance) - set(allowed), key=str)
        out = []
        for key in extras:
            synonym = SYNONYMS.get(str(key))
            hint = [synonym] if synonym in allowed else difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
            out.append((json_path([*path, key]), f"unknown key '{key}'{suggestion}"))
        return out
    if error.validator == "required":
        return [(json_path(path) or "(top)", error.message.replace("is a required property", "is required"))]
    if error.validator == "oneOf":
        # Report the most specific branch (the one of the right type), not "is not valid under any".
        # A branch whose type does not match says nothing useful (1 against {type: string, enum: [auto]}).
        mistyped = {e.schema_path[0] for e in (error.context or []) if e.validator == "type" and e.schema_path}
        branches = [e for e in (error.context or []) if e.validator != "type"
                    and (not e.schema_path or e.schema_path[0] not in mistyped)]
        if branches:
            return describe(min(branches, key=lambda e: len(list(e.schema_path))), schema)
        types = [s.get("type") for s in error.validator_value]
        enum = [v for s in error.validator_value for v in s.get("enum", [])]
        expected = " or ".join(str(t) for t in types if t) + (f" ({', '.join(map(str, enum))})" if enum else "")
        return [(json_path(path), f"{error.instance!r} is not valid: expected {expected}")]
    if error.validator == "enum":
        hint = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        choices = ", ".join(str(v) for v in error.validator_value)
        extra = f"; did you mean '{hint[0]}'?" if hint else ""
        return [(json_path(path), f"{error.instance!r} is not one of: {choices}{extra}")]
    if error.validator == "type":
        return [(json_path(path), f"{error.instance!r} is not of type {error.validator_value}")]
    return [(json_path(path), error.message)]


def screen_values(value: Any, parts: list[Any], problems: list[tuple[str, str]]) -> Any:
    """Check what JSON Schema cannot express, and return the document with the offending values replaced by
    None so the schema validator (which repr()s values in its messages) never sees them:
    - NaN/inf: YAML has `.nan` and `.inf`, JSON Schema has no notion of them;
    - ints too large to print (see MAX_INT_BITS);
    - NUL characters: no path, argv entry or engine config can hold one (os calls raise ValueError)."""
    if isinstance(value, float) and not math.isfinite(value):
        problems.append((json_path(parts), f"{value!r} is not a finite number"))
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        digits = int(value.bit_length() * math.log10(2)) + 1
        problems.append((json_path(parts), f"an integer of about {digits} digits is out of range"))
        return None
    if isinstance(value, str) and "\x00" in value:
        problems.append((json_path(parts), "contains a NUL character (\\0), which no path or setting can hold"))
        return None
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a "\ud800" escape: not text, no file or argv can hold it
            problems.append((json_path(parts), f"contains a lone surrogate (U+{ord(value[exc.start]):04X}), "
                                                "which is not text: no file or setting can hold it"))
            return None
    if isinstance(value, dict):
        return {key: screen_values(child, [*parts, key], problems) for key, child in value.items()}
    if isinstance(value, list):
        return [screen_values(child, [*parts, index], problems) for index, child in enumerate(value)]
    return value


def output_dir_problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    """output.dir is joined onto the run/render folder; an absolute path or `..` would let the engine write
    (and LLaMA-Factory's overwrite_output_dir overwrite) outside it, and the runner's artifact scan
    assumes it is inside."""
    output = document.get("output")
    folder = output.get("dir") if isinstance(output, dict) else None
    if not isinstance(folder, str):
        return []
    pure = PurePosixPath(folder)
    if pure.is_absolute() or ".." in pure.parts or folder.startswith("~"):
        return [("output.dir", f"{folder!r} must be a relative folder inside the run dir (no leading /, ~ or ..)")]
    return []


def anchored(pattern: str) -> str:
    """`pattern` as the schema means it. Python's re.search lets `$` match before a final newline, so a name
    or target module ending in a newline would pass; an end-of-string anchor does not."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
