"""What every engine module provides, and the rendering helpers they share.

Adding an engine = one module here (registered in ``engines/__init__.py``), one folder under
``templates/``, and one golden folder per example recipe under ``tests/golden/``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Protocol

import jinja2
import yaml

from qwenrecipes.plan import Plan
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
        """Environment variables the command needs (telemetry off, version checks, offline mode)."""
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
    return env


def render_template(name: str, **context: Any) -> str:
    return jinja_env().get_template(name).render(**context)


def offline_environment(plan: Plan) -> dict[str, str]:
    """HF offline flags when the model and data are local: nothing to fetch, so fail fast instead of probing
    the hub (and never send a request the user did not ask for)."""
    if not plan.is_local:
        return {}
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def header_context(plan: Plan, engine: str) -> dict[str, Any]:
    from qwenrecipes import __version__

    return {"version": __version__, "engine": engine, "recipe_name": plan.recipe.name,
            "source": plan.recipe.source.name}
