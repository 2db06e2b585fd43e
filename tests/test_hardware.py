"""A recipe is resolved for the hardware it declares (or its settings imply), on any machine; only `run` and
`bench` compare it with the machine and say what is missing (exit 2).

"No GPU here" is made true by hiding nvidia-smi (the one thing detection reads), so these tests behave the same
on a laptop and on a GPU host."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe import hardware
from qwenrecipes.recipe.load import build_recipe, load_recipe, load_recipe_document
from qwenrecipes.recipe.plan import make_plan
from tests.conftest import REPO, TINY, run_cli

GPU_RECIPES = ["qwen3-4b-lora", "qwen3-4b-qlora", "qwen3-0.6b-full", "qwen3-8b-qlora-zero2-2gpu"]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real = hardware.shutil.which
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None if name == "nvidia-smi" else real(name))
    from qwenrecipes.recipe import memory

    monkeypatch.setattr(memory, "detect_gpu_memory_gb", lambda: None)


def tiny_recipe(tmp_path: Path, **sections: dict[str, object]) -> Path:
    document = copy.deepcopy(load_recipe_document(TINY))
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    document["data"]["train"]["path"] = str(REPO / "recipes" / document["data"]["train"]["path"])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", GPU_RECIPES)
@pytest.mark.parametrize("command", [["validate"], ["render", "-e", "trl"], ["explain"]])
def test_gpu_recipes_render_without_a_gpu(name: str, command: list[str], no_gpu: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    recipe = REPO / "recipes" / f"{name}.yaml"
    code, out, err = run_cli([command[0], str(recipe), *command[1:]], capsys)
    assert code == 0, err
    if command == ["validate"]:
        assert "bf16 on cuda: hardware.target: cuda" in out


@pytest.mark.parametrize(("changes", "reason"), [
    ({"training": {"precision": "bf16"}}, "training.precision: bf16"),
    ({"training": {"optimizer": "paged_adamw_8bit"}}, "training.optimizer: paged_adamw_8bit"),
    ({"method": {"type": "qlora"}}, "method.type: qlora"),
    ({"hardware": {"gpu_memory_gb": 24}}, "hardware.gpu_memory_gb: 24"),
    ({"distributed": {"gpus": 2, "strategy": "ddp"}}, "distributed.gpus: 2"),
])
def test_gpu_settings_imply_cuda(changes: dict[str, dict[str, object]], reason: str, tmp_path: Path,
                                 no_gpu: None) -> None:
    plan = make_plan(load_recipe(tiny_recipe(tmp_path, **changes)))
    assert plan.target == "cuda"
    assert reason in plan.target_why and plan.summary()["target_why"] == plan.target_why


def test_portable_recipe_follows_the_machine(tmp_path: Path, no_gpu: None) -> None:
    plan = make_plan(load_recipe(TINY))
    assert (plan.target, plan.precision) == ("cpu", "fp32")
    assert plan.target_why == "this machine: no nvidia-smi"


def test_declared_target_wins_and_override_wins_over_it(tmp_path: Path, no_gpu: None) -> None:
    recipe = load_recipe(tiny_recipe(tmp_path, hardware={"target": "cuda"}, training={"precision": "auto"}))
    plan = make_plan(recipe)
    assert (plan.target, plan.precision) == ("cuda", "bf16")
    assert make_plan(recipe, target="cpu").precision == "fp32"


def test_declared_cpu_with_gpu_settings_names_them(tmp_path: Path, no_gpu: None) -> None:
    recipe = load_recipe(tiny_recipe(tmp_path, hardware={"target": "cpu"}, training={"precision": "bf16"}))
    with pytest.raises(RecipeError) as caught:
        make_plan(recipe)
    assert any(p.path == "training.precision" for p in caught.value.problems)


def test_unknown_target_is_a_schema_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", str(tiny_recipe(tmp_path, hardware={"target": "tpu"}))], capsys)
    assert code == 2 and "hardware.target" in err and "Traceback" not in err


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_run_says_what_is_missing(name: str, tmp_path: Path, no_gpu: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    recipe = REPO / "recipes" / f"{name}.yaml"
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["run", str(recipe), "-e", "trl", "--run-dir", str(run_dir)], capsys)
    assert code == 2, err
    assert "hardware.target" in err and "has none" in err and "hardware.target: cpu" in err
    assert "Traceback" not in err
    assert not run_dir.exists(), "nothing is written before the machine check"


def test_bench_says_what_is_missing(tmp_path: Path, no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, training={"precision": "bf16"})
    code, _, err = run_cli(["bench", str(recipe), "-e", "trl", "-o", str(tmp_path / "b")], capsys)
    assert code == 2, err
    assert "training.precision: bf16" in err and "has none" in err
    # --set makes it a CPU recipe: the check sees the recipe as bench trains it
    assert hardware.check_machine(build_recipe(
        {**load_recipe_document(recipe), "training": {**load_recipe_document(recipe)["training"],
                                                       "precision": "fp32"}}, recipe)).target == "cpu"


def test_too_few_gpus_and_a_smaller_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenrecipes.recipe import memory

    monkeypatch.setattr(hardware, "detect_gpu_count", lambda: 1)
    monkeypatch.setattr(memory, "detect_gpu_memory_gb", lambda: 24.0)
    recipe = load_recipe(tiny_recipe(tmp_path, hardware={"gpu_memory_gb": 80},
                                     distributed={"gpus": 2, "strategy": "ddp"}))
    with pytest.raises(RecipeError) as caught:
        hardware.check_machine(recipe)
    paths = {p.path for p in caught.value.problems}
    assert paths == {"distributed.gpus", "hardware.gpu_memory_gb"}
