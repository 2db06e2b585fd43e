"""What an engine is (the ``Engine`` protocol), the defaults a new engine inherits (``BaseEngine``), and the
environment/ChatML facts every engine shares.

An engine lives in one folder, ``qwenrecipes/engines/<name>/`` (or any package, registered through the
``qwenrecipes.engines`` entry-point group): its renderer, lock, token-check script, log vocabulary, native
check, memory profile, residuals and bench facts. Core modules ask the engine object; they never branch on a
name. See docs/engines.md.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Protocol

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.recipe.memory import DEFAULT_PROFILE, EngineProfile
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



@dataclass(frozen=True)
class EnvSpec:
    """How `qwenrecipes env` builds and checks the engine's isolated environment (the lock is ``lock.txt`` in the
    engine's folder)."""

    package: str  # the distribution that *is* the engine: its version is the engine's version
    health_imports: tuple[str, ...]  # "module" or "module:attribute" a training run really loads
    needs_gpu: bool = False  # the import fails without a CUDA GPU: a CPU host reports "needs a CUDA GPU"
    health_env: Mapping[str, str] = field(default_factory=dict)  # extra variables for the health check's import
    # An interpreter that already has the engine installed: no venv is built, `run`/`check` use it as is
    # (a plug-in developed in the current environment, the test engine). None: a pinned venv from the lock.
    python: str | None = None


@dataclass(frozen=True)
class BundleSpec:
    """What an offline bundle of the engine (`qwenrecipes env bundle`, bench/bundle.py) carries: the wheels of
    its training path that a host with torch and transformers lacks."""

    packages: tuple[str, ...]  # name==version, wheels (pip download --only-binary)
    sdists: tuple[str, ...] = ()  # pure-Python sdists built into wheels here (pip wheel)
    trims: tuple[str, ...] = ()  # globs under site/ to delete
    keep_models: tuple[str, ...] = ()  # transformers/models/<name> kept whole when transformers is bundled
    keep_modeling: tuple[str, ...] = ()  # ... or: every model package kept, modeling_*.py only for these
    notes: str = ""


@dataclass(frozen=True)
class Residual:
    """A documented token difference the engine makes impossible to remove (`qwenrecipes check`): how it changes
    the reference labels. ``apply(messages, reference, labels)``; reference has ``input_ids`` and ``labels``."""

    engine: str
    name: str
    description: str
    train_on: str  # the recipe's data.train_on it applies to
    apply: Callable[[Sequence[Mapping[str, str]], Any, list[int]], list[int]]
    handoffs: tuple[str, ...] = ("text",)  # data handoffs it survives ("tokens": even the token handoff's)


# An ``Engine.log_keys`` target: the key is kept under its own name and used as memory_gb only when the log dict
# has no key mapped to memory_gb itself (a second-best memory figure; run/events.py).
MEMORY_FALLBACK = "memory_gb_fallback"

# A native check: a Python snippet run inside the engine env with the render folder as cwd, printing one JSON
# line {"ok": bool, "error": str}; or a function of the render folder run here (an engine that cannot be
# imported on this host), returning the error or None.
NativeCheck = str | Callable[[Path], str | None]


class Engine(Protocol):
    """One training engine. render/command/environment/effective are pure functions of the plan or files: no
    I/O, no engine imports. The other members are facts core modules ask for instead of naming engines."""

    name: str
    main_file: str  # the file `render` prints without -o
    env: EnvSpec
    supports_liger: bool  # the rendered config can switch Liger kernels on (`liger_kernel: auto`)
    memory_profile: EngineProfile  # coefficients of the GPU memory estimate (recipe/memory.py)
    log_keys: Mapping[str, str]  # HF log-dict keys this engine prints -> event schema keys (run/events.py)
    console_modules: Mapping[str, str]  # console script -> module, for bundles that have no scripts (bench)
    notes: Mapping[str, str]  # concept -> why the engine differs there (`explain` shows it)

    @property
    def folder(self) -> Traversable:
        """The engine's package folder: ``lock.txt`` and ``check_tokens.py`` live there."""
        ...

    @property
    def templates(self) -> Traversable:
        """The folder its ``render_template("<name>/...")`` names are read from."""
        ...

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

    def lora_kernels(self, plan: Plan) -> bool:
        """Whether the render switches on fused LoRA kernels (they change the memory estimate)."""
        ...

    def native_check(self) -> NativeCheck | None:
        """How `validate --native` asks the engine about a rendered folder; None: not supported."""
        ...

    def residuals(self) -> Sequence[Residual]:
        """Token differences `check` reports as known residuals instead of mismatches."""
        ...

    def bundle(self) -> BundleSpec | None:
        """What an offline bundle of this engine holds; None: no bundle."""
        ...

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        """(recipe field, reason) for each distribution setting its launcher cannot run (`run` refuses them,
        exit 2; `render` warns). Multi-process commands use the shared options of engines/launchers.py."""
        ...

    def handoff(self, plan: Plan) -> str:
        """``tokens``: the render reads data/train.tokens.jsonl (input_ids + labels made by qwenrecipes) through
        the engine's pre-tokenized data path; ``text``: the engine tokenizes and masks data/train.jsonl itself."""
        ...

    def token_row(self, input_ids: list[int], labels: list[int]) -> dict[str, Any]:
        """One line of data/train.tokens.jsonl in the form the engine's pre-tokenized path reads."""
        ...

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        """(recipe field, reason) when the engine cannot train the bins qwenrecipes packed (data/packing.py) as
        given: no path for packed rows with their position ids, or an attention implementation that would attend
        across the rows of a bin in the engine's transformers. Render and run refuse (exit 2); never the engine's
        own packer instead."""
        ...

    def packed_row(self, row: PackedRow) -> dict[str, Any]:
        """One line of the packed data/train.tokens.jsonl in the form the engine's pre-tokenized path reads."""
        ...


class BaseEngine:
    """Defaults for every member of ``Engine`` but render/command/environment/effective: subclass it and set
    ``name``, ``main_file`` and ``env``. The folder is the package the subclass is defined in."""

    name: str
    main_file: str
    env: EnvSpec
    supports_liger: bool = False
    memory_profile: EngineProfile = DEFAULT_PROFILE
    log_keys: Mapping[str, str] = MappingProxyType({})
    console_modules: Mapping[str, str] = MappingProxyType({})
    notes: Mapping[str, str] = MappingProxyType({})
    # Why the engine cannot train qwenrecipes' bins as given (packing_problems); one that can overrides
    # packing_problems and packed_row instead.
    packing_refused: str = "no path is known that trains rows packed by qwenrecipes (input_ids, labels, per-row " \
                           "position ids) with the engine's own packer off"

    @property
    def folder(self) -> Traversable:
        module = sys.modules[type(self).__module__]
        # Path, not importlib.resources.files: the latter imports zipfile & co. on every render.
        return Path(module.__file__ or "").resolve().parent

    @property
    def templates(self) -> Traversable:
        """``templates/`` beside the engine's module (a plug-in's package data), else ``templates/<name>`` of
        qwenrecipes (the built-ins': the repository's, shipped in the wheel)."""
        own = self.folder.joinpath("templates")
        return own if own.is_dir() else resource(f"templates/{self.name}")

    def lora_kernels(self, plan: Plan) -> bool:
        return False

    # native_check / residuals / bundle come from the engine folder's optional modules, by convention
    # (native.py: NATIVE_CHECK, residuals.py: RESIDUALS, bundle.py: BUNDLE), imported only when asked for.
    def native_check(self) -> NativeCheck | None:
        return getattr(self._own_module("native"), "NATIVE_CHECK", None)

    def residuals(self) -> Sequence[Residual]:
        return getattr(self._own_module("residuals"), "RESIDUALS", ())

    def bundle(self) -> BundleSpec | None:
        return getattr(self._own_module("bundle"), "BUNDLE", None)

    def _own_module(self, name: str) -> ModuleType | None:
        """The module ``name`` of the package the engine is defined in, or None when it has none."""
        package = sys.modules[type(self).__module__].__package__
        if not package:
            return None
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":  # the module exists but an import inside it failed
                raise
            return None

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        return []

    def handoff(self, plan: Plan) -> str:
        return "tokens" if plan.token_handoff else "text"

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        if plan.packing is None:  # no packing, or the text handoff's engine packing (warned by the plan)
            return []
        return [("data.packing", f"{self.packing_refused}: set packing: false for it")]

    def packed_row(self, row: PackedRow) -> dict[str, Any]:
        # No attention_mask: transformers derives the per-row mask from position_ids only when none is passed.
        return {"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}

    def token_row(self, input_ids: list[int], labels: list[int]) -> dict[str, Any]:
        # The columns of a tokenized HF dataset (an engine may require all three to skip its own tokenization).
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


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
