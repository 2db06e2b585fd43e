"""What every engine module provides, and the rendering helpers they share.

Adding an engine = one module here (registered in ``engines/__init__.py``), one folder under
``templates/``, and one golden folder per example recipe under ``tests/golden/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import jinja2
import yaml

from qwenrecipes.paths import qwenrecipes_home
from qwenrecipes.recipe.plan import Plan
from qwenrecipes.resources import resource

# The plain ChatML template every engine is pinned to. Think blocks are already in the text (data.py),
# so no engine's own think handling can apply. `{% generation %}` marks the trained assistant span
# (content + <|im_end|>) for engines that read it (TRL's assistant_only_loss, transformers' masks).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The same template without generation markers, for engines whose Jinja has no `generation` tag.
CHATML_TEMPLATE_PLAIN = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


class Engine(Protocol):
    """One training engine. Pure functions of the plan: no I/O, no engine imports."""

    name: str
    main_file: str  # the file `render` prints without -o

    def render(self, plan: Plan) -> dict[str, str]:
        """Relative path -> file text for everything the engine needs besides the prepared data."""
        ...

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        """argv to launch training, run with the render folder as cwd and the engine env's bin/ first on PATH.
        ``resume_from`` is a checkpoint folder (relative to the render folder) to continue from."""
        ...

    def environment(self, plan: Plan) -> dict[str, str]:
        """Environment variables the command needs (telemetry off, version checks, offline mode): all of them,
        as the COMMAND file runs it without qwenrecipes (build it with ``engine_environment``)."""
        ...

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        """Read the rendered files back into the canonical settings (see explain.CONCEPTS), applying the
        engine's own defaults for anything the files leave out."""
        ...


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


@lru_cache(maxsize=1)
def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resource(f"templates/{name}").read_text(encoding="utf-8")),
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


# Telemetry off: the one list, used by every engine's environment() (so the rendered COMMAND file alone runs
# with it) and by envs.base_environment() (health checks, bench, tools). Every engine gets all of them: the
# engines share dependencies (gradio, huggingface_hub), and an unused variable costs nothing.
TELEMETRY_OFF: dict[str, str] = {
    "AXOLOTL_DO_NOT_TRACK": "1",  # axolotl.telemetry (posthog) is opt-out
    "DO_NOT_TRACK": "1",  # the cross-tool convention (consoledonottrack.com); axolotl reads it too
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Unsloth downloads a README from the Hub on every model load to count environments
    # (unsloth/models/_utils.py get_statistics); the variable's presence alone disables it.
    "UNSLOTH_DISABLE_STATISTICS": "1",
    # gradio (pulled in by LLaMA-Factory and Axolotl) phones home on import unless told not to.
    "GRADIO_ANALYTICS_ENABLED": "False",
}

# Hugging Face's offline switches: hub, datasets and transformers each read their own.
HF_OFFLINE: dict[str, str] = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def telemetry_environment(*, wandb: bool = False) -> dict[str, str]:
    """TELEMETRY_OFF, plus W&B disabled unless ``wandb`` (the recipe reports to it): Axolotl imports wandb at
    module level, and without this a stray WANDB_API_KEY would start syncing."""
    env = dict(TELEMETRY_OFF)
    if not wandb:
        env["WANDB_MODE"] = "disabled"
    return env


def offline_environment(plan: Plan) -> dict[str, str]:
    """HF offline flags when the model and data are local: nothing to fetch, so fail fast instead of probing
    the hub (and never send a request the user did not ask for)."""
    return dict(HF_OFFLINE) if plan.is_local else {}


def engine_environment(plan: Plan, own: dict[str, str]) -> dict[str, str]:
    """What an engine's environment() returns: telemetry off, offline mode for a local plan, then the engine's
    ``own`` variables on top, so the COMMAND file needs nothing from qwenrecipes to run as `qwenrecipes run`
    runs it."""
    env = telemetry_environment(wandb=plan.recipe.output["report_to"] == "wandb")
    env.update(offline_environment(plan))
    env.update(own)
    return env


def header_context(plan: Plan, engine: str) -> dict[str, Any]:
    from qwenrecipes import __version__

    return {"version": __version__, "engine": engine, "recipe_name": plan.recipe.name,
            "source": plan.recipe.source.name}
