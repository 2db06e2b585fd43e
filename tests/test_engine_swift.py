"""swift (ms-swift) engine: render plans and read them back (no swift import), its recorded log into events, and
(marked engine, needs `qwenrecipes env install swift`) swift's own argument parser, its own preprocessing in
`check`, and real CPU runs of recipes/tiny-cpu.yaml: every step in events.jsonl, summary, interrupt, resume and a
classified failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.engines.swift import ENGINE
from qwenrecipes.engines.swift.effective import SWIFT_DEFAULTS
from qwenrecipes.errors import RecipeError
from qwenrecipes.recipe.concepts import (
    CONCEPTS,
    LOSS_MASK_ALL,
    LOSS_MASK_ASSISTANT,
    LOSS_MASK_TOKENS,
    PACKING_BINS,
    THINK_INLINE,
    TRUNCATION_NONE,
)
from qwenrecipes.recipe.plan import Plan, plan_recipe
from qwenrecipes.run.events import iter_log_lines, normalize, read_events
from qwenrecipes.run.procgroup import group_alive
from tests.conftest import TINY, cuda_plan, render_resolved, tiny_plan
from tests.packing_checks import (
    assert_bins_side_by_side,
    first_step_losses,
    run_packed,
    trainer_batches,
)

FIXTURES = Path(__file__).parent / "fixtures"
LOG = FIXTURES / "logs" / "swift_tiny_lora.log"  # engine.log of a real `qwenrecipes run recipes/tiny-cpu.yaml -e swift`
EXPECTED = FIXTURES / "events" / "swift_tiny_lora.json"
RUN_TIMEOUT = 1800  # one tiny run on a 2-core machine shared with other jobs

# SftArguments fields of ms-swift 4.6.0 we may write; a key outside this set would be a leftover argument swift refuses.
KNOWN_KEYS = {
    "model", "model_type", "torch_dtype", "attn_impl", "use_hf", "check_model", "tuner_type", "lora_rank",
    "lora_alpha", "lora_dropout", "lora_bias", "target_modules", "modules_to_save", "use_dora", "use_rslora",
    "quant_method", "quant_bits", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
    "dataset", "val_dataset", "split_dataset_ratio", "custom_register_path", "template", "loss_scale", "max_length",
    "truncation_strategy", "strict", "packing", "padding_free", "dataset_shuffle", "val_dataset_shuffle",
    "train_dataloader_shuffle", "lazy_tokenize", "dataset_num_proc", "load_from_cache_file",
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_steps",
    "num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps", "optim", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "bf16", "fp16", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "seed", "data_seed", "use_liger_kernel", "output_dir", "add_version",
    "create_checkpoint_symlink", "logging_strategy", "logging_steps", "logging_first_step", "save_strategy",
    "save_steps", "save_total_limit", "save_only_model", "eval_strategy", "eval_steps", "report_to",
    "dataloader_num_workers", "deepspeed", "fsdp", "ddp_find_unused_parameters",
}


@pytest.fixture(scope="module")
def cpu_plan() -> Plan:
    return plan_recipe(TINY, target="cpu")  # data.handoff: tokens (the default)


@pytest.fixture(scope="module")
def text_plan() -> Plan:
    return tiny_plan({"data": {"handoff": "text"}}, target="cpu")


def config_of(files: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(files["swift_sft.yaml"])


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in _walk(item)]
    if isinstance(value, list):
        return [v for item in value for v in _walk(item)]
    return [value]


# ------------------------------------------------------------------------------------------------ render


def test_cpu_render_every_knob_explicit(text_plan: Plan) -> None:
    cpu_plan = text_plan
    files = render_resolved(ENGINE, cpu_plan)
    assert set(files) == {"swift_sft.yaml", "qwenrecipes_template.py", "train_swift.py"}
    c = config_of(files)
    assert set(c) <= KNOWN_KEYS, set(c) - KNOWN_KEYS
    assert None not in _walk(c), "a null would reach swift as the string 'None'"
    assert (c["model"], c["model_type"], c["torch_dtype"], c["check_model"]) == (cpu_plan.model_path, "qwen3",
                                                                                 "float32", False)
    assert c["tuner_type"] == "lora" and (c["lora_rank"], c["lora_alpha"], c["lora_dropout"]) == (8, 16, 0.0)
    assert c["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert c["dataset"] == ["data/train.jsonl"] and "val_dataset" not in c and c["split_dataset_ratio"] == 0.0
    assert (c["template"], c["custom_register_path"], c["loss_scale"]) == ("qwenrecipes_chatml",
                                                                           ["qwenrecipes_template.py"], "default")
    assert c["dataset_shuffle"] is False and c["train_dataloader_shuffle"] is False and c["strict"] is True
    # swift's own defaults differ from the HF Trainer's: every one is written.
    assert c["gradient_accumulation_steps"] == 1 and c["lr_scheduler_type"] == "cosine"
    assert (c["weight_decay"], c["adam_beta1"], c["adam_beta2"], c["adam_epsilon"]) == (0.0, 0.9, 0.999, 1e-08)
    assert c["gradient_checkpointing"] is False and "gradient_checkpointing_kwargs" not in c
    assert (c["max_steps"], c["warmup_steps"], c["learning_rate"], c["optim"]) == (30, 3, 0.001, "adamw_torch")
    assert (c["logging_steps"], c["logging_first_step"], c["add_version"]) == (1, False, False)
    assert (c["save_strategy"], c["save_steps"], c["save_total_limit"]) == ("steps", 10, 2)
    assert c["eval_strategy"] == "no" and c["report_to"] == ["none"] and c["output_dir"] == "outputs"
    assert c["bf16"] is False and c["fp16"] is False and c["seed"] == 42 and c["data_seed"] == 42


def test_token_handoff_rows_and_template(cpu_plan: Plan) -> None:
    c = config_of(render_resolved(ENGINE, cpu_plan))
    assert c["dataset"] == ["data/train.tokens.jsonl"] and c["template"] == "qwenrecipes_tokens"
    assert c["custom_register_path"] == ["qwenrecipes_template.py"] and c["strict"] is True
    row = ENGINE.token_row([1, 2, 3], [-100, 2, 3])
    assert row["messages"][0] == {"role": "user", "content": ""}
    assert row["messages"][1]["content"] == {"token_ids": [1, 2, 3], "loss_scale": [0, 1, 1]}


@pytest.mark.parametrize("name", ["qwenrecipes_template.py", "train_swift.py"])
def test_python_files_hold_no_recipe_value(cpu_plan: Plan, name: str) -> None:
    text = render_resolved(ENGINE, cpu_plan)[name]
    compile(text, name, "exec")
    assert cpu_plan.model_path not in text
    other = render_resolved(ENGINE, cuda_plan(method={"type": "qlora"}))[name]
    assert text.splitlines()[1:] == other.splitlines()[1:]  # only the header line names the recipe


def test_command_and_environment(cpu_plan: Plan) -> None:
    assert ENGINE.command(cpu_plan) == ["python", "train_swift.py", "swift_sft.yaml"]
    assert ENGINE.command(cpu_plan, "outputs/checkpoint-10") == [
        "python", "train_swift.py", "swift_sft.yaml", "--resume_from_checkpoint", "outputs/checkpoint-10"]
    env = ENGINE.environment(cpu_plan)
    assert env["USE_HF"] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    ddp = cuda_plan(distributed={"gpus": 2, "strategy": "ddp"})
    assert ENGINE.command(ddp)[:2] == ["torchrun", "--nproc_per_node=2"]
    assert ENGINE.command(ddp)[-2:] == ["train_swift.py", "swift_sft.yaml"]
    assert "CUDA_VISIBLE_DEVICES" not in ENGINE.environment(ddp)


def test_effective_cpu(cpu_plan: Plan, text_plan: Plan) -> None:
    assert ENGINE.effective(render_resolved(ENGINE, text_plan))["loss_mask"] == LOSS_MASK_ASSISTANT
    eff = ENGINE.effective(render_resolved(ENGINE, cpu_plan))
    assert set(eff) == set(CONCEPTS)
    assert eff["loss_mask"] == LOSS_MASK_TOKENS and eff["think_handling"] == THINK_INLINE
    assert eff["truncation"] == TRUNCATION_NONE and eff["precision"] == "fp32" and eff["method"] == "lora"
    assert eff["effective_batch"] == cpu_plan.effective_batch and eff["max_steps"] == 30
    assert eff["save_steps"] == 10 and eff["eval_steps"] is None and eff["distributed"] == "none"


def test_effective_applies_swift_defaults_for_missing_keys(text_plan: Plan) -> None:
    files = render_resolved(ENGINE, text_plan)
    c = config_of(files)
    for key in ("gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "lora_alpha", "template",
                "learning_rate", "logging_steps"):
        c.pop(key)
    eff = ENGINE.effective({**files, "swift_sft.yaml": yaml.safe_dump(c)})
    assert eff["gradient_accumulation_steps"] == 4  # swift: ceil(16 / micro-batch 4)
    assert eff["scheduler"] == SWIFT_DEFAULTS["lr_scheduler_type"] == "cosine" and eff["weight_decay"] == 0.1
    assert eff["lora_alpha"] == 32 and eff["learning_rate"] == 1e-4 and eff["logging_steps"] == 5
    assert eff["think_handling"] != THINK_INLINE  # swift's qwen3 template adds empty think blocks


def test_qlora_zero2_two_gpus() -> None:
    plan = cuda_plan(method={"type": "qlora", "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                                               "compute_dtype": "bfloat16"}},
                     distributed={"gpus": 2, "strategy": "deepspeed_zero2"},
                     training={"gradient_accumulation_steps": 1, "gradient_checkpointing": True})
    files = render_resolved(ENGINE, plan)
    c = config_of(files)
    assert (c["quant_method"], c["quant_bits"], c["bnb_4bit_use_double_quant"]) == ("bnb", 4, True)
    assert c["bf16"] is True and c["optim"] == "adamw_8bit" and c["deepspeed"] == "deepspeed.json"
    assert c["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert json.loads(files["deepspeed.json"])["zero_optimization"]["stage"] == 2
    from qwenrecipes.render.folder import render_plan

    eff = ENGINE.effective(dict(render_plan(plan, "swift").files))  # COMMAND: torchrun --nproc_per_node=2
    assert eff["method"] == "qlora" and eff["distributed"] == "deepspeed_zero2" and eff["gpus"] == 2
    assert eff["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}


def test_fsdp_moves_checkpointing_into_its_config() -> None:
    plan = cuda_plan(distributed={"gpus": 2, "strategy": "fsdp"}, training={"gradient_checkpointing": True})
    files = render_resolved(ENGINE, plan)
    assert config_of(files)["fsdp"] == "fsdp.json" and config_of(files)["gradient_checkpointing"] is False
    assert json.loads(files["fsdp.json"])["fsdp_config"]["activation_checkpointing"] is True
    assert ENGINE.effective(files)["gradient_checkpointing"] is True


def test_train_on_all_eval_full() -> None:
    plan = tiny_plan({"method": {"type": "full"}, "data": {"train_on": "all", "val_fraction": 0.1, "handoff": "text"},
                      "training": {"eval_steps": 5, "max_steps": None, "warmup_steps": 0, "epochs": 2}})
    files = render_resolved(ENGINE, plan)
    c = config_of(files)
    assert c["tuner_type"] == "full" and "lora_rank" not in c and c["loss_scale"] == "all"
    assert c["packing"] is False and c["val_dataset"] == ["data/eval.jsonl"]
    assert c["eval_strategy"] == "steps" and c["eval_steps"] == 5
    assert plan.max_steps and c["max_steps"] == plan.max_steps and c["num_train_epochs"] == 2.0  # 2 epochs of rows
    eff = ENGINE.effective(files)
    assert eff["loss_mask"] == LOSS_MASK_ALL and eff["method"] == "full" and eff["max_steps"] == plan.max_steps


def test_packed_render_reads_the_bins_through_the_bins_template() -> None:
    # qwenrecipes' bins (tokenpath.py): the bins template's rows; swift's own packer and its padding_free
    # flag (flash attention only) stay off, and explain reports qwenrecipes' bins.
    plan = tiny_plan({"data": {"packing": True}}, target="cpu")
    assert plan.packing is not None
    files = render_resolved(ENGINE, plan)
    c = config_of(files)
    assert c["template"] == "qwenrecipes_bins" and c["packing"] is False and c["padding_free"] is False
    assert c["dataset"] == ["data/train.tokens.jsonl"] and c["max_steps"] == plan.max_steps
    assert "class QwenRecipesBins(Template)" in files["qwenrecipes_template.py"]
    eff = ENGINE.effective(files)
    assert eff["packing"] == PACKING_BINS and eff["loss_mask"] == LOSS_MASK_TOKENS
    row = ENGINE.packed_row(PackedRow([1, 2, 3, 4, 5], [-100, 2, 3, -100, 5], [0, 1, 2, 0, 1], [3, 2]))
    user = {"role": "user", "content": ""}
    assert row["messages"] == [
        user, {"role": "assistant", "content": {"token_ids": [1, 2, 3], "loss_scale": [0, 1, 1]}},
        user, {"role": "assistant", "content": {"token_ids": [4, 5], "loss_scale": [0, 1]}}]


def test_packing_with_an_unverified_attention_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"model\.attn: swift: flash_attention_2 is not verified"):
        render_resolved(ENGINE, cuda_plan(data={"packing": True}, model={"attn": "flash_attention_2"}))


def test_hostile_strings_stay_data() -> None:
    hostile = "out'\"{{ x }}: [a, b] # c '''\"\"\"__import__('os') $HOME {y}"
    plan = cuda_plan(output={"dir": hostile})
    files = render_resolved(ENGINE, plan)
    assert config_of(files)["output_dir"] == hostile
    compile(files["qwenrecipes_template.py"], "qwenrecipes_template.py", "exec")
    assert ENGINE.effective(files)["model"] == plan.model_path


# ------------------------------------------------------------------------------------------------- events


def _events() -> list[dict[str, Any]]:
    return list(normalize("swift", iter_log_lines(LOG.read_bytes())))


def test_recorded_log_matches_expected_events() -> None:
    events = _events()
    if os.environ.get("QWENRECIPES_UPDATE_FIXTURES"):
        EXPECTED.write_text(json.dumps(events, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert events == json.loads(EXPECTED.read_text(encoding="utf-8"))


def test_recorded_log_has_every_step() -> None:
    events = _events()
    train = [e for e in events if e["type"] == "train"]
    assert [e["step"] for e in train] == list(range(1, 31))
    # swift's own step counter agrees with the normalizer's numbering.
    assert [e["global_step_max_steps"] for e in train] == [f"{n}/30" for n in range(1, 31)]
    assert all(isinstance(e["loss"], float) and isinstance(e["lr"], float) for e in train)
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [10, 20, 30]
    assert not [e for e in events if e["type"] == "error"]


def test_memory_is_a_fallback_figure() -> None:
    from qwenrecipes.run.events import parse_line

    line = "{'loss': '11.92', 'grad_norm': '0.72', 'learning_rate': '0.0001', 'memory(GiB)': '3.5', 'epoch': '0.01'}"
    (event,) = parse_line("swift", line)
    assert event["type"] == "train" and event["memory_gb"] == 3.5 and event["loss"] == 11.92


# ---------------------------------------------------------------------------------- the real engine (CPU)


def _require_env() -> None:
    from qwenrecipes.errors import EngineError
    from qwenrecipes.run import envs

    try:
        envs.env_for("swift")
    except EngineError as exc:
        pytest.skip(f"swift env not installed: {exc}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from qwenrecipes.cli import main; main()", *args]


@pytest.mark.engine
def test_native_validation_accepts_and_rejects(cpu_plan: Plan, tmp_path: Path) -> None:
    _require_env()
    from qwenrecipes.check.native import native_validate
    from qwenrecipes.errors import RecipeError

    native_validate(cpu_plan, "swift")  # swift's own parser accepts every key and value we write
    from qwenrecipes.engines.swift.native import NATIVE_CHECK
    from qwenrecipes.render.folder import render_plan, write_rendered
    from qwenrecipes.run.envs import env_for

    rendered = render_plan(cpu_plan, "swift")
    write_rendered(cpu_plan, rendered, tmp_path)
    env = env_for("swift")
    for bad, words in (("bogus_key: 1\n", "bogus_key"), ("lr_scheduler_type: sometimes\n", "sometimes")):
        (tmp_path / "swift_sft.yaml").write_text(rendered.files["swift_sft.yaml"] + bad, encoding="utf-8")
        proc = subprocess.run([str(env.python), "-c", NATIVE_CHECK], cwd=tmp_path, capture_output=True, text=True,
                              env=env.run_environment(rendered.environment), timeout=600)
        verdict = json.loads(proc.stdout.strip().splitlines()[-1])
        assert verdict["ok"] is False and words in verdict["error"], verdict
    with pytest.raises(RecipeError):
        native_validate(tiny_plan({"model": {"name_or_path": str(tmp_path / "no-model")}}, target="cpu"), "swift")


@pytest.mark.engine
@pytest.mark.parametrize("handoff", ["text", "tokens"])
@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_check_passes_on_every_row(train_on: str, handoff: str) -> None:
    _require_env()
    from qwenrecipes.check.tokens import check_recipe

    plan = tiny_plan({"data": {"train_on": train_on, "handoff": handoff}}, target="cpu")
    report = check_recipe(plan, ["swift"], data_samples=len(plan.train_rows or []))
    (engine,) = report.engines
    bad = {r.sample: r.diff for r in engine.results if r.status not in ("equal", "residual")}
    # Text only (docs/equivalence.md, limits of the text handoff): swift's template is strictly user/assistant pairs
    # and merges consecutive same-role messages (Template._swift_prepare_inputs), and it tokenizes the role header
    # apart from the content, so a reply starting with "\n" gets two "\n" tokens where the text has one "\n\n";
    # tokens carry both exactly.
    assert set(bad) <= ({"two_same_role_turns", "whitespace_replies"} if handoff == "text" else set()), bad
    statuses = {r.status for r in engine.results}
    if train_on == "assistant":
        assert "residual" not in statuses
    else:  # labels[0] masked (first_token_masked), nothing else
        assert "residual" in statuses
        assert {name for r in engine.results for name in r.residuals} == {"first_token_masked"}


@pytest.mark.engine
def test_run_interrupt_then_resume(tmp_path: Path) -> None:
    """A real run: SIGINT after checkpoint-10 and a later step -> interrupted; --resume continues from the
    checkpoint (swift's --resume_from_checkpoint) with no step twice; every step 1..30 in events.jsonl."""
    _require_env()
    run = tmp_path / "run"
    base = ("run", str(TINY), "--engine", "swift", "--run-dir", str(run), "--target", "cpu")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_cli(*base), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            events = read_events(run / "events.jsonl")
            saved = [e["step"] for e in events if e["type"] == "checkpoint"]
            steps = [e["step"] for e in events if e["type"] == "train"]
            if saved and max(steps or [0]) > min(saved):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and not group_alive(summary["pgid"])
    assert summary["artifacts"]["adapter_dir"] is None  # the launcher saves the final model only after training

    resumed = subprocess.run(_cli(*base, "--resume"), cwd=tmp_path, capture_output=True, text=True,
                             timeout=RUN_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = read_events(run / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "train"] == list(range(1, 31))
    starts = [e for e in events if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["argv"][-2] == "--resume_from_checkpoint"
    resumed_from = int(str(starts[1]["resume_from"]).rsplit("-", 1)[1])
    after = events[events.index(starts[1]):]
    assert next(e["step"] for e in after if e["type"] == "train") == resumed_from + 1
    losses = [float(e["loss"]) for e in events if e["type"] == "train"]
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 30 and summary["versions"]["engine"] == "4.6.0"
    assert summary["artifacts"]["adapter_dir"] and not group_alive(summary["pgid"])
    assert summary["artifacts"]["adapter_dir"] == "outputs"  # train_swift.py's final save, as the other engines
    assert (run / "outputs" / "adapter_model.safetensors").is_file()


@pytest.mark.engine
def test_failure_is_classified(tmp_path: Path) -> None:
    _require_env()
    recipe = tmp_path / "broken.yaml"
    document = yaml.safe_load(TINY.read_text())
    document["model"]["name_or_path"] = str(tmp_path / "missing-model")  # swift itself has to fail on it
    document["data"]["train"]["path"] = str(TINY.parent / "data" / "chat.jsonl")
    recipe.write_text(yaml.safe_dump(document))
    run = tmp_path / "run"
    proc = subprocess.run(_cli("run", str(recipe), "--engine", "swift", "--run-dir", str(run), "--target", "cpu"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]["class"] == "missing_model_or_data", summary["error"]


# ------------------------------------------------------------------------------------ qwenrecipes' bins

BATCHES_SCRIPT = Path(__file__).parent / "scripts" / "swift_packed_batches.py"


@pytest.mark.engine
def test_swift_trainer_hands_the_bins_in_order_with_rows_apart(tmp_path: Path) -> None:
    """The rendered train_swift.py builds swift's trainer (its dataset encoding and collator through the bins
    template) on a packed folder: every batch is the next micro_batch_size bins of the stream side by side, one bin a
    row (order and count, so max_steps), with qwenrecipes' labels, position ids restarting per row and no attention
    mask; each token's loss in the first batch, through trainer.model with sdpa and eager, equals its loss with its
    row run alone, and the trainer's own compute_loss is their token-weighted mean. An all-ones mask differs."""

    plan, stream, micro, result = trainer_batches(tmp_path, "swift", BATCHES_SCRIPT)
    for impl, got in result.items():
        assert got["attn"] == impl and got["template_padding_free"] is False, impl  # swift's own flattening off
        assert got["micro_batch_size"] == micro > 1
        values = assert_bins_side_by_side(impl, got, plan, stream, micro)
        assert got["step_loss"] == pytest.approx(sum(values) / len(values), rel=1e-6), impl


@pytest.mark.engine
def test_swift_trains_the_bins_with_the_loss_of_their_rows(tmp_path: Path) -> None:
    """A real swift run of a packed recipe (`qwenrecipes run`): one line per bin in training order, exactly
    max_steps steps, and its first loss (LoRA B = 0 at init: the base model's loss on the first step's bins) equals
    the token-weighted mean loss of those bins' rows run one by one."""


    plan, run_dir = run_packed(tmp_path, "swift", max_steps=3, warmup_steps=1, save_steps=3)
    written = (run_dir / "data" / "train.tokens.jsonl").read_text(encoding="utf-8").splitlines()
    assert [[len(m["content"]["token_ids"]) for m in json.loads(line)["messages"] if m["role"] == "assistant"]
            for line in written] == [[plan.packing.lengths[i] for i in b] for b in plan.bin_stream]
    steps = [e for e in read_events(run_dir / "events.jsonl") if e.get("type") == "train"]
    assert [e["step"] for e in steps] == [1, 2, 3]  # qwenrecipes' max_steps
    # mean_across: the same batch with an all-ones attention mask (rows attending across)
    mean, mean_across = first_step_losses(tmp_path, plan, "swift")
    assert steps[0]["loss"] == pytest.approx(mean, rel=2e-3)  # events round the loss
    # Full precision (the checkpoint's log_history): 11.9157085 against 11.9157073; rows attending across: 11.91687.
    state = json.loads((run_dir / "outputs" / "checkpoint-3" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["log_history"][0]["loss"] == pytest.approx(mean, abs=1e-5)
    assert abs(mean_across - mean) > 1e-4, "the control should tell rows attending across apart"
