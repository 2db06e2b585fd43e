"""The library half of `qwenrecipes eval` / `sweep` (no torch, no engine): held-out tokens and mask, prompts,
the quality columns' parity rule, lm-eval arguments, sweep parsing, state and reports. Real runs of the
trl engine are in test_engine_evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qwenrecipes.check.tokens import reference_tokens
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.evaluate.benchmarks import THINK_END, model_args, parse_tasks, tokenizer_dir
from qwenrecipes.evaluate.core import EvalResult, ModelScore
from qwenrecipes.evaluate.heldout import generation_prompt, load_heldout, split_think
from qwenrecipes.evaluate.models import ModelSpec, unique_names
from qwenrecipes.evaluate.report import change_counts, plot_rows, report_markdown, row_deltas
from qwenrecipes.evaluate.sweep import SweepSpec, SweepState, absolutize, parse_range, parse_value, point_id, set_field
from qwenrecipes.evaluate.sweep_report import Point, plot_heatmap, table_text
from qwenrecipes.render.folder import render_plan, write_rendered
from qwenrecipes.run.quality import Quality, parity_problems, read_quality
from tests.conftest import TINY, tiny_plan


@pytest.fixture(scope="module")
def rendered_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir as `qwenrecipes run` lays it out before training: recipe.resolved.yaml, data/eval.jsonl."""
    plan = tiny_plan({"data": {"val_fraction": 0.1}}, target="cpu")
    folder = tmp_path_factory.mktemp("run") / "tiny-cpu-trl"
    write_rendered(plan, render_plan(plan, "trl"), folder)
    return folder


def test_heldout_uses_the_reference_tokens_and_mask(rendered_run: Path) -> None:
    held = load_heldout(rendered_run)
    assert len(held.rows) == 30 and held.train_on == "assistant" and held.chat_template == "qwen3_nothink"
    for row in held.rows:
        reference = reference_tokens(row.messages, "assistant")
        assert (row.input_ids, row.labels) == (reference.input_ids, reference.labels)
        assert 0 < row.trained_tokens < len(row.input_ids)
    assert len(held.digest) == 64


def test_heldout_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    plan = tiny_plan({}, target="cpu")
    write_rendered(plan, render_plan(plan, "trl"), tmp_path / "run")
    with pytest.raises(QwenRecipesError, match=r"no held-out split.*val_fraction"):
        load_heldout(tmp_path / "run")
    with pytest.raises(QwenRecipesError, match="not a qwenrecipes run dir"):
        load_heldout(tmp_path)


def test_generation_prompt_is_the_training_text_up_to_the_last_answer() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    text, reference = generation_prompt(messages)
    assert text == ("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
                    "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")
    assert reference == "d"
    assert split_think("<think>\nwhy\n</think>\n\nanswer") == ("why", "answer")
    assert split_think("plain") == (None, "plain")


def _quality(loss: float, digest: str = "d") -> Quality:
    return Quality(loss, 2.718 ** loss, 100, digest)


def test_parity_rule_flags_more_than_three_percent() -> None:
    assert parity_problems([("trl", _quality(2.00)), ("axolotl", _quality(2.05))]) == []
    problems = parity_problems([("trl", _quality(2.00)), ("axolotl", _quality(2.10)), ("lf", None)])
    assert len(problems) == 1 and "5.0%" in problems[0] and "axolotl" in problems[0]
    assert "not comparable" in parity_problems([("a", _quality(2.0, "x")), ("b", _quality(3.0, "y"))])[0]
    assert parity_problems([("a", _quality(2.0))]) == []


def _result(tmp_path: Path, rendered_run: Path) -> EvalResult:
    held = load_heldout(rendered_run)
    n = len(held.rows)
    base = ModelScore(ModelSpec("base", "/m", None, "float32"), 3.0, 500, [3.0] * n)
    run = ModelScore(ModelSpec("tiny-cpu-trl", "/m", "/a", "float32", rendered_run, "trl"), 2.5, 500,
                     [2.0] * (n - 2) + [3.5, 3.0])
    for score in (base, run):
        score.generations = [{"row": 1, "prompt": "<|im_start|>user\nq<|im_end|>\n", "reference": "r",
                              "text": f"answer of {score.spec.name}", "stopped_on_eos": True}]
    return EvalResult(held, [base, run], tmp_path)


def test_report_lists_improved_and_worse_samples(tmp_path: Path, rendered_run: Path) -> None:
    result = _result(tmp_path, rendered_run)
    deltas = row_deltas(result.runs[0], result.base)  # type: ignore[arg-type]
    assert change_counts(deltas) == {"improved": len(deltas) - 2, "worse": 1, "unchanged": 1}
    png = plot_rows(result, tmp_path / "eval.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report_markdown(result, png)
    assert "| tiny-cpu-trl | trl | 2.5000 |" in text and "-16.7%" in text and "+0.5000" in text
    assert "answer of base" in text and "answer of tiny-cpu-trl" in text and "![per-sample loss](eval.png)" in text


def test_read_quality_finds_the_runs_entry(tmp_path: Path, rendered_run: Path) -> None:
    document = _result(tmp_path, rendered_run).to_json()
    (tmp_path / "eval.json").write_text(json.dumps(document), encoding="utf-8")
    assert read_quality(tmp_path) is None  # the file names another run dir
    (rendered_run / "eval.json").write_text(json.dumps(document), encoding="utf-8")
    try:
        quality = read_quality(rendered_run)
        assert quality is not None and quality.loss == 2.5 and quality.base_loss == 3.0
    finally:
        (rendered_run / "eval.json").unlink()


def test_lm_eval_arguments_handle_adapter_and_think_block(tmp_path: Path) -> None:
    folder = tokenizer_dir(tmp_path / "tok", "qwen3_nothink")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|im_end|>" and "<think>" not in config["chat_template"]
    assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == config["chat_template"]
    args = model_args(ModelSpec("run", "/base", "/adapter", "float32"), folder, thinking=None)
    assert args["peft"] == "/adapter" and args["pretrained"] == "/base" and args["think_end_token"] == THINK_END
    assert "enable_thinking" not in args
    assert model_args(ModelSpec("base", "/base", None, "bfloat16"), folder, thinking=False)["enable_thinking"] is False
    assert parse_tasks("gsm8k, ifeval,") == ["gsm8k", "ifeval"]
    with pytest.raises(QwenRecipesError):
        parse_tasks(" , ")


def test_unique_names() -> None:
    assert unique_names([Path("runs/a"), Path("runs/b")]) == ["a", "b"]
    assert unique_names([Path("x/trl"), Path("y/trl")]) == ["x/trl", "y/trl"]


# ------------------------------------------------------------------------------------------------ sweep


def test_values_and_ranges_parse_like_a_person_writes_them() -> None:
    assert [parse_value(v) for v in ("8", "1e-4", "2.5", "true", "cosine")] == [8, 1e-4, 2.5, True, "cosine"]
    assert parse_range("1e-5:1e-3:log").log and not parse_range("8:64").log and parse_range("8:64").integer
    for bad in ("1", "3:1", "a:b", "1:2:lin"):
        with pytest.raises(QwenRecipesError):
            parse_range(bad)


def test_sweep_spec_points_and_errors() -> None:
    spec = SweepSpec.from_cli(TINY, "trl", grid=["method.lora.r=8,16,32", "training.learning_rate=1e-4,2e-4,5e-4"])
    points = spec.points()
    assert len(points) == 9 and points[0] == {"method.lora.r": 8, "training.learning_rate": 1e-4}
    assert len({point_id(p) for p in points}) == 9 and point_id(points[0]) == point_id(dict(points[0]))
    with pytest.raises(QwenRecipesError, match="FIELD=VALUE"):
        SweepSpec.from_cli(TINY, "trl", grid=["method.lora.r"])
    with pytest.raises(QwenRecipesError, match="optuna"):
        SweepSpec.from_cli(TINY, "trl", grid=[], params=["training.learning_rate=1e-5:1e-3"])
    with pytest.raises(QwenRecipesError, match="nothing to sweep"):
        SweepSpec.from_cli(TINY, "trl", grid=[])


def test_point_recipes_run_from_anywhere(tmp_path: Path) -> None:
    from qwenrecipes.evaluate.sweep import point_document, write_recipe
    from qwenrecipes.recipe.plan import plan_recipe

    spec = SweepSpec.from_cli(TINY, "trl", grid=["method.lora.r=4"], fixed=["data.val_fraction=0.1"])
    document = point_document(spec, spec.points()[0])
    assert Path(document["data"]["train"]["path"]).is_absolute()
    assert document["method"]["lora"]["r"] == 4 and document["data"]["val_fraction"] == 0.1
    path = write_recipe(tmp_path / "elsewhere" / "recipe.yaml", document, "a point")
    assert plan_recipe(path, target="cpu").eval_rows
    bad = SweepSpec.from_cli(TINY, "trl", grid=["method.lora.r=abc"])
    with pytest.raises(QwenRecipesError):
        point_document(bad, bad.points()[0])
    assert absolutize({"model": {"name_or_path": "builtin:tiny-qwen3"}}, TINY)["model"]["name_or_path"] == \
        "builtin:tiny-qwen3"
    document = {"a": {"b": 1}}
    set_field(document, "a.c.d", 2)
    assert document == {"a": {"b": 1, "c": {"d": 2}}}


def test_sweep_state_resumes_and_refuses_another_sweep(tmp_path: Path) -> None:
    state = SweepState(tmp_path, {"grid": 1})
    state.update("p1", status="done", loss=1.0)
    assert SweepState(tmp_path, {"grid": 1}).points["p1"]["status"] == "done"
    with pytest.raises(QwenRecipesError, match="different sweep"):
        SweepState(tmp_path, {"grid": 2})


def test_sweep_table_and_heatmap(tmp_path: Path) -> None:
    keys = ["method.lora.r", "training.learning_rate"]
    points = [Point(f"p{i}", {"method.lora.r": r, "training.learning_rate": lr}, "done", 1.0 + i / 10, 3.0, 2.0, "")
              for i, (r, lr) in enumerate((r, lr) for r in (8, 16) for lr in (1e-4, 1e-3))]
    points.append(Point("px", {"method.lora.r": 32, "training.learning_rate": 1e-4}, "failed", None, None, None, ""))
    table = table_text(keys, points).splitlines()
    assert table[2].startswith("| 8 | 0.0001 | 1.0000") and table[-1].endswith("failed |")
    png = plot_heatmap(keys, points, tmp_path / "sweep.png")
    assert png is not None and png.stat().st_size > 1000
    assert plot_heatmap(keys[:1], points, tmp_path / "line.png") is not None


def test_best_recipe_yaml_is_a_valid_recipe(tmp_path: Path) -> None:
    from qwenrecipes.evaluate.sweep_report import write_report
    from qwenrecipes.recipe.load import load_recipe

    spec = SweepSpec.from_cli(TINY, "trl", grid=["method.lora.r=8,16"], out=tmp_path)
    state = SweepState(tmp_path, spec.identity())
    for overrides, loss in zip(spec.points(), (2.0, 1.5), strict=True):
        state.update(point_id(overrides), overrides=overrides, label=str(overrides), status="done", loss=loss)
    result = write_report(spec, state)
    assert result.best is not None and result.best.overrides == {"method.lora.r": 16}
    assert result.best_recipe is not None and load_recipe(result.best_recipe).method["lora"]["r"] == 16
    assert yaml.safe_load(result.best_recipe.read_text(encoding="utf-8"))["name"] == "tiny-cpu"
    assert (tmp_path / "sweep.md").read_text(encoding="utf-8").count("| done |") == 2


def test_bench_report_gains_held_out_loss_and_flags_engines_apart(tmp_path: Path) -> None:
    from qwenrecipes.bench.report import add_quality, report_markdown

    rows = []
    for engine, loss in (("trl", 2.0), ("axolotl", 2.2), ("llamafactory", None)):
        run_dir = tmp_path / engine
        run_dir.mkdir()
        if loss is not None:
            models = [{"name": engine, "run_dir": str(run_dir), "loss": loss, "perplexity": 7.0, "tokens": 9}]
            (run_dir / "eval.json").write_text(json.dumps({"kind": "qwenrecipes-eval", "heldout": {"sha256": "s"},
                                                           "base": None, "models": models}), encoding="utf-8")
        rows.append({"engine": engine, "label": "default", "method": "lora", "seq_len": 512, "status": "ok",
                     "run_dir": str(run_dir)})
    add_quality(rows)
    assert [r.get("heldout_loss") for r in rows] == [2.0, 2.2, None]
    text = report_markdown(rows, [])
    assert "| 2.0000 |" in text and "| 2.2000 |" in text
    assert "held-out loss differs by 10.0% (> 3%): axolotl 2.2000 vs trl 2.0000" in text
