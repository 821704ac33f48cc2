"""The FastAPI app: wiring, auth, body limits, and every exception -> HTTP status mapping in one place.

Errors use Replicate's RFC 7807 problem shape (`title`, `detail`, `status`), which the Python
client's `ReplicateError.from_response` reads; nothing a client sends should produce a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydantic
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..engine.api import EngineClient
from ..settings import Settings
from . import resources, routes, stream_routes
from .deadlines import Deadlines
from .dispatcher import Dispatcher
from .prediction import Prediction
from .routes import InputInvalid
from .store import Store
from .streams import StreamHub
from .webhooks import WebhookSender

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 100 * 1024 * 1024  # uploads and data: URIs; a 5-minute stereo wav is ~60 MB
_FILE_URL = re.compile(r"/v1/files/([a-z0-9]+)(?:/download)?$")


def problem(status: int, title: str, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status, **extra}, status_code=status,
                        media_type="application/problem+json")


def field_errors(errors: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 with one entry per bad field, plus a readable summary the clients show in their exception."""
    fields = [{"field": ".".join(map(str, (*prefix, *e["loc"]))), "type": e["type"], "description": e["msg"]}
              for e in errors]
    summary = "\n".join(f"- {f['field']}: {f['description']}" for f in fields)
    return problem(422, "Input validation failed", summary, invalid_fields=fields)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        titles = {400: "Bad request", 401: "Unauthenticated", 404: "Not found", 405: "Method not allowed",
                  413: "Request too large", 422: "Unprocessable entity", 503: "Service unavailable"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), exc.detail)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return field_errors(list(exc.errors()))

    @app.exception_handler(pydantic.ValidationError)
    async def body_invalid(request: Request, exc: pydantic.ValidationError) -> JSONResponse:
        return field_errors(exc.errors())

    @app.exception_handler(InputInvalid)
    async def input_invalid(request: Request, exc: InputInvalid) -> JSONResponse:
        return field_errors(exc.errors, ("input",))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return problem(500, "Internal server error", "Unexpected server error; see the server log.")


def _limit_body(app: FastAPI) -> None:
    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return problem(413, "Request too large", f"Request bodies are limited to {MAX_BODY_BYTES} bytes.")
        return await call_next(request)


def require_token(request: Request) -> None:
    """Every /v1 route, when MUSICGEN_API_TOKEN is set: `Authorization: Bearer <token>`."""
    token = request.app.state.settings.api_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(value.strip(), token):
        raise HTTPException(401, "You did not pass a valid authentication token")


def input_resolver(store: Store):
    """`input_audio` over HTTP: our own /v1/files URLs become the uploaded file's path; other http(s)
    URLs and data: URIs stay as they are; anything else (a server path, file://) is refused, so that
    no request can read this server's files."""
    def resolve(url: str) -> str:
        match = _FILE_URL.search(url.split("?")[0])
        if match:
            found = store.get_file(match.group(1))
            if found is None:
                raise InputInvalid([_input_audio_error(f"no file {match.group(1)!r} was uploaded to this server")])
            return str(found[1])
        if url.startswith(("http://", "https://", "data:")):
            return url
        raise InputInvalid([_input_audio_error("must be an http(s) URL, a data: URI, or a file uploaded with "
                                               "POST /v1/files")])

    return resolve


def _input_audio_error(message: str) -> dict[str, Any]:
    return {"loc": ("input_audio",), "type": "url_scheme", "msg": message}


def create_app(settings: Settings, engine: EngineClient, *, page_size: int = 100, webhook_throttle_s: float = 0.5,
               webhook_backoff_s: float = 0.1) -> FastAPI:
    store = Store(Path(settings.data_dir))

    def render(pred: Prediction, base_url: str | None = None) -> dict[str, Any]:
        inline = store.prediction_dir(pred.id) if settings.output == "data-uri" else None
        out = pred.to_json(base_url, inline)
        out["urls"]["stream"] = stream_routes.stream_url(settings, base_url or pred.base_url, pred.id)
        return out

    webhooks = WebhookSender(store.secret(), throttle_s=webhook_throttle_s, backoff_s=webhook_backoff_s,
                             render=render)
    dispatcher = Dispatcher(engine, store, webhooks, capacity=getattr(engine, "capacity", 1))
    streams = StreamHub(store)
    dispatcher.subscribe(streams.on_event)

    def cancel_late(pred_id: str) -> None:  # a Cancel-After deadline passed: what POST .../cancel does
        pred = store.get(pred_id)
        if pred is not None:
            dispatcher.cancel(pred)

    deadlines = Deadlines(cancel_late)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        dispatcher.start()
        deadlines.start()
        yield
        deadlines.stop()
        await asyncio.to_thread(dispatcher.drain, settings.shutdown_grace)
        webhooks.close()

    app = FastAPI(title="musicgen-local", lifespan=lifespan)
    app.state.settings, app.state.store, app.state.dispatcher, app.state.render = settings, store, dispatcher, render
    app.state.webhooks, app.state.engine, app.state.page_size = webhooks, engine, page_size
    app.state.deadlines, app.state.resolve_input = deadlines, input_resolver(store)
    app.state.streams = streams
    _install_error_handlers(app)
    _limit_body(app)
    auth = [Depends(require_token)]
    app.include_router(routes.router, prefix="/v1", dependencies=auth)
    app.include_router(resources.v1, prefix="/v1", dependencies=auth)
    app.include_router(resources.public)
    app.include_router(stream_routes.v1, prefix="/v1")  # its own auth: the bearer token or the URL's signature
    app.include_router(stream_routes.public)
    return app
