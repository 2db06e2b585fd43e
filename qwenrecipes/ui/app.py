"""The Starlette app behind `qwenrecipes ui`: JSON endpoints over ui/recipes.py and ui/runs.py, the live
events stream (server-sent events), project files, and the static page.

Endpoints that start a process or write a file (`WRITE` below) need the per-launch token in the
X-QwenRecipes-Token header; the others only read. Every path is relative to the project folder (safety.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from qwenrecipes.errors import QwenRecipesError, RecipeError
from qwenrecipes.ui import recipes
from qwenrecipes.ui.runs import RunManager, event_lines, tree_rss_gb
from qwenrecipes.ui.safety import LOCAL_HOSTS, TOKEN_HEADER, Forbidden, project_path, token_ok

STATIC = Path(__file__).parent / "static"
POLL_S = 0.5
# Files the page may show: plots, reports, configs, logs. Anything else is refused even inside the project.
SERVED_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json", ".md": "text/plain",
                ".yaml": "text/plain", ".yml": "text/plain", ".jsonl": "text/plain", ".log": "text/plain",
                ".txt": "text/plain", ".toml": "text/plain", ".py": "text/plain"}
Handler = Callable[[Request], Awaitable[Response]]


def _target(body: dict[str, Any]) -> str | None:
    target = body.get("target") or "auto"
    if target not in ("auto", "cpu", "cuda"):
        raise QwenRecipesError(f"target {target!r}: choose auto, cpu or cuda")
    return None if target == "auto" else target


class UI:
    """The app's state (project folder, token, runs) and its handlers."""

    def __init__(self, project: Path, token: str) -> None:
        self.project = project.resolve()
        self.token = token
        self.runs = RunManager(self.project)

    # -------------------------------------------------------------------------------------- plumbing
    def endpoint(self, function: Callable[..., Any], *, write: bool = False) -> Handler:
        """Wrap a handler: JSON body in, JSON out, library errors as 400/403, the token for writes. The work
        runs in a thread (plans, renders and engine checks block)."""

        async def handle(request: Request) -> Response:
            if write and not token_ok(self.token, request.headers.get(TOKEN_HEADER)):
                return JSONResponse({"error": "this action needs the token `qwenrecipes ui` printed at start-up "
                                              "(open the URL it printed, or paste the token in the page)"},
                                    status_code=403)
            try:
                body: dict[str, Any] = {}
                if request.method == "POST":
                    body = await request.json()
                    if not isinstance(body, dict):
                        raise QwenRecipesError("the request body must be a JSON object")
                body.update(request.query_params)
                return JSONResponse(await run_in_threadpool(function, body))
            except Forbidden as exc:
                return JSONResponse({"error": str(exc)}, status_code=403)
            except RecipeError as exc:
                problems = [{"path": p.path, "message": p.message, "text": str(p)} for p in exc.problems]
                return JSONResponse({"error": str(exc), "problems": problems}, status_code=400)
            except (QwenRecipesError, OSError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return handle

    def info(self, _body: dict[str, Any]) -> dict[str, Any]:
        from qwenrecipes import __version__
        from qwenrecipes.recipe.load import recipe_schema

        return {"version": __version__, "project": str(self.project), "engines": recipes.engine_names(),
                "envs": recipes.engine_envs(), "schema": recipe_schema(), "recipes": recipes.recipe_files(self.project)}

    def document_call(self, function: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
        def call(body: dict[str, Any]) -> Any:
            return function(self.project, str(body.get("path") or "recipe.yaml"), body.get("document"),
                            target=_target(body))

        return call

    def tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        return recipes.token_view(self.project, str(body.get("path") or "recipe.yaml"), body.get("document"),
                                  int(body.get("row") or 0), [], target=_target(body))

    def engine_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        engines = body.get("engines") or []
        if not isinstance(engines, list) or not engines:
            raise QwenRecipesError("name the engines whose own preprocessing should run")
        return recipes.token_view(self.project, str(body.get("path") or "recipe.yaml"), body.get("document"),
                                  int(body.get("row") or 0), [str(e) for e in engines], target=_target(body))

    def start(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.runs.start(str(body.get("recipe") or ""), str(body.get("engine") or ""),
                               body.get("run_dir") or None, force=bool(body.get("force")),
                               resume=bool(body.get("resume")), target=_target(body))

    def summary(self, body: dict[str, Any]) -> dict[str, Any]:
        from qwenrecipes.run.summary import read_summary

        folder = project_path(self.project, str(body.get("run_dir") or ""), must_exist=False)
        return {"summary": read_summary(folder), "process": self.runs.state(folder)}

    def compare(self, body: dict[str, Any]) -> dict[str, Any]:
        run_dirs = body.get("run_dirs")
        if isinstance(run_dirs, str):
            run_dirs = [r for r in run_dirs.split(",") if r]
        if not isinstance(run_dirs, list) or not run_dirs:
            raise QwenRecipesError("pick at least one run to compare")
        return self.runs.compare([str(r) for r in run_dirs])

    # ------------------------------------------------------------------------------------ raw routes
    async def index(self, _request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def file(self, request: Request) -> Response:
        """A project file, read-only, of a type the page shows (plots, reports, configs, logs)."""
        try:
            path = project_path(self.project, request.query_params.get("path", ""))
        except Forbidden as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        except QwenRecipesError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        media = SERVED_TYPES.get(path.suffix.lower())
        if not path.is_file() or media is None:
            return JSONResponse({"error": f"{path.name}: not a file type the page shows"}, status_code=403)
        return FileResponse(path, media_type=media)

    async def events(self, request: Request) -> Response:
        """Server-sent events: every line of the run's events.jsonl as it is written, the CLI process's state,
        and (while this server's run is alive) the resident memory of its process tree."""
        run_dir = request.query_params.get("run_dir", "")
        try:
            path = self.runs.events_path(run_dir)
        except QwenRecipesError as exc:
            return JSONResponse({"error": str(exc)}, status_code=403 if isinstance(exc, Forbidden) else 400)
        folder = path.parent

        async def stream() -> AsyncIterator[str]:
            offset, last_state, ended = 0, None, False
            while not await request.is_disconnected():
                try:
                    if path.stat().st_size < offset:  # resumed: the runner rewrote the file shorter
                        offset = 0
                        yield "event: reset\ndata: {}\n\n"
                except FileNotFoundError:
                    pass
                state = self.runs.state(folder)  # read before the events: a run that just exited is fully read
                events, offset = event_lines(path, offset)
                for event in events:
                    ended = ended or event.get("type") == "end"
                    yield f"data: {json.dumps(event)}\n\n"
                if state is not None:
                    rss = await asyncio.to_thread(tree_rss_gb, state["pid"]) if state["running"] else None
                    if rss:
                        sample = {"type": "rss", "t": round(time.time(), 3), "rss_gb": round(rss, 4)}
                        yield f"data: {json.dumps(sample)}\n\n"
                    compact = json.dumps(state)
                    if compact != last_state:
                        last_state = compact
                        yield f"event: process\ndata: {compact}\n\n"
                # A run this server started is done when its process is; another one (a CLI run) at its end event.
                if (state is None and ended) or (state is not None and not state["running"]):
                    yield "event: done\ndata: {}\n\n"
                    return
                await asyncio.sleep(POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def create_app(project: Path, token: str, *, allowed_hosts: tuple[str, ...] = LOCAL_HOSTS) -> Starlette:
    """The app for one project folder. `allowed_hosts`: Host header names accepted (DNS-rebinding guard)."""
    ui = UI(project, token)
    e = ui.endpoint
    routes = [
        Route("/", ui.index),
        Route("/api/info", e(ui.info)),
        Route("/api/recipes", e(lambda _b: recipes.recipe_files(ui.project))),
        Route("/api/recipe", e(lambda b: recipes.load_document(ui.project, str(b.get("path") or "")))),
        Route("/api/recipe/save", e(lambda b: recipes.save_document(ui.project, str(b.get("path") or ""),
                                                                    b.get("document")), write=True),
              methods=["POST"]),
        Route("/api/validate", e(ui.document_call(recipes.validate_document)), methods=["POST"]),
        Route("/api/render", e(ui.document_call(recipes.render_document)), methods=["POST"]),
        Route("/api/tokens", e(ui.tokens), methods=["POST"]),
        Route("/api/tokens/engines", e(ui.engine_tokens, write=True), methods=["POST"]),  # runs engine envs
        Route("/api/runs", e(lambda _b: ui.runs.list())),
        Route("/api/runs/start", e(ui.start, write=True), methods=["POST"]),
        Route("/api/runs/stop", e(lambda b: ui.runs.stop(str(b.get("run_dir") or "")), write=True),
              methods=["POST"]),
        Route("/api/runs/summary", e(ui.summary)),
        Route("/api/runs/events", ui.events),
        Route("/api/compare", e(ui.compare), methods=["POST"]),
        Route("/api/bench", e(lambda _b: ui.runs.bench_reports())),
        Route("/api/file", ui.file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(ui.runs.shutdown)  # runs started here end (and write their summary) with us

    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))],
                    lifespan=lifespan)
    app.state.ui = ui
    return app


def serve(project: Path, *, host: str = "127.0.0.1", port: int = 8765, token: str,
          on_ready: Callable[[str], None] = print) -> None:
    """Run the app with uvicorn until Ctrl-C. `on_ready` gets the URL with the token (in the fragment, which the
    browser never sends to a server)."""
    import uvicorn

    if not project.is_dir():
        raise QwenRecipesError(f"{project}: project folder not found")
    hosts = LOCAL_HOSTS if host in LOCAL_HOSTS else (*LOCAL_HOSTS, host)
    app = create_app(project, token, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    on_ready(f"http://{shown}:{port}/#token={token}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
