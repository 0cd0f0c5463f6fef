"""The HTTP server: code lookup, codes for new items (cold start), ingest, ranking, hot swap.

``create_app(run_dir, ...)`` builds the FastAPI app; ``serve(run_dir, host, port, ...)`` runs it
under uvicorn (what ``qarm serve`` calls).

    GET    /health                 -> {"status": "ok", "codes_store", "n_codes", "version", "n_ingested", ...}
    GET    /items/{item_id}/codes  -> {"item_id", "vq", "rq"}               404: no codes for the id
    POST   /items/codes            {"items": [ITEM, ...]} -> {"items": [{"item_id", "vq", "rq"}, ...]}  (not stored)
    POST   /items                  {"items": [ITEM with item_id, ...], "overwrite"?: bool}
                                   -> {"version", "items": [{"item_id", "vq", "rq", "replaced", "catalogue"}]}
    DELETE /items/{item_id}        -> {"item_id", "deleted", "catalogue"}   404: not ingested; 409: catalogue item
    POST   /rank                   {"history", "candidates", "user_id"?, "variant"?}
                                   -> {"variant", "tasks", "items": [{"item_id", "scores": {task: p}}]}

and, on a separate listener bound to 127.0.0.1 (``serve.admin_port`` / ``--admin-port``):

    GET    /admin/status           -> {"run", "version", "swaps": [...]}
    POST   /admin/reload           {"run"?: DIR} -> {"run", "version", "previous_run", ...}  (also: SIGHUP)

Error answers are ``{"detail": "<one readable line>"}`` (validation errors add ``errors``):
400 malformed JSON / base64 / undecodable media, 403 path outside the media root, 404 unknown ids,
409 a catalogue id without ``overwrite``, 413 body or media too large, 415 image format, 422 schema
violations, 503 a stage's output missing or the code store unreachable. Request input never
reaches a 500: anything left is a server bug, logged with its traceback and answered without one.
"""


import logging
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from qarm.errors import DataError, QarmError
from qarm.serve.config import ServeConfig
from qarm.serve.kv import INT64_MAX, INT64_MIN, CodeStoreError
from qarm.serve.media import BadInput
from qarm.serve.schemas import (CandidateScores, DeleteResponse, IngestedItem, IngestResponse, ItemCodes,
                                ItemCodesBatch, RankResponse, all_request_models)
from qarm.serve.service import ServeState, Unavailable, load_serve_config

log = logging.getLogger("qarm.serve")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def create_app(run_dir: str | Path, codes_store: str | None = None, media_root: str | None = None,
               config: ServeConfig | None = None) -> FastAPI:
    """The app serving ``run_dir``. ``config`` defaults to the run's ``config.json`` ``serve`` section;
    ``codes_store`` / ``media_root`` (when not None) override it. The code store opens here, so a
    wrong ``--codes`` fails before the server starts listening."""
    cfg = config or load_serve_config(run_dir)
    if codes_store is not None:
        cfg.codes_store = str(codes_store)
    if media_root is not None:
        cfg.media_root = str(media_root)
    state = ServeState(run_dir, cfg)
    _, ItemsRequest, RankRequest, IngestRequest = all_request_models(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.preload:
            await run_in_threadpool(state.current.preload)
        yield
        state.close()

    app = FastAPI(title="qarm", version="1", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.state.serve = state
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        with state.use() as models:
            try:  # /health answers while the item store is down: it reports the outage instead
                n_ingested: int | None = (await run_in_threadpool(len, state.items) if state.items.blocking
                                          else len(state.items))
            except CodeStoreError as exc:
                n_ingested = None
                log.warning("item store unreachable: %s", exc)
            return {"status": "ok", "run": str(models.run_dir), **models.status(), "items_store": state.items.url,
                    "n_ingested": n_ingested, "swaps": len(state.swaps)}

    @app.get("/items/{item_id}/codes", response_model=ItemCodes)
    async def item_codes(item_id: int = PathParam(ge=INT64_MIN, le=INT64_MAX)) -> ItemCodes:
        # in-memory and SQLite lookups take microseconds: answered on the event loop, no thread hop;
        # a network store (Redis) would stall the loop, so it goes to the thread pool
        with state.use() as models:
            blocking = models.store.blocking or state.items.blocking
            codes = (await run_in_threadpool(models.lookup, item_id, state.items) if blocking
                     else models.lookup(item_id, state.items))
            if codes is None:
                raise BadInput(f"item {item_id} has no codes in {models.store.url} ({len(models.store)} items) nor "
                               f"among the ingested items; POST /items adds a new item from its content", 404)
        return ItemCodes(item_id=item_id, vq=codes[0], rq=codes[1])

    @app.post("/items/codes", response_model=ItemCodesBatch)
    def new_item_codes(body: ItemsRequest) -> ItemCodesBatch:  # type: ignore[valid-type]
        with state.use() as models:
            vq, rq = models.encode_items(body.items)
        return ItemCodesBatch(items=[ItemCodes(item_id=it.item_id, vq=v, rq=r)
                                     for it, v, r in zip(body.items, vq.tolist(), rq.tolist())])

    @app.post("/items", response_model=IngestResponse)
    def ingest(body: IngestRequest) -> IngestResponse:  # type: ignore[valid-type]
        with state.use() as models:
            entries, replaced = models.ingest(body.items, body.overwrite, state.items)
            version = models.version
        return IngestResponse(version=version, items=[
            IngestedItem(item_id=e.item_id, vq=e.vq, rq=e.rq, replaced=r, catalogue=e.catalogue)
            for e, r in zip(entries, replaced)])

    @app.delete("/items/{item_id}", response_model=DeleteResponse)
    def delete_item(item_id: int = PathParam(ge=INT64_MIN, le=INT64_MAX)) -> DeleteResponse:
        with state.use() as models:
            in_cat = bool(models.in_catalogue([item_id])[0])
            if state.items.delete(item_id):
                return DeleteResponse(item_id=item_id, deleted=True, catalogue=in_cat)
        if in_cat:
            raise BadInput(f"item {item_id} belongs to this run's catalogue and has no ingested override: "
                           f"catalogue items cannot be deleted", 409)
        raise BadInput(f"item {item_id} was not ingested (POST /items adds items)", 404)

    @app.post("/rank", response_model=RankResponse)
    def rank(body: RankRequest) -> RankResponse:  # type: ignore[valid-type]
        with state.use() as models:
            variant, scores = models.rank(list(body.history), list(body.candidates), body.user_id, body.variant,
                                          state.items)
        tasks = list(scores)
        columns = [[float(p) for p in scores[t]] for t in tasks]
        return RankResponse(variant=variant, tasks=tasks, items=[
            CandidateScores(item_id=c, scores={t: col[j] for t, col in zip(tasks, columns)})
            for j, c in enumerate(body.candidates)])

    return app


def create_admin_app(state: ServeState) -> FastAPI:
    """The admin endpoints; served only on a listener bound to 127.0.0.1 (see ``serve``)."""
    admin = FastAPI(title="qarm admin", version="1", telemetry={"tracing": False, "metrics": False, "logs": False})
    _install_error_handlers(admin)

    def _loopback(request: Request) -> None:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:  # the listener is bound to loopback; this guards a misconfigured proxy too
            raise BadInput(f"admin endpoints answer loopback clients only, not {host or 'unknown'}", 403)

    @admin.get("/admin/status")
    def status(request: Request) -> dict[str, Any]:
        _loopback(request)
        with state.use() as models:
            return {"run": str(models.run_dir), "version": models.version, "swaps": state.swaps}

    @admin.post("/admin/reload")
    def reload(request: Request, body: dict[str, Any] | None = Body(default=None)) -> dict[str, Any]:
        _loopback(request)
        run = (body or {}).get("run")
        if run is not None and not isinstance(run, str):
            raise BadInput("run: expected a run directory path (string)", 422)
        try:
            return state.swap(run)
        except Exception as exc:  # whatever stops the new run loading, the old one keeps serving
            log.error("swap to %s failed: %s: %s", run or state.run_arg, type(exc).__name__, exc)
            raise BadInput(f"not swapped, still serving {state.current.run_dir}: {exc}", 409) from None

    return admin


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a JSON 413, whether announced (Content-Length,
    refused before reading) or streamed (chunked: counted while read, refused on crossing)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than {self.max_bytes} bytes (limit max_body_bytes)"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        seen = 0

        async def counted_receive() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, message)  # raised while the route reads the body; FastAPI answers it
            return msg

        await self.app(scope, counted_receive, send)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    """(status, one-line detail, errors without the offending input echoed back)."""
    slim = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type", "")}
            for e in errors]
    json_errors = [e for e in errors if e.get("type") == "json_invalid"]
    if json_errors:
        ctx = json_errors[0].get("ctx", {}) or {}
        return 400, f"request body is not valid JSON: {ctx.get('error', json_errors[0].get('msg'))}", slim
    parts = [f"{'.'.join(e['loc'][1:] if e['loc'][:1] == ['body'] else e['loc']) or 'body'}: {e['msg']}"
             for e in slim[:5]]
    more = f" (and {len(slim) - 5} more)" if len(slim) > 5 else ""
    return 422, "; ".join(parts) + more, slim[:50]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype.lower():
            return JSONResponse({"detail": f"send the body as JSON with Content-Type: application/json "
                                           f"(got {ctype or 'no Content-Type'})"}, status_code=415)
        status, detail, errors = _validation_message(list(exc.errors()))
        return JSONResponse({"detail": detail, "errors": errors}, status_code=status)

    @app.exception_handler(BadInput)
    async def on_bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(DataError)
    async def on_data_error(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Unavailable)
    async def on_unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(QarmError)
    async def on_qarm_error(request: Request, exc: QarmError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(CodeStoreError)
    async def on_store_error(request: Request, exc: CodeStoreError) -> JSONResponse:
        log.error("%s %s: code store failed: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"code store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's "error parsing the body"
            cause = exc.__cause__
            detail = f"request body is not valid JSON: {type(cause).__name__}: {str(cause)[:200]}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, codes_store: str = "",
          media_root: str = "", admin_port: int | None = None) -> None:
    """Run the server until interrupted. Empty ``codes_store``/``media_root`` and ``admin_port=None``
    keep the run config's values. SIGHUP reloads ``run_dir`` (re-resolving a symlink) without a restart."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(run_dir, codes_store=codes_store or None, media_root=media_root or None)
    state: ServeState = app.state.serve
    cfg = state.cfg
    if admin_port is not None:
        cfg.admin_port = admin_port

    def reload_in_background(*_: Any) -> None:
        def run() -> None:
            try:
                state.swap(None)
            except Exception as exc:  # the old run keeps serving; say why the new one did not load
                log.error("reload of %s failed, still serving %s: %s", state.run_arg, state.current.run_dir, exc)
        threading.Thread(target=run, name="qarm-reload", daemon=True).start()

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload_in_background)
    admin_server = None
    if cfg.admin_port:
        import socket

        with socket.socket() as probe:  # a taken port fails here, loudly, not inside the admin thread
            try:
                probe.bind(("127.0.0.1", cfg.admin_port))
            except OSError as exc:
                raise QarmError(f"--admin-port {cfg.admin_port}: cannot listen on 127.0.0.1 ({exc})") from None
        admin_server = uvicorn.Server(uvicorn.Config(create_admin_app(state), host="127.0.0.1", port=cfg.admin_port,
                                                     log_level="warning", access_log=False))
        # a second listener in its own thread and event loop; uvicorn leaves signals to the main one
        threading.Thread(target=admin_server.run, name="qarm-admin", daemon=True).start()
        log.info("admin endpoints on http://127.0.0.1:%d (POST /admin/reload)", cfg.admin_port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                    limit_concurrency=cfg.limit_concurrency, timeout_keep_alive=30)
    finally:
        if admin_server is not None:
            admin_server.should_exit = True


def request_swap(run_dir: str | Path, admin_port: int, timeout: float = 600.0) -> dict[str, Any]:
    """Ask the server whose admin listener is on 127.0.0.1:``admin_port`` to serve ``run_dir``
    (what ``qarm serve --run NEW --swap`` does). Returns its answer; QarmError when it refuses."""
    import httpx

    try:
        r = httpx.post(f"http://127.0.0.1:{admin_port}/admin/reload", json={"run": str(Path(run_dir).resolve())},
                       timeout=timeout)
    except httpx.HTTPError as exc:
        raise QarmError(f"no qarm admin listener on 127.0.0.1:{admin_port} ({type(exc).__name__}: {exc})") from None
    if r.status_code != 200:
        raise QarmError(f"server refused the swap ({r.status_code}): {r.json().get('detail', r.text)}")
    return r.json()
