"""`qwenrecipes ui`: the API through Starlette's TestClient (answers equal the CLI's library calls; the safety
rules: token, Host, project-confined paths), and the page in a real headless Chromium (Debian's, driven by
Playwright) that fills the form, sees a validation error at the field, renders, trains tiny-cpu on TRL, sees the
loss chart grow and stops the run. Screenshots: the test's tmp dir and test-artifacts/ui/."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="qwenrecipes ui needs the [ui] extra (starlette, uvicorn)")

from starlette.testclient import TestClient

from qwenrecipes.engines import ENGINES
from qwenrecipes.recipe.load import load_recipe_document, recipe_schema
from qwenrecipes.recipe.plan import plan_recipe
from qwenrecipes.render.explain import explain_json, explain_plan
from qwenrecipes.render.folder import render_plan
from qwenrecipes.run.rundir import MARKER_FILE, write_json_atomic
from qwenrecipes.run.runner import execute
from qwenrecipes.run.spec import RunSpec
from qwenrecipes.ui.app import create_app
from tests.conftest import REPO, TINY, run_cli

TOKEN = "test-token-123"
RECIPE = "recipes/tiny-cpu.yaml"
FAKE = Path(__file__).parent / "fixtures" / "fake_engine.py"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "ui"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding tiny-cpu and its data, as a user's would."""
    root = tmp_path / "project"
    (root / "recipes").mkdir(parents=True)
    shutil.copy(TINY, root / RECIPE)
    shutil.copytree(TINY.parent / "data", root / "recipes" / "data")
    return root


@pytest.fixture
def client(project: Path) -> Iterator[TestClient]:
    with TestClient(create_app(project, TOKEN), base_url="http://127.0.0.1:8765") as test_client:
        yield test_client


def document() -> dict[str, Any]:
    return load_recipe_document(TINY)


def post(client: TestClient, url: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"x-qwenrecipes-token": token} if token else {}
    return client.post(url, json=body, headers=headers)


# ------------------------------------------------------------------------------------------------ answers
def test_info_serves_the_package_schema_and_lists_recipes(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["schema"] == recipe_schema()
    assert info["recipes"] == [RECIPE]
    assert info["engines"] == list(ENGINES)  # the registry: built-ins first, then any plug-in


def test_validation_messages_are_the_clis(client: TestClient, project: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = document()
    bad["training"] = {**bad["training"], "learning_rate": -1, "lr": 0.1}
    answer = post(client, "/api/validate", {"path": RECIPE, "document": bad, "target": "cpu"}).json()
    assert not answer["ok"]
    by_path = {p["path"]: p for p in answer["problems"]}
    assert set(by_path) == {"training.learning_rate", "training.lr"}
    assert "did you mean 'learning_rate'" in by_path["training.lr"]["message"]
    # The same file through `qwenrecipes validate`: every line the page shows, the CLI prints.
    (project / "bad.yaml").write_text(json.dumps(bad))
    shutil.copytree(project / "recipes" / "data", project / "data")
    code, _out, err = run_cli(["validate", str(project / "bad.yaml"), "--target", "cpu"], capsys)
    assert code == 2
    for problem in answer["problems"]:
        assert f"::{problem['path']}: {problem['message']}" in err
    good = post(client, "/api/validate", {"path": RECIPE, "document": document(), "target": "cpu"}).json()
    assert good["ok"] and good["summary"]["max_steps"] == 30 and len(good["memory"]) == len(ENGINES)


def test_render_and_explain_equal_the_library(client: TestClient, project: Path) -> None:
    answer = post(client, "/api/render", {"path": RECIPE, "document": document(), "target": "cpu"}).json()
    plan = plan_recipe(project / RECIPE, target="cpu")
    assert set(answer["engines"]) == set(ENGINES)
    for engine in ENGINES:
        assert answer["engines"][engine]["files"] == render_plan(plan, engine).files
        assert answer["engines"][engine]["memory"]["micro_batch_size"] == 4
    assert answer["explain"] == json.loads(json.dumps(explain_json(explain_plan(plan, answer["explain_engines"]))))


def test_token_view_is_checks_reference(client: TestClient, project: Path) -> None:
    from qwenrecipes.check.tokens import IGNORE, reference_tokens

    answer = post(client, "/api/tokens", {"path": RECIPE, "document": document(), "target": "cpu", "row": 2}).json()
    plan = plan_recipe(project / RECIPE, target="cpu")
    reference = reference_tokens(plan.train_rows[2], "assistant")
    assert answer["reference"]["ids"] == reference.input_ids
    assert answer["reference"]["trained"] == [label != IGNORE for label in reference.labels]
    assert "".join(answer["reference"]["pieces"]).startswith("<|im_start|>user\n")
    assert post(client, "/api/tokens", {"path": RECIPE, "document": document(), "row": 10_000}).status_code == 400


def fake_run(run_dir: Path, steps: int) -> None:
    """A finished run dir written by the real runner around the test suite's fake engine."""
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / MARKER_FILE, {"kind": "qwenrecipes-run", "engine": "trl", "recipe": "fake",
                                              "recipe_hash": "abc", "created": time.time()})
    execute(RunSpec(run_dir=run_dir, engine="trl", argv=[sys.executable, str(FAKE), "--steps", str(steps)],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, output_dir=run_dir / "outputs", total_steps=steps,
                    recipe_name="fake", recipe_hash="abc", grace=2.0))


def test_runs_list_events_stream_and_compare(client: TestClient, project: Path) -> None:
    fake_run(project / "runs" / "a", 4)
    fake_run(project / "runs" / "b", 6)
    runs = client.get("/api/runs").json()
    assert {r["run_dir"]: r["status"] for r in runs} == {"runs/a": "ok", "runs/b": "ok"}
    with client.stream("GET", "/api/runs/events?run_dir=runs/b") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: {")]
    events = [e for e in (json.loads(line[len("data: "):]) for line in lines) if e]  # `event: done` has {}
    assert [e["step"] for e in events if e["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["type"] == "end"  # a run this server did not start: the stream ends at its end event
    compared = post(client, "/api/compare", {"run_dirs": ["runs/a", "runs/b"]}).json()
    assert [r["steps"] for r in compared["runs"]] == [4, 6]
    assert compared["plot"].startswith("data:image/png;base64,")


def test_bench_reports_and_their_plots(client: TestClient, project: Path) -> None:
    out = project / "bench-out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "report.md").write_text("# bench\n| engine | tok/s |\n")
    (out / "tokens_per_s.png").write_bytes((REPO / "qwenrecipes" / "ui" / "static" / "vendor" / "uplot"
                                            / "LICENSE").read_bytes())
    reports = client.get("/api/bench").json()
    assert reports == [{"folder": "bench-out", "report": "# bench\n| engine | tok/s |\n",
                        "plots": ["bench-out/tokens_per_s.png"]}]
    assert client.get("/api/file?path=bench-out/tokens_per_s.png").headers["content-type"] == "image/png"


# ------------------------------------------------------------------------------------------------- safety
def test_writes_and_processes_need_the_token(client: TestClient, project: Path) -> None:
    body = {"path": "recipes/new.yaml", "document": document()}
    for token in (None, "wrong"):
        assert post(client, "/api/recipe/save", body, token).status_code == 403
        assert post(client, "/api/runs/start", {"recipe": RECIPE, "engine": "trl"}, token).status_code == 403
        assert post(client, "/api/runs/stop", {"run_dir": "runs/x"}, token).status_code == 403
        assert post(client, "/api/tokens/engines", {"path": RECIPE, "document": document(), "engines": ["trl"]},
                    token).status_code == 403
    assert not (project / "recipes" / "new.yaml").exists() and not (project / "runs").exists()
    saved = post(client, "/api/recipe/save", body, TOKEN)
    assert saved.status_code == 200 and saved.json()["ok"]
    assert load_recipe_document(project / "recipes" / "new.yaml") == document()


def test_no_path_leaves_the_project(client: TestClient, project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (project / "link.txt").symlink_to(secret)
    (project / "linked-dir").symlink_to(tmp_path)
    (project / "inside.txt").write_text("inside")
    (project / "alias.txt").symlink_to(project / "inside.txt")
    for path in ("../secret.txt", str(secret), "link.txt", "linked-dir/secret.txt", "~/x", "recipes/../../secret.txt"):
        assert client.get(f"/api/file?path={path}").status_code == 403, path
        assert client.get(f"/api/recipe?path={path}").status_code == 403, path
    assert client.get("/api/file?path=alias.txt").text == "inside"  # a link that stays inside is fine
    for path in ("../evil.yaml", "linked-dir/evil.yaml", str(tmp_path / "evil.yaml")):
        assert post(client, "/api/recipe/save", {"path": path, "document": {}}, TOKEN).status_code == 403, path
    (project / "link.yaml").symlink_to(tmp_path / "target.yaml")
    assert post(client, "/api/recipe/save", {"path": "link.yaml", "document": {}}, TOKEN).status_code == 403
    assert not (tmp_path / "evil.yaml").exists() and not (tmp_path / "target.yaml").exists()
    assert post(client, "/api/runs/start", {"recipe": RECIPE, "engine": "trl", "run_dir": "../elsewhere"},
                TOKEN).status_code == 403
    assert client.get("/api/runs/events?run_dir=../x").status_code == 403
    assert client.get("/api/file?path=recipes/data/chat.jsonl").status_code == 200
    (project / "key.pem").write_text("x")
    assert client.get("/api/file?path=key.pem").status_code == 403  # only the types the page shows


def test_loopback_only_by_default(project: Path) -> None:
    from qwenrecipes.cli.ui import ui_command

    assert next(p for p in ui_command.params if p.name == "host").default == "127.0.0.1"
    with TestClient(create_app(project, TOKEN), base_url="http://attacker.example") as rebound:
        assert rebound.get("/api/info").status_code == 400  # DNS rebinding: a foreign Host header is refused


# ------------------------------------------------------------------------------------------------ browser
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.engine
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                  "(apt-get install chromium; .ci/run installs it)")
def test_browser_form_render_run_and_stop(project: Path, tmp_path: Path) -> None:
    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from qwenrecipes.run.envs import env_for

    env_for("trl")  # the run below needs the TRL env (scripts/test installs it)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(project, TOKEN), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    shots = tmp_path / "screenshots"
    started = time.time()

    def shot(page: Any, name: str, full_page: bool = True) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=full_page)

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/#token={TOKEN}")
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#valid-badge")).to_have_text("ok", timeout=60_000)

            # A bad value: the CLI's message appears at that field; fixing it clears it.
            lr = page.locator("input[data-path='training.learning_rate']")
            expect(lr).to_have_value("0.001")
            lr.fill("-1")
            error = page.locator("[data-field='training.learning_rate'] .field-error")
            expect(error).to_have_text("-1 is less than or equal to the minimum of 0", timeout=60_000)
            lr.evaluate("e => e.scrollIntoView({block: 'center'})")
            shot(page, "1-validation-error", full_page=False)  # the field and the sticky validation panel
            lr.fill("0.002")
            expect(error).to_be_empty(timeout=60_000)
            page.fill("input[data-path='name']", "ui-test")
            page.fill("input[data-path='training.max_steps']", "300")  # long enough to stop it mid-way
            expect(page.locator("#valid-badge")).to_have_text("ok", timeout=60_000)

            page.click("#tabs button[data-tab='engines']")
            page.click("#render-btn")
            expect(page.locator("#engines-grid .engine")).to_have_count(len(ENGINES), timeout=120_000)
            expect(page.locator("[data-engine='trl'] pre")).to_contain_text("learning_rate: 0.002")
            expect(page.locator("#explain table tr").first).to_be_visible()
            shot(page, "2-engines")

            page.click("#tabs button[data-tab='tokens']")
            page.click("#tokens-btn")
            expect(page.locator(".tokens .tok.trained").first).to_be_visible(timeout=60_000)
            shot(page, "3-tokens")

            page.click("#tabs button[data-tab='runs']")
            page.select_option("#run-engine", "trl")
            page.click("#start-btn")
            loss = page.locator("#chart-loss")
            page.wait_for_function("Number(document.querySelector('#chart-loss').dataset.points) >= 2",
                                   timeout=300_000)
            first = int(loss.get_attribute("data-points") or 0)
            page.wait_for_function(f"Number(document.querySelector('#chart-loss').dataset.points) > {first}",
                                   timeout=120_000)
            shot(page, "4-run-live")
            page.click("#stop-btn")
            expect(page.locator("#run-status")).to_contain_text("interrupted", timeout=120_000)
            expect(page.locator("#stop-btn")).to_be_disabled(timeout=60_000)  # the `qwenrecipes run` process ended
            page.click("#runs-refresh")
            expect(page.locator("tr[data-run='runs/ui-test-trl']")).to_contain_text("interrupted")
            shot(page, "5-run-stopped")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        if shots.is_dir():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for png in shots.glob("*.png"):
                shutil.copy(png, ARTIFACTS / png.name)
        print(f"browser test took {time.time() - started:.1f} s; screenshots in {shots} and {ARTIFACTS}")
    summary = json.loads((project / "runs" / "ui-test-trl" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 2 <= summary["steps"] < 300
    assert load_recipe_document(project / RECIPE)["training"]["learning_rate"] == 0.002  # saved before the run
