"""Rules for recipe strings that end up inside engine files (model path, output folder, hub dataset ids).

Local data paths and field names are read by qwenrecipes only (the engines get data/train.jsonl), so they
may hold anything a file name can. Values that are written into the engines' configs may not hold:
- a control character (a newline most of all): ``llamafactory.args`` is one ``--key=value`` per line, and
  a line break inside a value reads as a new argument line to anyone (or anything) reading it by line;
- ``${``: LLaMA-Factory loads its YAML through OmegaConf, which reads ``${...}`` as an interpolation and
  refuses (or resolves) it at run time, long after validate said yes.
Refused at validate, with the reason, rather than escaped: an escaped value would differ per engine."""

from __future__ import annotations

import unicodedata

from qwenrecipes.recipe.load import Recipe


def _control(value: str) -> str | None:
    for char in value:
        if unicodedata.category(char) == "Cc" and char not in "\x85":  # NEL: YAML keeps it exact (dump_yaml)
            return char
    return None


def rendered_strings(recipe: Recipe) -> list[tuple[str, str]]:
    """(field, value) for every free recipe string that is written into an engine's files."""
    out = [("model.name_or_path", recipe.model["name_or_path"]), ("output.dir", recipe.output["dir"])]
    for section, ref in (("train", recipe.train), ("eval", recipe.eval)):
        if ref is not None and ref.local_path is None:  # a hub dataset: its id and split go to the engine
            out += [(f"data.{section}.path", ref.path), (f"data.{section}.split", ref.split)]
    return out


def text_problems(recipe: Recipe) -> list[tuple[str, str]]:
    problems = []
    for field, value in rendered_strings(recipe):
        char = _control(value)
        if char is not None:
            name = "a line break" if char in "\n\r" else "a control character"
            problems.append((field, f"{value!r} holds {name} (U+{ord(char):04X}), which engine configs and "
                                    "llamafactory.args (one argument per line) cannot carry: remove it"))
        if "${" in value:
            problems.append((field, f"{value!r} holds '${{', which LLaMA-Factory's config loader (OmegaConf) "
                                    "reads as an interpolation and refuses at run time: rename it"))
    return problems
