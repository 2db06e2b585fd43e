"""Shared helpers of the hardening tests (issue 6): a small valid recipe, hostile files written the way a user
meets them, the clean-refusal check (exit 2, the file named, no traceback) and a fake engine's run spec."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenrecipes.engines import ENGINES
from qwenrecipes.run.spec import RunSpec
from tests.conftest import REPO

FAKE_ENGINE = REPO / "tests" / "fixtures" / "fake_engine.py"
ENGINE_NAMES = list(ENGINES)
ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def assert_clean_refusal(code: int, err: str, file: Path, *expected: str) -> None:
    """Exit 2, the file named, every expected fragment present, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert str(file) in err, err
    for fragment in expected:
        assert fragment in err, err


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_document(data_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small valid recipe (hub model id: nothing is built or downloaded) with sections overridden."""
    document: dict[str, Any] = {
        "name": "hardening",
        "model": {"name_or_path": "Qwen/Qwen3-0.6B", "chat_template": "qwen3_nothink"},
        "method": {"type": "lora"},
        "data": {"train": {"path": str(data_path)}, "max_seq_length": 512},
        "training": {"max_steps": 4, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                     "optimizer": "adamw_torch", "save_steps": None},
    }
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return document


def write_recipe(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [ROW, ROW])


def fake_spec(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> RunSpec:
    return RunSpec(run_dir=run_dir, engine="trl", argv=[sys.executable, str(FAKE_ENGINE), *args],
                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, output_dir=run_dir / "outputs",
                   total_steps=2, recipe_name="fake", recipe_hash="abc", grace=2.0)
