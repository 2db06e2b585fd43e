"""The compiled-template cache (engines/base.py) only ever saves time: same output with or without it, used
when valid, ignored when damaged, stale or unwritable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from qwenrecipes.engines import templating as base
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.folder import render_plan
from tests.conftest import RECIPES

RECIPE = RECIPES / "qwen3-4b-qlora.yaml"
ENGINE = "unsloth"  # its script template is the one that costs most to compile


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cache root, and a fresh Environment (its in-memory template cache would hide the disk)."""
    monkeypatch.setenv("QWENRECIPES_HOME", str(tmp_path))
    base.jinja_env.cache_clear()
    yield tmp_path
    base.jinja_env.cache_clear()


def render_files() -> dict[str, str]:
    base.jinja_env.cache_clear()  # as a new process would: nothing compiled in memory
    return render_plan(plan_recipe(RECIPE, target="cuda"), ENGINE).files


def forbid_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("template compiled although a valid cache entry exists")

    monkeypatch.setattr(jinja2.Environment, "compile", compile_)


def test_second_render_loads_compiled_templates(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = render_files()
    entries = list((home / "jinja").glob("*.cache"))
    assert entries, "no compiled template was stored"
    forbid_compiling(monkeypatch)
    assert render_files() == first


def test_damaged_entries_are_recompiled(home: Path) -> None:
    first = render_files()
    for entry in (home / "jinja").glob("*.cache"):
        entry.write_bytes(entry.read_bytes()[:40])  # right header, truncated body
    assert render_files() == first


def test_unwritable_cache_still_renders(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = render_files()
    blocker = home / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("QWENRECIPES_HOME", str(blocker))  # creating $QWENRECIPES_HOME/jinja fails
    assert render_files() == expected
    assert not list(home.glob("not-a-folder*"))[1:], "a temporary file was left behind"


def test_other_compile_options_do_not_reuse_entries(home: Path) -> None:
    """A change of Jinja version or lexer setting must recompile, though the template source is the same."""
    env = base.jinja_env()
    source = "{% if x %}\n  {{ x }}\n{% endif %}\n"
    cache = env.bytecode_cache
    assert isinstance(cache, base._CompiledTemplateCache)
    bucket = cache.get_bucket(env, "probe.j2", None, source)
    bucket.code = env.compile(source, "probe.j2")
    cache.set_bucket(bucket)
    assert cache.get_bucket(env, "probe.j2", None, source).code is not None
    other_env = jinja2.Environment(trim_blocks=False)
    other = base._CompiledTemplateCache(base._compile_salt(other_env))
    assert base._compile_salt(other_env) != cache.salt
    assert other.get_bucket(other_env, "probe.j2", None, source).code is None
    assert cache.get_bucket(env, "probe.j2", None, source + " ").code is None  # edited template
