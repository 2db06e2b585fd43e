"""`validate --native`: the engine itself accepts what qwenrecipes renders, and its complaint about a broken
render comes back as a recipe problem. Needs the engine envs (installed by scripts/test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenrecipes.check.native import native_validate
from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.plan import Plan, plan_recipe
from tests.conftest import RECIPES


def _installed(engine: str) -> bool:
    from qwenrecipes.run.envs import env_for

    try:
        env_for(engine)
    except Exception:
        return False
    return True


pytestmark = pytest.mark.engine
CPU_ENGINES = ["axolotl", "llamafactory", "trl"]


@pytest.fixture(scope="module")
def tiny_plan() -> Plan:
    return plan_recipe(RECIPES / "tiny-cpu.yaml", target="cpu")


@pytest.mark.parametrize("engine", CPU_ENGINES)
def test_engine_accepts_rendered_config(engine: str, tiny_plan: Plan) -> None:
    if not _installed(engine):
        pytest.skip(f"{engine} env not installed: qwenrecipes env install {engine}")
    native_validate(tiny_plan, engine)


@pytest.mark.parametrize("engine", CPU_ENGINES)
def test_engine_accepts_gpu_recipe(engine: str) -> None:
    if not _installed(engine):
        pytest.skip(f"{engine} env not installed: qwenrecipes env install {engine}")
    native_validate(plan_recipe(RECIPES / "qwen3-4b-lora.yaml", target="cuda"), engine)


@pytest.mark.parametrize(("engine", "bad_key"), [("axolotl", "lora_rr"), ("llamafactory", "lora_rnak"),
                                                  ("trl", "lora_rr")])
def test_misrendered_config_is_rejected(engine: str, bad_key: str, tiny_plan: Plan,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if not _installed(engine):
        pytest.skip(f"{engine} env not installed: qwenrecipes env install {engine}")
    real = ENGINES[engine]
    original = real.render

    def broken(plan: Plan) -> dict[str, str]:
        files = dict(original(plan))
        files[real.main_file] += f"\n{bad_key}: 8\n"
        return files

    monkeypatch.setattr(real, "render", broken)
    with pytest.raises(RecipeError) as info:
        native_validate(tiny_plan, engine)
    assert bad_key in str(info.value)
    assert f"{engine} rejects the rendered config" in str(info.value)


def test_unsloth_static_check(tiny_plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    native_validate(plan_recipe(RECIPES / "qwen3-4b-qlora.yaml", target="cuda"), "unsloth")
    real = ENGINES["unsloth"]
    original = real.render

    def injected(plan: Plan) -> dict[str, str]:
        files = dict(original(plan))
        files["train_unsloth.py"] += "\n__import__('os').system('true')\n"
        return files

    monkeypatch.setattr(real, "render", injected)
    with pytest.raises(RecipeError, match="unexpected calls"):
        native_validate(tiny_plan, "unsloth")


def test_render_folder_is_temporary(tmp_path: Path) -> None:
    """Native validation leaves nothing behind in the recipe's folder."""
    before = set(RECIPES.iterdir())
    native_validate(plan_recipe(RECIPES / "qwen3-4b-qlora.yaml", target="cuda"), "unsloth")
    assert set(RECIPES.iterdir()) == before
