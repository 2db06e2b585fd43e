"""Loss parity: the CPU engines (Axolotl, LLaMA-Factory, TRL, ms-swift, Unsloth on its CPU backend) train
tests/recipes/parity.yaml (tiny Qwen3, identical initial weights, qwenrecipes' row order read sequentially,
LoRA B=0 at init) through `qwenrecipes run`, and their losses agree:
step 1 within 1 % (it is the base model's loss on the same first batch), the final step within 3 %.

The same holds with `data.packing: true` (issue 14): qwenrecipes packs once and every engine that takes its bins
(`Engine.packing_problems` empty) trains the same bins in the same order, so their curves overlay too.

The runs are shared by every test here (one module-scoped fixture per mode), since each takes minutes on a busy CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qwenrecipes.run.compare import CompareRow, compare_runs, relative_spread
from tests.packing_checks import packed_recipe

pytestmark = pytest.mark.engine

RECIPE = Path(__file__).parent / "recipes" / "parity.yaml"
ENGINES = ["axolotl", "llamafactory", "trl", "swift", "unsloth"]
STEPS = 20
FIRST_TOLERANCE = 0.01
FINAL_TOLERANCE = 0.03
RUN_TIMEOUT_S = 1800.0  # one engine on a 2-core machine shared with other jobs


def _available() -> tuple[list[str], dict[str, str]]:
    from qwenrecipes.errors import EngineError
    from qwenrecipes.run import envs

    found, missing = [], {}
    for engine in ENGINES:
        try:
            envs.env_for(engine)
            found.append(engine)
        except EngineError as exc:
            missing[engine] = str(exc)
    return found, missing


def _takes_the_bins(recipe: Path, engines: list[str]) -> list[str]:
    from qwenrecipes.engines import ENGINES as REGISTRY
    from qwenrecipes.recipe.plan import plan_recipe

    plan = plan_recipe(recipe, target="cpu")
    assert plan.packing is not None
    return [engine for engine in engines if not REGISTRY[engine].packing_problems(plan)]


@pytest.fixture(scope="module", params=["unpacked", "packed"])
def parity_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    engines, missing = _available()
    if missing:
        pytest.skip("loss parity needs every CPU engine env; missing: "
                    + "; ".join(f"{e} ({reason})" for e, reason in missing.items()))
    root = tmp_path_factory.mktemp(f"parity-{request.param}")
    recipe = RECIPE
    if request.param == "packed":
        recipe = packed_recipe(root)  # parity.yaml (chat.jsonl) with qwenrecipes' packing on
        engines = _takes_the_bins(recipe, engines)
        if len(engines) < 2:
            pytest.skip(f"packed parity needs two engines that take qwenrecipes' bins; only {engines}")
    runs: dict[str, Path] = {}
    for engine in engines:
        run_dir = root / engine
        proc = subprocess.run(
            [sys.executable, "-c", "from qwenrecipes.cli import main; main()", "run", str(recipe), "--engine", engine,
             "--run-dir", str(run_dir), "--target", "cpu"],
            cwd=root, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 0, f"{engine} run failed:\n{proc.stderr[-3000:]}"
        runs[engine] = run_dir
    return runs


@pytest.fixture(scope="module")
def rows(parity_runs: dict[str, Path]) -> list[CompareRow]:
    return compare_runs(list(parity_runs.values()))


def _table(rows: list[CompareRow]) -> str:
    return "\n".join(f"{r.engine}: " + " ".join(f"{v:.4f}" for _, v in r.curve) for r in rows)


def test_every_engine_logs_every_step(rows: list[CompareRow]) -> None:
    for row in rows:
        assert [step for step, _ in row.curve] == list(range(1, STEPS + 1)), f"{row.engine}: {row.curve}"


def test_first_step_loss_agrees_within_1_percent(rows: list[CompareRow]) -> None:
    spread = relative_spread([r.first_loss for r in rows])
    assert spread is not None and spread <= FIRST_TOLERANCE, f"first-step spread {spread:.2%}\n{_table(rows)}"


def test_final_loss_agrees_within_3_percent(rows: list[CompareRow]) -> None:
    spread = relative_spread([r.final_loss for r in rows])
    assert spread is not None and spread <= FINAL_TOLERANCE, f"final-loss spread {spread:.2%}\n{_table(rows)}"


def test_every_step_agrees_within_the_final_tolerance(rows: list[CompareRow]) -> None:
    """Stronger than the end points: the curves overlay (same batches in the same order, same schedule)."""
    for step in range(STEPS):
        spread = relative_spread([r.curve[step][1] for r in rows])
        assert spread is not None and spread <= FINAL_TOLERANCE, f"step {step + 1}: {spread:.2%}\n{_table(rows)}"


def test_compare_renders_table_and_png(parity_runs: dict[str, Path], tmp_path: Path) -> None:
    from qwenrecipes.cli.check import compare

    png = tmp_path / "compare.png"
    runs = [str(p) for p in parity_runs.values()]
    result = CliRunner().invoke(compare, [*runs, "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    for engine in parity_runs:
        assert engine in result.output
    document = json.loads(CliRunner().invoke(compare, [*runs, "-o", str(png), "--json"]).stdout)
    assert [r["steps"] for r in document["runs"]] == [STEPS] * len(runs)
