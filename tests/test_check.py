"""`qwenrecipes check` and `compare`: the reference rule, residual classification and diffs (fast), and each
engine's own preprocessing on every shipped recipe plus deliberately mis-rendered configs (`engine` marker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qwenrecipes.check import tokens as checkmod
from qwenrecipes.check.tokens import (
    IGNORE,
    Sample,
    Tokens,
    build_samples,
    check_recipe,
    compare_tokens,
    describe_difference,
    reference_tokens,
)
from qwenrecipes.cli.check import check, compare
from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer
from qwenrecipes.recipe.plan import plan_recipe
from tests.conftest import EXAMPLE_RECIPES, RECIPES, target_for, tiny_plan

TINY = RECIPES / "tiny-cpu.yaml"
QLORA = RECIPES / "qwen3-4b-qlora.yaml"  # chat_template qwen3: the think block case
CPU_ENGINES = ["axolotl", "llamafactory", "trl", "unsloth", "swift"]
# Engines whose config can be mis-rendered to train the user turns (_misrender); the others are checked as rendered.
MISRENDER_ENGINES = ["axolotl", "llamafactory", "trl"]
CPU_RECIPES = [p for p in EXAMPLE_RECIPES if target_for(p) == "cpu"]
# Every engine's shipped-recipe check is a real run of its data path (minutes on 2 cores): the first three engines
# on every example, Unsloth and ms-swift (slow to import) on the CPU examples they run here.
SHIPPED_CASES = [pytest.param(recipe, engine, id=f"{recipe.stem}-{engine}")
                 for engine in CPU_ENGINES
                 for recipe in (EXAMPLE_RECIPES if engine in MISRENDER_ENGINES else CPU_RECIPES)]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye."}]


def _decode(ids: list[int]) -> str:
    return load_qwen3_tokenizer().decode(ids, skip_special_tokens=False)


def _trained_text(tokens: Tokens) -> str:
    return _decode([t for t in tokens.labels if t != IGNORE])


# ----------------------------------------------------------------------------------------------- reference


def test_reference_trains_assistant_content_and_im_end_only() -> None:
    reference = reference_tokens(CONVERSATION, "assistant")
    assert _decode(reference.input_ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\nBye.<|im_end|>\n")
    assert _trained_text(reference) == "Hello!<|im_end|>Bye.<|im_end|>"
    # Masked labels are -100, trained ones the token itself (no shift: engines shift inside the model).
    assert all(label in (IGNORE, token) for token, label in zip(reference.input_ids, reference.labels, strict=True))


def test_reference_train_on_all_trains_every_token() -> None:
    reference = reference_tokens(CONVERSATION, "all")
    assert reference.labels == reference.input_ids


def test_reference_empty_assistant_turn_trains_only_im_end() -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]
    assert _trained_text(reference_tokens(messages, "assistant")) == "<|im_end|>"


def test_samples_cover_hard_cases_through_the_think_rule() -> None:
    plan = plan_recipe(QLORA, target="cuda")
    samples = {s.name: s for s in build_samples(plan, data_samples=2)}
    assert {"system_prompt", "multi_turn", "reasoning_content", "inline_think", "empty_assistant_turn", "unicode",
            "long_turn"} <= set(samples)
    assert sum(s.source == "data" for s in samples.values()) == 2
    # qwenrecipes' rule is in the text: every assistant turn opens with a think block.
    for sample in samples.values():
        for message in sample.messages:
            if message["role"] == "assistant":
                assert message["content"].startswith("<think>\n") and "\n</think>\n\n" in message["content"]
    assert samples["reasoning_content"].messages[1]["content"] == "<think>\n17 * 3 = 51.\n</think>\n\n51."
    assert samples["inline_think"].messages[1]["content"] == "<think>\n91 = 7 * 13.\n</think>\n\nNo, 91 = 7 × 13."
    assert samples["empty_assistant_turn"].messages[1]["content"] == "<think>\n\n</think>\n\n"
    # The longest row qwenrecipes keeps: exactly max_seq_length tokens.
    long_ids = reference_tokens(samples["long_turn"].messages, "assistant").input_ids
    assert len(long_ids) == plan.recipe.data["max_seq_length"]


def test_nothink_samples_have_no_reasoning_cases() -> None:
    names = {s.name for s in build_samples(plan_recipe(TINY, target="cpu"))}
    assert "reasoning_content" not in names and "inline_think" not in names
    assert {"empty_assistant_turn", "long_turn", "unicode"} <= names


# ----------------------------------------------------------------------------------------------- comparison


def _sample() -> Sample:
    return Sample("conv", "builtin", CONVERSATION)


def test_equal_tokens_are_equal() -> None:
    reference = reference_tokens(CONVERSATION, "assistant")
    assert compare_tokens("trl", _sample(), reference, reference, "assistant").status == "equal"


def test_llamafactory_trailing_newline_is_a_known_residual_not_a_failure() -> None:
    reference = reference_tokens(CONVERSATION, "assistant")
    newline = load_qwen3_tokenizer().token_to_id("Ċ")
    labels = list(reference.labels)
    for i in range(len(labels) - 1):
        if labels[i] == load_qwen3_tokenizer().token_to_id("<|im_end|>"):
            labels[i + 1] = newline
    lf = Tokens(reference.input_ids, labels)
    result = compare_tokens("llamafactory", _sample(), reference, lf, "assistant")
    assert result.status == "residual" and result.residuals == ["trailing_newline"]
    assert "trained where it should be masked: 2 tokens in 2 spans" in result.diff  # still shown
    # The same labels from any other engine are a mismatch: the residual is LF's alone.
    assert compare_tokens("trl", _sample(), reference, lf, "assistant").status == "mismatch"


def test_axolotl_empty_assistant_turn_is_a_known_residual() -> None:
    messages = [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""},
                {"role": "user", "content": "Now say ok."}, {"role": "assistant", "content": "ok"}]
    sample = Sample("empty", "builtin", messages)
    reference = reference_tokens(messages, "assistant")
    im_end = load_qwen3_tokenizer().token_to_id("<|im_end|>")
    first_trained = reference.labels.index(im_end)  # the empty turn's <|im_end|>
    labels = list(reference.labels)
    labels[first_trained] = IGNORE
    result = compare_tokens("axolotl", sample, reference, Tokens(reference.input_ids, labels), "assistant")
    assert result.status == "residual" and result.residuals == ["empty_turn_masked"]
    assert "masked where it should be trained: 1 tokens in 1 spans" in result.diff
    # Masking a non-empty turn's <|im_end|> is still a failure.
    labels = list(reference.labels)
    labels[len(labels) - 2] = IGNORE
    assert _decode([reference.input_ids[len(labels) - 2]]) == "<|im_end|>"
    assert compare_tokens("axolotl", sample, reference, Tokens(reference.input_ids, labels),
                          "assistant").status == "mismatch"


def test_trained_user_turn_is_a_mismatch_with_a_readable_diff() -> None:
    reference = reference_tokens(CONVERSATION, "assistant")
    wrong = Tokens(reference.input_ids, reference_tokens(CONVERSATION, "all").labels)
    result = compare_tokens("axolotl", _sample(), reference, wrong, "assistant")
    assert result.status == "mismatch"
    assert "trained where it should be masked" in result.diff
    assert "'<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'" \
        in result.diff
    assert "around token 0 (+ trained, · masked):" in result.diff
    assert "masked where it should be trained" not in result.diff


def test_masked_assistant_turn_is_reported_the_other_way() -> None:
    reference = reference_tokens(CONVERSATION, "assistant")
    labels = [IGNORE] * len(reference.labels)
    diff = describe_difference(reference, Tokens(reference.input_ids, labels))
    assert "masked where it should be trained: 7 tokens in 2 spans" in diff
    assert "'Hello!<|im_end|>'" in diff and "'Bye.<|im_end|>'" in diff


def test_different_input_ids_show_decoded_tokens_at_the_first_divergence() -> None:
    reference = reference_tokens(CONVERSATION, "assistant")
    ids = list(reference.input_ids)
    ids.insert(3, load_qwen3_tokenizer().token_to_id("<|endoftext|>"))
    diff = describe_difference(reference, Tokens(ids, [IGNORE] * len(ids)))
    assert diff.startswith("input_ids differ from token 3 (engine")
    assert "'<|endoftext|>'" in diff


# ---------------------------------------------------------------------------------------------------- CLI


def _fake_engine(monkeypatch: pytest.MonkeyPatch, make_labels: str) -> None:
    """run_engine replaced by the reference itself (or every token trained): no env needed."""
    def fake(plan: object, engine: str, samples: list[Sample], **_: object) -> list[Tokens]:
        out = []
        for sample in samples:
            reference = reference_tokens(sample.messages, "assistant")
            labels = reference.labels if make_labels == "reference" else list(reference.input_ids)
            out.append(Tokens(reference.input_ids, labels))
        return out

    monkeypatch.setattr(checkmod, "run_engine", fake)
    monkeypatch.setattr("qwenrecipes.run.envs.env_for", lambda engine: None)


def test_cli_check_passes_when_every_engine_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_engine(monkeypatch, "reference")
    result = CliRunner().invoke(check, [str(TINY), "--engines", "trl,axolotl", "--target", "cpu", "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "trl: 12 equal" in result.output and "every checked engine matches" in result.output


def test_cli_check_exits_1_with_diff_on_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_engine(monkeypatch, "all")
    result = CliRunner().invoke(check, [str(TINY), "--engines", "trl", "--target", "cpu", "-n", "1"])
    assert result.exit_code == 1, result.output
    assert "MISMATCH" in result.output and "trained where it should be masked" in result.output


def test_cli_check_summarises_per_engine_and_verbose_lists_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_engine(monkeypatch, "all")
    args = [str(TINY), "--engines", "trl", "--target", "cpu", "-n", "1"]
    summary = CliRunner().invoke(check, args).output
    assert "trl: 12 MISMATCH" in summary and summary.count("MISMATCH") == 1 + 5  # the counts, the first 5 rows
    assert "... 7 more rows differ (--verbose lists every row)" in summary and "data_row_1" in summary
    verbose = CliRunner().invoke(check, [*args, "--verbose"]).output
    assert verbose.count("MISMATCH") == 1 + 12 and "more rows differ" not in verbose
    _fake_engine(monkeypatch, "reference")
    equal = CliRunner().invoke(check, args).output
    assert "data_row_1" not in equal and "data_row_1" in CliRunner().invoke(check, [*args, "-v"]).output


def test_cli_check_json_has_ids_labels_and_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_engine(monkeypatch, "reference")
    result = CliRunner().invoke(check, [str(TINY), "--engines", "trl", "--target", "cpu", "-n", "1", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is True
    first = document["samples"][0]
    assert set(first["reference"]) == {"input_ids", "labels"}
    assert first["engines"]["trl"]["status"] == "equal"
    assert first["engines"]["trl"]["labels"] == first["reference"]["labels"]
    assert IGNORE in first["reference"]["labels"]


def test_named_engine_without_env_is_an_error_default_list_skips_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenrecipes.errors import EngineError

    def missing(engine: str) -> None:
        raise EngineError(f"the {engine} environment is not installed")

    monkeypatch.setattr("qwenrecipes.run.envs.env_for", missing)
    plan = plan_recipe(TINY, target="cpu")
    named = check_recipe(plan, ["unsloth"], data_samples=0)
    assert not named.ok and named.engines[0].status == "error"
    default = check_recipe(plan, data_samples=0)
    assert default.ok and {e.status for e in default.engines} == {"skipped"}


# ------------------------------------------------------------------------------------------------ compare


def _fake_run(path: Path, engine: str, losses: list[float]) -> Path:
    path.mkdir(parents=True)
    (path / ".qwenrecipes-run.json").write_text(json.dumps({"kind": "qwenrecipes-run", "engine": engine}))
    events = [{"v": 1, "t": 100.0 + i, "type": "train", "step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (path / "summary.json").write_text(json.dumps({"status": "ok", "wall_time_s": 12.5, "tokens_per_s": 321.0}))
    return path


def test_compare_table_and_png(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "a", "axolotl", [2.0, 1.5, 1.2])
    b = _fake_run(tmp_path / "b", "trl", [2.01, 1.6, 1.25])
    png = tmp_path / "out" / "cmp.png"
    result = CliRunner().invoke(compare, [str(a), str(b), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "axolotl" in result.output and "2.0000" in result.output and "1.2500" in result.output
    assert "first loss 0.50%" in result.output
    rows = json.loads(CliRunner().invoke(compare, [str(a), str(b), "-o", str(png), "--json"]).stdout)["runs"]
    assert rows[0] == {"run": str(a), "engine": "axolotl", "status": "ok", "steps": 3, "first_loss": 2.0,
                       "final_loss": 1.2, "min_loss": 1.2, "wall_time_s": 12.5, "tokens_per_s": 321.0,
                       "heldout_loss": None, "perplexity": None}  # not scored by `qwenrecipes eval`


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from qwenrecipes.errors import QwenRecipesError
    from qwenrecipes.run.compare import compare_runs

    with pytest.raises(QwenRecipesError, match="not a qwenrecipes run dir"):
        compare_runs([tmp_path])


# ---------------------------------------------------------------------------------- engines (real envs)


def _require_env(engine: str) -> None:
    from qwenrecipes.errors import EngineError
    from qwenrecipes.run import envs

    try:
        envs.env_for(engine)
    except EngineError as exc:
        pytest.skip(f"{engine} env not installed (`qwenrecipes env install {engine}`): {exc}")


def _failures(report: checkmod.CheckReport) -> str:
    lines = []
    for engine in report.engines:
        if engine.status == "error":
            lines.append(f"{engine.engine}: {engine.reason}\n{engine.detail}")
        lines += [f"{engine.engine} {r.sample}: {r.status}\n{r.diff}" for r in engine.results
                  if r.status not in ("equal", "residual")]
    return "\n".join(lines)


@pytest.mark.engine
@pytest.mark.parametrize(("recipe", "engine"), SHIPPED_CASES)
def test_check_passes_on_shipped_recipe(recipe: Path, engine: str) -> None:
    """GPU recipes are resolved for cuda; their preprocessing runs on CPU (precision overridden in the copy).
    Every example hands the engines tokens, so every row is equal, with no residual (the text handoff's, such as
    LLaMA-Factory's trailing newline or Axolotl's empty turn, cannot show)."""
    _require_env(engine)
    report = check_recipe(plan_recipe(recipe, target=target_for(recipe)), [engine], data_samples=2)
    assert report.ok, _failures(report)
    (engine_report,) = report.engines
    assert engine_report.handoff == "tokens"
    assert engine_report.results
    assert all(r.status == "equal" and not r.residuals for r in engine_report.results), _failures(report)


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["trl", "llamafactory"])
def test_check_of_a_packed_recipe_compares_rows(engine: str) -> None:
    """A packed recipe is checked row by row (its bins are those rows concatenated): the engine is handed the
    samples, not the plan's bins, so it returns exactly one tokenized row per sample."""
    _require_env(engine)
    plan = tiny_plan({"data": {"packing": True}}, target="cpu")
    assert plan.packing is not None
    report = check_recipe(plan, [engine], data_samples=3)
    assert report.ok, _failures(report)
    (engine_report,) = report.engines
    assert engine_report.handoff == "tokens"
    assert engine_report.results and all(r.status == "equal" for r in engine_report.results), _failures(report)


def _misrender(monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    """Train the user turns too, the way a hand-written config typically gets it wrong."""
    if engine == "axolotl":
        from qwenrecipes.engines.axolotl.engine import AxolotlEngine

        original = AxolotlEngine.sections

        def axolotl_sections(self: AxolotlEngine, plan: object) -> list[tuple[str, dict[str, object]]]:
            sections = original(self, plan)  # type: ignore[arg-type]
            for _, section in sections:
                for dataset in section.get("datasets") or []:
                    dataset["roles_to_train"] = ["assistant", "user"]
                if "train_on_inputs" in section:
                    section["train_on_inputs"] = True
            return sections

        monkeypatch.setattr(AxolotlEngine, "sections", axolotl_sections)
    elif engine == "llamafactory":
        from qwenrecipes.engines.llamafactory.engine import LlamaFactoryEngine

        original_lf = LlamaFactoryEngine.sections

        def lf_sections(self: LlamaFactoryEngine, plan: object) -> list[tuple[str, dict[str, object]]]:
            sections = original_lf(self, plan)  # type: ignore[arg-type]
            for _, section in sections:
                if "train_on_prompt" in section:
                    section["train_on_prompt"] = True
            return sections

        monkeypatch.setattr(LlamaFactoryEngine, "sections", lf_sections)
    else:
        from qwenrecipes.engines.trl import engine as trl_engine

        original_trl = trl_engine._sections

        def trl_sections(plan: object, tokens: bool) -> dict[str, dict[str, object]]:
            sections = original_trl(plan, tokens)  # type: ignore[arg-type]
            sections["template"]["assistant_only_loss"] = False
            return sections

        monkeypatch.setattr(trl_engine, "_sections", trl_sections)


@pytest.mark.engine
@pytest.mark.parametrize("engine", MISRENDER_ENGINES)
def test_check_fails_with_readable_diff_on_misrendered_config(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mis-set mask in the engine's config matters when the engine masks the text itself (data.handoff: text):
    check catches it. (Under the token handoff the engine never masks, so the same config cannot mis-train.)"""
    _require_env(engine)
    _misrender(monkeypatch, engine)
    report = check_recipe(tiny_plan({}, target="cpu"), [engine], data_samples=1)
    assert report.engines[0].handoff == "text"
    assert not report.ok
    if engine == "llamafactory" and report.engines[0].status == "error":
        # Known gap of the text handoff only: LLaMA-Factory's own text path drops one built-in hard case, so check
        # stops at the row count before comparing rows. The token handoff (the default) carries every row.
        pytest.xfail(report.engines[0].reason)
    result = next(r for r in report.engines[0].results if r.sample == "system_prompt")
    assert result.status == "mismatch", result.diff
    assert "trained where it should be masked" in result.diff
    # The user's words are named in the diff.
    assert "What is the boiling point of water at sea level?" in result.diff
