"""`validate --native` on the DeepSpeed path: every rendered ZeRO config is parsed by DeepSpeed's own
DeepSpeedConfig inside the engine's env (deepspeed is in each lock), after transformers' HfTrainerDeepSpeedConfig
has filled the "auto" values from the engine config as the HF Trainer does (engines/deepspeed.py). ZeRO-2
(qwen3-8b-qlora-zero2-2gpu) and ZeRO-3 (qwen3-8b-2node) pass; a corrupted stage is refused in DeepSpeed's words.
TRL writes no deepspeed.json: its ZeRO config is the one accelerate's DeepSpeedPlugin builds from
accelerate_config.yaml, corrupted there. swift's own parser reads the model's config.json, which is not on
disk offline for a hub id: its recipes point at the bundled tiny model instead (the ZeRO config is the same)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml

from qwenrecipes.check.native import check_folder, native_validate
from qwenrecipes.recipe.load import load_recipe_document
from qwenrecipes.recipe.plan import Plan, plan_recipe
from qwenrecipes.render.folder import render_plan, write_rendered
from tests.conftest import RECIPES

pytestmark = pytest.mark.engine
ZERO2 = RECIPES / "qwen3-8b-qlora-zero2-2gpu.yaml"
ZERO3 = RECIPES / "qwen3-8b-2node.yaml"
# engine -> (file holding the stage, the stage as written there)
STAGE_FILE = {"axolotl": ("deepspeed.json", r'"stage": 2'), "llamafactory": ("deepspeed.json", r'"stage": 2'),
              "swift": ("deepspeed.json", r'"stage": 2'), "trl": ("accelerate_config.yaml", r"zero_stage: 2")}


def _plan(recipe: Path, engine: str, tmp: Path) -> Plan:
    if engine != "swift":
        return plan_recipe(recipe, target="cuda")
    document = load_recipe_document(recipe)
    document["model"]["name_or_path"] = "builtin:tiny-qwen3"
    document["data"]["train"]["path"] = str((recipe.parent / document["data"]["train"]["path"]).resolve())
    path = tmp / recipe.name
    path.write_text(yaml.safe_dump(document))
    return plan_recipe(path, target="cuda")


@pytest.mark.parametrize("engine", sorted(STAGE_FILE))
def test_deepspeed_accepts_zero2_and_zero3_and_refuses_a_bad_stage(engine: str, tmp_path: Path) -> None:
    from qwenrecipes.run.envs import env_for

    try:
        env_for(engine)
    except Exception as exc:
        pytest.skip(f"{engine} env not installed: {exc}")
    for recipe in (ZERO2, ZERO3):
        native_validate(_plan(recipe, engine, tmp_path), engine)
    plan = _plan(ZERO2, engine, tmp_path)
    rendered = render_plan(plan, engine)
    name, stage = STAGE_FILE[engine]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_rendered(plan, rendered, folder)
        text = (folder / name).read_text()
        assert re.search(stage, text), text
        (folder / name).write_text(re.sub(stage, stage.replace("2", "7"), text))
        error = check_folder(engine, folder, dict(rendered.environment))
    assert error is not None
    assert "DeepSpeed refuses the ZeRO config" in error and "DeepSpeedZeroConfig" in error, error
    assert "stage" in error and "Input should be 0, 1, 2, 3" in error, error
