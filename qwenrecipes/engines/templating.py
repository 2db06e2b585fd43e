"""The Jinja and YAML helpers every engine renders with: one strict Jinja environment (templates looked up in
each engine's own folder, compiled-template cache) and one YAML dumper.

Logic stays in Python; values enter YAML through ``dump_yaml`` / the ``to_yaml`` filter and Python through
``repr`` (the ``py`` filter), so data never becomes code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from qwenrecipes.paths import qwenrecipes_home


class _Dumper(yaml.SafeDumper):
    """SafeDumper that keeps every string exact: PyYAML writes NEL / LINE and PARAGRAPH SEPARATOR raw inside
    plain or single-quoted scalars, where a reader folds them to spaces; double quotes escape them."""


_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in _LINE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(value: Any) -> str:
    """The one way values enter YAML: a safe dumper, readable unicode, exact round trip."""
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


def _to_yaml(value: Any) -> str:
    return dump_yaml(value).rstrip("\n")


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _comment(value: Any) -> str:
    """A value safe inside a `#` comment line: newlines would end the comment and start code."""
    return " ".join(str(value).split())


class _CompiledTemplateCache(jinja2.BytecodeCache):
    """Compiled templates kept under ``$QWENRECIPES_HOME/jinja``, so a fresh `qwenrecipes render` process skips
    Jinja's lex/parse/compile (1-14 ms per template on a 2-core VM, the Unsloth script being the slowest).

    An entry is used only when its checksum matches: the template source plus ``salt`` (the Jinja version and
    every compile-time option of the environment), so editing a template, upgrading Jinja or changing a
    lexer setting all recompile; Jinja's own file header adds the Python version. The cache can only save
    time: an unreadable, damaged or unwritable entry means compiling in memory, as without a cache."""

    def __init__(self, salt: str) -> None:
        self.salt = salt

    def get_source_checksum(self, source: str) -> str:
        return hashlib.sha256(f"{self.salt}\0{source}".encode()).hexdigest()

    @staticmethod
    def _path(bucket: jinja2.bccache.Bucket) -> Path:
        return qwenrecipes_home() / "jinja" / f"{bucket.key}.cache"  # key: a hash of the template name

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            with self._path(bucket).open("rb") as handle:
                bucket.load_bytecode(handle)
        except FileNotFoundError:
            pass
        except Exception:  # a damaged entry (pickle/marshal errors) or an unreadable file: recompile
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        path = self._path(bucket)
        # Per-process temporary name + atomic rename: concurrent renders never read a half-written entry.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as handle:
                bucket.write_bytecode(handle)
            os.replace(temporary, path)
        except OSError:  # read-only or full disk: this render already has its compiled template
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def _compile_salt(env: jinja2.Environment) -> str:
    """Everything besides the source that changes the code Jinja compiles a template into."""
    options = (env.block_start_string, env.block_end_string, env.variable_start_string, env.variable_end_string,
               env.comment_start_string, env.comment_end_string, env.line_statement_prefix, env.line_comment_prefix,
               env.trim_blocks, env.lstrip_blocks, env.newline_sequence, env.keep_trailing_newline, env.optimized,
               env.autoescape, sorted(env.extensions), sorted(env.filters), sorted(env.tests))
    return f"jinja2 {jinja2.__version__} {options!r}"


def _load_template(name: str) -> str:
    """``<engine>/<file>`` from that engine's own template folder (``Engine.templates``): built-ins ship theirs
    in templates/<engine>/, a plug-in package in its own package data."""
    from qwenrecipes.engines import ENGINES  # the registry imports this module's users, not the other way

    engine, _, file = name.partition("/")
    return ENGINES[engine].templates.joinpath(file).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["to_yaml"] = _to_yaml
    env.filters["to_json"] = _to_json
    env.filters["py"] = repr  # Python literal of a str/int/float/bool/None/list/dict: data stays data
    env.filters["comment"] = _comment
    env.bytecode_cache = _CompiledTemplateCache(_compile_salt(env))
    return env


def render_template(name: str, **context: Any) -> str:
    return jinja_env().get_template(name).render(**context)
