"""Parsers on recorded logs from real engine runs (tests/fixtures/logs) and on odd single lines.

Expected events live in tests/fixtures/events/<log name>.json. After an intended parser change, rewrite
them with `QWENRECIPES_UPDATE_FIXTURES=1 pytest tests/test_events.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qwenrecipes.engines.llamafactory.logs import parse_trainer_log as parse_llamafactory_trainer_log
from qwenrecipes.run import doctor
from qwenrecipes.run.events import (
    Normalizer,
    iter_log_lines,
    make_event,
    normalize,
    parse_hf_line,
    parse_line,
    parse_log_dict,
    split_lines,
)

FIXTURES = Path(__file__).parent / "fixtures"
LOGS = {  # log fixture -> engine
    "trl_tiny_lora.log": "trl",
    "axolotl_tiny_lora.log": "axolotl",
    "llamafactory_tiny_lora.log": "llamafactory",
}
TINY_STEPS = 30  # recipes/tiny-cpu.yaml: max_steps 30, logging_steps 1


def _normalized(name: str) -> list[dict[str, object]]:
    data = (FIXTURES / "logs" / name).read_bytes()
    return list(normalize(LOGS[name], iter_log_lines(data)))


def _log_or_skip(name: str) -> None:
    if not (FIXTURES / "logs" / name).is_file():
        pytest.skip(f"no recorded log {name} yet (recorded from a real run of recipes/tiny-cpu.yaml)")


@pytest.mark.parametrize("name", sorted(LOGS))
def test_recorded_log_matches_expected_events(name: str) -> None:
    _log_or_skip(name)
    events = _normalized(name)
    expected_path = FIXTURES / "events" / name.replace(".log", ".json")
    if os.environ.get("QWENRECIPES_UPDATE_FIXTURES"):
        expected_path.write_text(json.dumps(events, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if not expected_path.exists():
        pytest.skip(f"no {expected_path.name} yet: write it with QWENRECIPES_UPDATE_FIXTURES=1 and review it")
    assert events == json.loads(expected_path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(LOGS))
def test_recorded_log_has_every_step(name: str) -> None:
    _log_or_skip(name)
    events = _normalized(name)
    train = [e for e in events if e["type"] == "train"]
    assert [e["step"] for e in train] == list(range(1, TINY_STEPS + 1))
    assert all(isinstance(e["loss"], float) for e in train)
    assert all(isinstance(e["lr"], float) and isinstance(e["epoch"], float) for e in train)
    assert not [e for e in events if e["type"] == "error"]
    assert all(e["type"] in ("train", "eval", "checkpoint", "warning", "raw") for e in events)
    # Every non-blank line the parser did not understand is still there as raw text.
    assert all(e["message"].strip() for e in events if e["type"] == "raw")


def test_trl_log_specifics() -> None:
    _log_or_skip("trl_tiny_lora.log")
    first = next(e for e in _normalized("trl_tiny_lora.log") if e["type"] == "train")
    assert isinstance(first["tokens_seen"], int)  # TRL's num_tokens
    assert "mean_token_accuracy" in first and "entropy" in first


def test_axolotl_log_specifics() -> None:
    _log_or_skip("axolotl_tiny_lora.log")
    events = _normalized("axolotl_tiny_lora.log")
    first = next(e for e in events if e["type"] == "train")
    assert "memory_gb" in first and "ppl" in first and isinstance(first["tokens_seen"], int)
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [10, 20, 30]


def test_llamafactory_log_specifics() -> None:
    _log_or_skip("llamafactory_tiny_lora.log")
    events = _normalized("llamafactory_tiny_lora.log")
    # LF's INFO "Saving model checkpoint to ..." follows the tqdm bar on the same line.
    assert [e.get("step") for e in events if e["type"] == "checkpoint"] == [10, 20, 30, None]


def test_axolotl_memory_keys() -> None:
    line = ("{'loss': 11.93, 'grad_norm': 0.21, 'learning_rate': 0.001, 'ppl': 151800.0, "
            "'memory/max_active (GiB)': 1.5, 'memory/max_allocated (GiB)': 1.25, "
            "'memory/device_reserved (GiB)': 2.0, 'tokens/train_per_sec_per_gpu': 812.5, 'epoch': 0.01}")
    (event,) = parse_line("axolotl", line)
    assert event["type"] == "train" and event["memory_gb"] == 1.25 and event["tokens_per_s"] == 812.5
    assert event["memory_max_active_gib"] == 1.5 and event["ppl"] == 151800.0


def test_llamafactory_trainer_log_has_steps() -> None:
    path = FIXTURES / "logs" / "llamafactory_trainer_log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else [
        json.dumps({"current_steps": 1, "total_steps": 30, "loss": 11.93, "lr": 0.001, "epoch": 0.01,
                    "percentage": 3.33, "elapsed_time": "0:00:02", "remaining_time": "0:01:00"}),
        json.dumps({"current_steps": 2, "total_steps": 30, "loss": 11.9, "lr": 0.00099, "epoch": 0.03,
                    "percentage": 6.67, "elapsed_time": "0:00:04", "remaining_time": "0:00:58"})]
    events = [e for line in lines for e in parse_llamafactory_trainer_log(line)]
    steps = [e["step"] for e in events if e["type"] == "train"]
    assert steps == list(range(1, len(steps) + 1)) and steps
    assert parse_llamafactory_trainer_log("not json") == []


# ----------------------------------------------------------------------------------------- odd lines


def test_dict_with_string_numbers_and_with_floats_parse_alike() -> None:
    new = parse_hf_line("{'loss': '1.234', 'grad_norm': '0.5', 'learning_rate': '2e-05', 'epoch': '0.5'}")
    old = parse_hf_line("{'loss': 1.234, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.5}")
    assert new == old == [{"type": "train", "loss": 1.234, "grad_norm": 0.5, "lr": 2e-05, "epoch": 0.5}]


def test_literal_eval_never_runs_code() -> None:
    assert parse_log_dict("{'loss': __import__('os').system('false')}") is None
    (event,) = parse_hf_line("{'loss': __import__('os').system('false')}")
    assert event["type"] == "raw"


def test_nan_loss_is_kept_as_text() -> None:
    (event,) = parse_hf_line("{'loss': 'nan', 'learning_rate': '0.001', 'epoch': '0.1'}")
    assert event["loss"] == "nan" and event["lr"] == 0.001
    json.dumps(make_event(event, t=0.0), allow_nan=False)  # stays valid JSON


def test_carriage_return_joined_tqdm_line() -> None:
    data = (b"\r 10%|#         | 3/30 [00:03<00:27,  1.00it/s]\r                    \r"
            b"{'loss': '11.9', 'learning_rate': '0.001', 'epoch': '0.04'}\n"
            b"\r 13%|#3        | 4/30 [00:04<00:26,  1.00it/s]\r"
            b"{'loss': '11.8', 'learning_rate': '0.001', 'epoch': '0.05'}\n")
    events = list(normalize("trl", iter_log_lines(data), written_only=False))
    progress = [e for e in events if e["type"] == "progress"]
    assert [(e["n"], e["total"]) for e in progress] == [(3, 30), (4, 30)]
    assert progress[0]["steps_per_s"] == 1.0
    # The bar says step 3 before the first dict: it wins over counting (logging_first_step, resumes).
    assert [e["step"] for e in events if e["type"] == "train"] == [3, 4]


def test_counting_steps_uses_logging_steps_and_start() -> None:
    normalizer = Normalizer("trl", logging_steps=5, start_step=10)
    steps = [normalizer.feed("{'loss': 1.0, 'epoch': 0.1}")[0]["step"] for _ in range(3)]
    assert steps == [15, 20, 25]


def test_split_lines_keeps_unterminated_tail() -> None:
    lines, tail = split_lines(b"a\r\nb\rc\nd")
    assert lines == [b"a", b"b", b"c"] and tail == b"d"


def test_dataset_bars_are_not_training_progress() -> None:
    (event,) = parse_hf_line("Tokenizing train dataset:  27%|##6       | 80/300 [00:00<00:00, 775.50 examples/s]")
    assert event["type"] == "progress" and event["desc"] == "Tokenizing train dataset"
    normalizer = Normalizer("trl")
    normalizer.feed("Tokenizing train dataset:  27%|##6       | 80/300 [00:00<00:00, 775.50 examples/s]")
    assert normalizer.feed("{'loss': 1.0}")[0]["step"] == 1


def test_eval_bar_is_not_training_progress() -> None:
    """HF's evaluation bar has no description, like the training bar: its n/total must not become the step count
    (an Axolotl run with eval summarised "steps 8/2")."""
    data = (b"\r 27%|##6       | 8/30 [00:08<00:22,  1.00it/s]\r"
            b"{'loss': '11.9', 'learning_rate': '0.001', 'epoch': '0.04'}\n"
            b"\r  0%|          | 0/2 [00:00<?, ?it/s]\r100%|##########| 2/2 [00:00<00:00, 10.0it/s]\r"
            b"{'eval_loss': '11.8', 'eval_runtime': '0.2', 'epoch': '0.04'}\n"
            b"\r 30%|###       | 9/30 [00:09<00:21,  1.00it/s]\r"
            b"{'loss': '11.7', 'learning_rate': '0.001', 'epoch': '0.05'}\n")
    for total in (None, 30):  # the planned step count known to the runner, or not
        normalizer = Normalizer("axolotl", total_steps=total)
        events = [e for line in iter_log_lines(data) for e in normalizer.feed(line)]
        assert [e["step"] for e in events if e["type"] in ("train", "eval")] == [8, 8, 9]
        assert normalizer.total_steps == 30 and normalizer.bar_step == 9


def test_warning_lines() -> None:
    for line in ("/x/trl/_hf_argparser.py:371: FutureWarning: `pad_token` is deprecated",
                 "[2026-01-01 10:00:00,000] [WARNING] [axolotl.utils] sample packing is off",
                 "[WARNING|2026-01-01 10:00:00] llamafactory.hparams: We recommend enable fp16"):
        (event,) = parse_hf_line(line)
        assert event["type"] == "warning", line
    (event,) = parse_hf_line("Loading checkpoint shards: done; nothing to warn about")
    assert event["type"] == "raw"


def test_traceback_becomes_one_classified_error() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/transformers/trainer.py", line 2, in train',
        "    return inner_training_loop(",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "{'loss': '1.0'}",
    ]
    events = list(normalize("axolotl", lines))
    assert [e["type"] for e in events] == ["error", "train"]
    assert events[0]["exception"] == "torch.OutOfMemoryError"
    assert events[0]["message"].splitlines()[0] == "Traceback (most recent call last):"
    diagnosis = doctor.classify(events[0]["message"])
    assert diagnosis is not None and diagnosis.name == "cuda_oom"
    assert "gradient_accumulation_steps" in diagnosis.fix


def test_unfinished_traceback_is_flushed() -> None:
    events = list(normalize("trl", ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>']))
    assert len(events) == 1 and events[0]["type"] == "error" and "x.py" in events[0]["message"]


def test_non_utf8_byte_keeps_the_line() -> None:
    data = b"loading \xff\xfe weights\n{'loss': '2.5', 'epoch': '0.1'}\n"
    events = list(normalize("llamafactory", iter_log_lines(data)))
    assert events[0]["type"] == "raw" and "\ufffd" in events[0]["message"]
    assert events[1]["loss"] == 2.5


def test_eval_and_end_metrics() -> None:
    (event,) = parse_hf_line("{'eval_loss': '2.1', 'eval_runtime': '1.5', 'epoch': '1'}")
    assert event == {"type": "eval", "eval_loss": 2.1, "eval_runtime": 1.5, "epoch": 1}
    (event,) = parse_hf_line("{'train_runtime': '52.21', 'train_samples_per_second': '0.919', "
                             "'train_steps_per_second': '0.23', 'train_loss': '11.89', 'epoch': '0.16'}")
    assert event["type"] == "metrics" and event["steps_per_s"] == 0.23


@pytest.mark.parametrize(("text", "name"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "cuda_oom"),
    ("OSError: Qwen/Qwen3-9B is not a local folder and is not a valid model identifier", "missing_model_or_data"),
    ("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name'", "missing_model_or_data"),
    ("OSError: x does not appear to have a file named config.json", "missing_model_or_data"),
    ("FileNotFoundError: [Errno 2] No such file or directory: 'data/train.jsonl'", "missing_model_or_data"),
    ("jinja2.exceptions.TemplateError: Conversation roles must alternate", "chat_template"),
    ("RuntimeError: size mismatch, got weight of shape [0]", "zero3_lora"),
    ("ImportError: Using `bitsandbytes` 4-bit quantization requires the latest version of bitsandbytes",
     "bitsandbytes"),
    ("RuntimeError: CUDA error: device-side assert triggered", "cuda_assert"),
])
def test_doctor_classification(text: str, name: str) -> None:
    diagnosis = doctor.classify(text)
    assert diagnosis is not None and diagnosis.name == name and diagnosis.fix
    assert doctor.classify("ValueError: something new") is None
