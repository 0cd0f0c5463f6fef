"""The HTTP server: code lookup, codes for new items (cold start), ranking.

``create_app(run_dir, ...)`` builds the FastAPI app; ``serve(run_dir, host, port, ...)`` runs it
under uvicorn (what ``qarm serve`` calls).

    GET  /health                 -> {"status": "ok", "codes_store", "n_codes", "encoder", "ranker", ...}
    GET  /items/{item_id}/codes  -> {"item_id", "vq", "rq"}                         404: no codes for the id
    POST /items/codes            {"items": [ITEM, ...]} -> {"items": [{"item_id", "vq", "rq"}, ...]}
    POST /rank                   {"history", "candidates", "user_id"?, "variant"?}
                                 -> {"variant", "tasks", "items": [{"item_id", "scores": {task: p}}]}

Error answers are ``{"detail": "<one readable line>"}`` (validation errors add ``errors``):
400 malformed JSON / base64 / undecodable media, 403 path outside the media root, 404 unknown ids,
413 body or media too large, 415 image format, 422 schema violations, 503 a stage's output missing
or the code store unreachable. Request input never reaches a 500: anything left is a server bug,
logged with its traceback and answered without one.
"""


import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from qarm.errors import DataError, QarmError
from qarm.serve.config import ServeConfig
from qarm.serve.kv import INT64_MAX, INT64_MIN, CodeStoreError
from qarm.serve.media import BadInput
from qarm.serve.schemas import CandidateScores, ItemCodes, ItemCodesBatch, RankResponse, request_models
from qarm.serve.service import ServeModels, Unavailable, load_serve_config

log = logging.getLogger("qarm.serve")


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
    models = ServeModels(run_dir, cfg)
    _, ItemsRequest, RankRequest = request_models(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.preload:
            models.preload()
        yield
        models.close()

    app = FastAPI(title="qarm", version="1", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.state.models = models
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "run": str(models.run_dir), **models.status()}

    @app.get("/items/{item_id}/codes", response_model=ItemCodes)
    async def item_codes(item_id: int = PathParam(ge=INT64_MIN, le=INT64_MAX)) -> ItemCodes:
        # in-memory and SQLite lookups take microseconds: answered on the event loop, no thread hop;
        # a network store (Redis) would stall the loop, so it goes to the thread pool
        store = models.store
        codes = await run_in_threadpool(store.get, item_id) if store.blocking else store.get(item_id)
        if codes is None:
            raise BadInput(f"item {item_id} has no codes in {models.store.url} ({len(models.store)} items); "
                           f"POST /items/codes assigns codes to a new item from its content", 404)
        return ItemCodes(item_id=item_id, vq=codes[0], rq=codes[1])

    @app.post("/items/codes", response_model=ItemCodesBatch)
    def new_item_codes(body: ItemsRequest) -> ItemCodesBatch:  # type: ignore[valid-type]
        vq, rq = models.encode_items(body.items)
        return ItemCodesBatch(items=[ItemCodes(item_id=it.item_id, vq=v, rq=r)
                                     for it, v, r in zip(body.items, vq.tolist(), rq.tolist())])

    @app.post("/rank", response_model=RankResponse)
    def rank(body: RankRequest) -> RankResponse:  # type: ignore[valid-type]
        for name, ids in (("candidates", body.candidates), ("history", body.history)):
            unknown = models.unknown_ids(ids) if ids else []
            if unknown:
                shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
                raise BadInput(f"{name}: {len(unknown)} item id(s) not in this run's catalogue: {shown}; "
                               f"the ranker scores catalogue items (POST /items/codes handles new ones)", 404)
        variant, ranker = models.ranker(body.variant)
        with models.lock:
            models.set_threads()
            scores = ranker.score(list(body.history), list(body.candidates), body.user_id)
        tasks = list(scores)
        columns = [[float(p) for p in scores[t]] for t in tasks]
        return RankResponse(variant=variant, tasks=tasks, items=[
            CandidateScores(item_id=c, scores={t: col[j] for t, col in zip(tasks, columns)})
            for j, c in enumerate(body.candidates)])

    return app


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
          media_root: str = "") -> None:
    """Run the server until interrupted. Empty ``codes_store``/``media_root`` keep the run config's values."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(run_dir, codes_store=codes_store or None, media_root=media_root or None)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                limit_concurrency=app.state.models.cfg.limit_concurrency, timeout_keep_alive=30)
