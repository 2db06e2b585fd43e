"""Multi-process / multi-node rendering and pre-flight (no engine runs: those are in test_engine_distributed.py).

Launch commands come from each engine's own launcher; multi-node files are checked with bash's own parser (and
SkyPilot's task loader when the `skypilot` package is importable: QWENRECIPES_SKY_PYTHON names a Python that has
it); Slurm has no offline parser, so the sbatch layout is checked here against sbatch's rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from qwenrecipes.engines import ENGINES
from qwenrecipes.errors import QwenRecipesError, RecipeError
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.explain import explain_plan
from qwenrecipes.render.folder import render_plan
from qwenrecipes.render.multinode import LAUNCH_FILE, SBATCH_FILE, SKYPILOT_FILE, expand_node_variables
from qwenrecipes.run.distributed import check_distributed, node_argv
from tests.conftest import RECIPES, tiny_plan

DDP = RECIPES / "tiny-cpu-ddp.yaml"
TWO_NODE = RECIPES / "qwen3-8b-2node.yaml"
BUILTIN = ("axolotl", "llamafactory", "trl", "unsloth")


def test_world_size_is_inside_the_effective_batch() -> None:
    plan = plan_recipe(DDP)
    assert (plan.target, plan.world_size, plan.effective_batch) == ("cpu", 2, 4)
    two = plan_recipe(TWO_NODE)
    assert (two.world_size, two.effective_batch) == (16, 16)
    rows = {row.concept: row for row in explain_plan(two, ["axolotl", "llamafactory", "trl"])}
    assert "world size" in rows["gpus"].label and "world size" in rows["effective_batch"].label
    assert set(rows["gpus"].values.values()) == {16} and set(rows["effective_batch"].values.values()) == {16}
    rows = {row.concept: row for row in explain_plan(plan, ["llamafactory", "trl"])}
    assert set(rows["gpus"].values.values()) == {2} and set(rows["effective_batch"].values.values()) == {4}


def test_batch_larger_than_the_rows_counts_every_process() -> None:
    with pytest.raises(RecipeError) as caught:
        tiny_plan({"training": {"micro_batch_size": 100}, "distributed": {"gpus": 2, "nodes": 2,
                                                                          "strategy": "ddp"}}, target="cpu")
    assert "world size 4 = gpus x nodes" in str(caught.value)


def test_single_node_launchers_keep_every_rank() -> None:
    plan = plan_recipe(DDP)
    trl = render_plan(plan, "trl")
    assert trl.argv[:3] == ["accelerate", "launch", "--config_file"]
    assert trl.argv[4:8] == ["--tee", "3", "--log_dir", "ranks"]
    accelerate = yaml.safe_load(trl.files["accelerate_config.yaml"])
    # CPU ranks still go through accelerate's torchrun path (MULTI_GPU); the Trainer's use_cpu picks gloo.
    assert accelerate["distributed_type"] == "MULTI_GPU" and accelerate["num_processes"] == 2
    assert yaml.safe_load(trl.files["trl_config.yaml"])["use_cpu"] is True
    lf = render_plan(plan, "llamafactory")
    assert {k: lf.environment[k] for k in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "PET_LOG_DIR", "PET_TEE")} \
        == {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "NNODES": "1", "PET_LOG_DIR": "ranks", "PET_TEE": "3"}
    cuda = tiny_plan({"training": {"precision": "bf16", "micro_batch_size": 2},
                      "distributed": {"gpus": 2, "strategy": "ddp"}})
    axolotl = render_plan(cuda, "axolotl").argv
    assert axolotl[axolotl.index("--launcher"):] == ["--launcher", "torchrun", "--", "--nproc_per_node=2",
                                                     "--log_dir=ranks", "--tee=3", "--standalone"]


def test_launch_refusals_name_the_field_and_reason(tmp_path: Path) -> None:
    unsloth = ENGINES["unsloth"].launch_problems(plan_recipe(TWO_NODE))
    assert [field for field, _ in unsloth] == ["distributed.strategy", "distributed.nodes"]
    assert "only supported multi-GPU path is DDP" in unsloth[0][1]
    with pytest.raises(RecipeError) as caught:
        check_distributed(plan_recipe(TWO_NODE), ENGINES["unsloth"], tmp_path, resume=False)
    assert "distributed.nodes" in str(caught.value)
    axolotl = ENGINES["axolotl"].launch_problems(plan_recipe(DDP))
    assert axolotl and "LOCAL_RANK" in axolotl[0][1]
    for name in ("llamafactory", "trl"):
        assert ENGINES[name].launch_problems(plan_recipe(DDP)) == []
    assert any("unsloth cannot run" in w for w in render_plan(plan_recipe(TWO_NODE), "unsloth").warnings)



def test_fsdp_on_cpu_processes_is_refused_with_the_reason(tmp_path: Path) -> None:
    """accelerate turns FSDP on only for accelerator processes: 2 CPU processes with strategy fsdp trained as DDP
    (TRL, LLaMA-Factory: tried on tiny-cpu), so `run` refuses them; the same strategy on CUDA is fine."""
    fsdp = {"distributed": {"gpus": 2, "strategy": "fsdp"}, "training": {"micro_batch_size": 2}}
    cpu, cuda = tiny_plan(fsdp, target="cpu"), tiny_plan(fsdp, target="cuda")
    for name in ("trl", "llamafactory", "swift"):
        problems = ENGINES[name].launch_problems(cpu)
        assert [field for field, _ in problems] == ["distributed.strategy"], name
        assert "FSDP needs accelerator devices" in problems[0][1]
        assert ENGINES[name].launch_problems(cuda) == []
    with pytest.raises(RecipeError, match=r"distributed\.strategy.*plain DDP"):
        check_distributed(cpu, ENGINES["trl"], tmp_path, resume=False)

def test_resume_with_another_world_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"world_size": 2}))
    one = tiny_plan({}, target="cpu")
    with pytest.raises(QwenRecipesError, match=r"started with world size 2 .* this recipe has 1"):
        check_distributed(one, ENGINES["trl"], tmp_path, resume=True)
    check_distributed(plan_recipe(DDP), ENGINES["trl"], tmp_path, resume=True)  # same world size: fine
    check_distributed(one, ENGINES["trl"], tmp_path, resume=False)  # a fresh run is not a resume


def test_node_variables_come_from_the_environment() -> None:
    argv = ["torchrun", "--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}", "--machine_rank", "${NODE_RANK}"]
    assert expand_node_variables(argv, {"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "1"}, master_port=29500) == [
        "torchrun", "--rdzv_endpoint=10.0.0.1:29500", "--machine_rank", "1"]
    with pytest.raises(RecipeError, match="needs MASTER_ADDR and NODE_RANK"):
        expand_node_variables(argv, {}, master_port=29500)
    plan = plan_recipe(TWO_NODE)
    assert node_argv(plan, ["x", "${NODE_RANK}"], {"NODE_RANK": "0", "MASTER_ADDR": "h"}) == ["x", "0"]
    assert node_argv(plan_recipe(DDP), ["x"], {}) == ["x"]


def _two_node_files(engine: str) -> dict[str, str]:
    return render_plan(plan_recipe(TWO_NODE), engine).files


@pytest.mark.parametrize("engine", ["axolotl", "llamafactory", "trl"])
def test_multi_node_files_parse(engine: str, tmp_path: Path) -> None:
    files = _two_node_files(engine)
    for name in (LAUNCH_FILE, SBATCH_FILE, "COMMAND"):
        path = tmp_path / name
        path.write_text(files[name])
        subprocess.run(["bash", "-n", str(path)], check=True)  # bash's own parser
    launch = files[LAUNCH_FILE]
    assert 'export NODE_RANK MASTER_ADDR' in launch and 'MASTER_PORT="${MASTER_PORT:-29500}"' in launch
    exec_line = launch.strip().splitlines()[-1]
    assert exec_line.startswith("exec ") and "'${" not in exec_line  # placeholders are expanded by the shell
    if engine == "trl":
        assert '--machine_rank "${NODE_RANK}" --main_process_ip "${MASTER_ADDR}"' in exec_line
        assert yaml.safe_load(files["accelerate_config.yaml"])["num_machines"] == 2
    if engine == "axolotl":
        assert '--rdzv_endpoint="${MASTER_ADDR}":"${MASTER_PORT}"' in exec_line and "--nnodes=2" in exec_line
    if engine == "llamafactory":
        assert "export NNODES=2" in launch and "export NPROC_PER_NODE=8" in launch
    _check_sbatch(files[SBATCH_FILE])
    task = yaml.safe_load(files[SKYPILOT_FILE])
    assert task["num_nodes"] == 2 and task["resources"]["accelerators"]["H100"] == 8
    assert "SKYPILOT_NODE_RANK" in task["run"] and LAUNCH_FILE in task["run"]


# sbatch reads #SBATCH lines only before the first command; these are long options sbatch documents.
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "gpus-per-node", "exclusive", "output", "time",
                  "partition", "cpus-per-task", "mem"}


def _check_sbatch(text: str) -> None:
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    seen_command = False
    options = {}
    for line in lines[1:]:
        if line.startswith("#SBATCH"):
            assert not seen_command, f"#SBATCH after the first command is ignored by sbatch: {line}"
            match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
            assert match and match.group(1) in SBATCH_OPTIONS, line
            options[match.group(1)] = match.group(2)
        elif line.strip() and not line.startswith("#"):
            seen_command = True
    assert options["nodes"] == "2" and options["ntasks-per-node"] == "1" and options["gpus-per-node"] == "8"
    assert "srun --kill-on-bad-exit=1" in text and "SLURM_NODEID" in text


def _sky_python() -> str | None:
    python = os.environ.get("QWENRECIPES_SKY_PYTHON") or shutil.which("python3")
    if python is None:
        return None
    probe = subprocess.run([python, "-c", "import sky"], capture_output=True)
    return python if probe.returncode == 0 else None


@pytest.mark.parametrize("engine", ["axolotl", "llamafactory", "trl"])
def test_skypilot_task_loads_with_skypilot(engine: str, tmp_path: Path) -> None:
    python = _sky_python()
    if python is None:
        pytest.skip("skypilot not importable (set QWENRECIPES_SKY_PYTHON to a Python with `pip install skypilot`)")
    path = tmp_path / SKYPILOT_FILE
    path.write_text(_two_node_files(engine)[SKYPILOT_FILE])
    code = ("import json, sys, sky; t = sky.Task.from_yaml(sys.argv[1]); print(json.dumps({'nodes': t.num_nodes, "
            "'run': t.run, 'acc': [str(r.accelerators) for r in t.resources]}))")
    out = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, check=True)
    task = json.loads(out.stdout.strip().splitlines()[-1])
    assert task["nodes"] == 2 and "launch_node.sh" in task["run"] and any("H100" in a for a in task["acc"])


def test_single_node_render_has_no_multi_node_files() -> None:
    for engine in BUILTIN:
        files = render_plan(plan_recipe(DDP), engine).files
        assert not {LAUNCH_FILE, SBATCH_FILE, SKYPILOT_FILE} & set(files)
