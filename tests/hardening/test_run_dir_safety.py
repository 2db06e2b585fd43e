"""Paths: rendered files and output dirs stay inside their folder; `run --force` never deletes what is not a run
(a foreign folder, the cwd, a symlink, a forged marker); summary and marker writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qwenrecipes.errors import QwenRecipesError, RecipeError
from qwenrecipes.recipe.load import build_recipe
from qwenrecipes.recipe.plan import make_plan
from qwenrecipes.render.folder import Rendered, render_plan, write_rendered
from qwenrecipes.run.rundir import MARKER_FILE, SUMMARY_FILE, write_json_atomic
from qwenrecipes.run.runner import claim_run_dir, execute
from tests.conftest import run_cli
from tests.hardening.conftest import fake_spec, recipe_document, write_recipe


# --------------------------------------------------------------------------------------------- paths
def test_render_refuses_files_outside_the_folder(tmp_path: Path, data_file: Path) -> None:
    plan = make_plan(build_recipe(recipe_document(data_file), tmp_path / "r.yaml"), target="cuda")
    out = tmp_path / "out"
    for escape in ("../escape.txt", "sub/../../escape.txt", str(tmp_path / "absolute.txt")):
        rendered = Rendered("trl", {escape: "pwned"}, ["python"], {})
        with pytest.raises(QwenRecipesError, match="outside"):
            write_rendered(plan, rendered, out)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "absolute.txt").exists()


def test_render_refuses_a_symlink_that_points_out(tmp_path: Path, data_file: Path) -> None:
    """A file name inside the folder that is a symlink to elsewhere resolves outside: refused."""
    plan = make_plan(build_recipe(recipe_document(data_file), tmp_path / "r.yaml"), target="cuda")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "trl_config.yaml").symlink_to(victim)
    with pytest.raises(QwenRecipesError, match="outside"):
        write_rendered(plan, render_plan(plan, "trl"), out)
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("folder", ["/tmp/elsewhere", "../up", "a/../../up", "~/home"])
def test_output_dir_cannot_leave_the_run_dir(tmp_path: Path, data_file: Path, folder: str) -> None:
    with pytest.raises(RecipeError, match=r"::output\.dir: .* must be a relative folder"):
        build_recipe(recipe_document(data_file, output={"dir": folder}), tmp_path / "r.yaml")


def test_cli_run_force_never_deletes_a_foreign_folder(tmp_path: Path, data_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`qwenrecipes run ... --run-dir EXISTING --force` on a folder that is not a run: refused, file kept.
    The refusal comes before the engine env is needed, so no env has to be installed. A CPU recipe: `run`
    compares a recipe with the machine first, and this machine may have no GPU."""
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_document(data_file, training={"precision": "fp32"}))
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    for extra in (["--force"], []):
        code, _, err = run_cli(["run", str(recipe), "--engine", "trl", "--run-dir", str(foreign), "--target",
                                "cpu", *extra], capsys)
        assert code == 2 and "Traceback" not in err
        assert "not a qwenrecipes run" in err or "not installed" in err, err
        assert (foreign / "chapter1.tex").read_text() == "years of work"
        assert sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]


def test_force_refuses_a_folder_holding_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    (run / "inner").mkdir(parents=True)
    write_json_atomic(run / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe_hash": "abc"})
    monkeypatch.chdir(run / "inner")
    with pytest.raises(QwenRecipesError, match="current directory"):
        claim_run_dir(run, "trl", "abc", run / "outputs", resume=False, force=True)
    assert (run / MARKER_FILE).is_file()


def test_force_never_follows_a_symlinked_run_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write_json_atomic(real / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe_hash": "abc"})
    (real / "keep.txt").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(QwenRecipesError, match="not a plain folder"):
        claim_run_dir(link, "trl", "abc", link / "outputs", resume=False, force=True)
    assert (real / "keep.txt").is_file()


def test_a_forged_marker_that_is_a_symlink_is_not_trusted(tmp_path: Path) -> None:
    elsewhere = tmp_path / "marker.json"
    elsewhere.write_text(json.dumps({"kind": "qwenrecipes-run"}))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    (folder / MARKER_FILE).symlink_to(elsewhere)
    with pytest.raises(QwenRecipesError, match="not a qwenrecipes run"):
        claim_run_dir(folder, "trl", "abc", folder / "outputs", resume=False, force=True)
    assert (folder / "keep.txt").is_file()


def test_summary_and_marker_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every summary/marker write goes temp file -> os.replace, in the same folder (same filesystem)."""
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        src, dst = Path(src), Path(dst)
        assert src.parent == dst.parent and src.name.startswith(f".{dst.name}.") and src.exists()
        replaced.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_json_atomic(tmp_path / MARKER_FILE, {"kind": "qwenrecipes-run"})
    run = tmp_path / "run"
    execute(fake_spec(run, "--steps", "2"))
    targets = [dst.name for _, dst in replaced]
    assert MARKER_FILE in targets and SUMMARY_FILE in targets
    assert not list(run.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_failed_summary_write_keeps_the_previous_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / SUMMARY_FILE
    write_json_atomic(target, {"status": "ok", "steps": 30})

    def broken(_src: Any, _dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_json_atomic(target, {"status": "failed"})
    assert json.loads(target.read_text()) == {"status": "ok", "steps": 30}
