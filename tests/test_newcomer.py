"""What a newcomer hits first: example recipes by name from any folder, tables that are not cut when piped,
every problem of a recipe in one round."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_recipes_lists_names_that_validate_finds_from_another_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["recipes"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert "tiny-cpu" in names and "qwen3-4b-qlora" in names
    for name in ("tiny-cpu", "tiny-cpu.yaml", "qwen3-4b-qlora"):
        code, out, err = run_cli(["validate", name], capsys)
        assert code == 0, err
        assert ": ok (" in out
    code, _, err = run_cli(["validate", "no-such-recipe"], capsys)
    assert code == 2 and "no-such-recipe" in err and "file not found" in err


def test_tables_keep_their_width_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["explain", "tiny-cpu", "--engines", "axolotl,llamafactory,trl"], capsys)
    assert code == 0, err
    assert "…" not in out
    assert "llamafactory" in out


def test_unknown_key_and_missing_data_file_in_one_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name_or_path: Qwen/Qwen3-4B\n  colour: red\n"
                      "data:\n  train:\n    path: missing.jsonl\n  eval:\n    path: ./also-missing.jsonl\n",
                      encoding="utf-8")
    code, _, err = run_cli(["validate", str(recipe)], capsys)
    assert code == 2
    assert "model.colour: unknown key 'colour'" in err
    assert "data.train.path: data file not found: missing.jsonl" in err
    assert "data.eval.path: data file not found: ./also-missing.jsonl" in err
