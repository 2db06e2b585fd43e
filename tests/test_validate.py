"""`qwenrecipes validate`: every example passes; every invalid recipe fails with exit 2, its expected
messages (one `# expect:` line each, at the top of the file), and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_RECIPES, REPO, run_cli, target_for

INVALID = sorted((REPO / "tests" / "recipes" / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("recipe", EXAMPLE_RECIPES, ids=[r.stem for r in EXAMPLE_RECIPES])
def test_examples_validate(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["validate", str(recipe), "--target", target_for(recipe)], capsys)
    assert code == 0, err
    assert ": ok (" in out


def expectations(recipe: Path) -> list[str]:
    lines = recipe.read_text(encoding="utf-8").splitlines()
    return [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]


@pytest.mark.parametrize("recipe", INVALID, ids=[r.stem for r in INVALID])
def test_invalid_recipes(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["validate", str(recipe), "--target", "cuda"], capsys)
    assert code == 2
    assert "Traceback" not in err + out
    assert str(recipe) in err, "the message names the file"
    for expected in expectations(recipe):
        assert expected in err


def test_all_problems_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", str(REPO / "tests/recipes/invalid/many_problems.yaml")], capsys)
    assert code == 2
    assert len([line for line in err.splitlines() if line.startswith("error:")]) >= 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\x00\x01\x02binary", "binary file"),
        (b"model: caf\xe9\n", "not UTF-8"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested"),
        (b"x: 1\n" * 300_000, "bytes; a recipe is at most"),
    ],
    ids=["empty", "binary", "latin1", "deep", "huge"],
)
def test_hostile_files(tmp_path: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2
    assert message in err
    assert str(path) in err
    assert "Traceback" not in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and "file not found" in err


def test_cpu_target_rejects_gpu_only_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", str(REPO / "recipes/qwen3-4b-qlora.yaml"), "--target", "cpu"], capsys)
    assert code == 2
    assert "::method.type: qlora needs a CUDA GPU" in err
    assert "::training.optimizer: adamw_8bit needs a CUDA GPU" in err


def test_cli_subprocess_exit_code() -> None:
    """The installed console entry point maps errors the same way (no traceback, exit 2)."""
    result = subprocess.run([sys.executable, "-m", "qwenrecipes.cli", "validate", str(INVALID[0])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def _documents() -> list[tuple[str, object]]:
    from qwenrecipes.errors import RecipeError
    from qwenrecipes.recipe.load import load_recipe_document

    out = []
    for path in [*EXAMPLE_RECIPES, *INVALID]:
        try:
            out.append((path.stem, load_recipe_document(path)))
        except RecipeError:
            continue  # not even a mapping: never reaches the validators
    return out


@pytest.mark.parametrize(("name", "document"), _documents(), ids=[n for n, _ in _documents()])
def test_fast_path_never_more_lenient_than_jsonschema(name: str, document: dict) -> None:
    """Valid recipes skip importing jsonschema (render latency); the fast check must agree with it."""
    from qwenrecipes.recipe.load import _conforms, _validator, recipe_schema

    full_ok = not list(_validator().iter_errors(document))
    assert _conforms(document, recipe_schema()) == full_ok
