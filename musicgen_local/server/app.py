"""The FastAPI app: wiring, limits, and every exception -> HTTP status mapping in one place (the token: auth.py).

Errors use Replicate's RFC 7807 problem shape (`title`, `detail`, `status`), which the Python
client's `ReplicateError.from_response` reads; nothing a client sends should produce a 500.
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pydantic
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..engine.api import EngineClient
from ..registry import Registry
from ..settings import Settings
from . import bodies, model_routes, playground, resources, routes, stream_routes, training_routes
from .auth import require_token
from .bodylimit import BodyLimit, BodyTooLarge
from .deadlines import Deadlines
from .dispatcher import Dispatcher
from .metrics import Metrics
from .prediction import Prediction
from .routes import FieldsInvalid, QueueFull
from .store import StorageFailed, Store
from .streams import StreamHub
from .training import Training
from .training_dispatcher import TrainingDispatcher
from .webhooks import WebhookSender

log = logging.getLogger(__name__)
_FILE_URL = re.compile(r"/v1/files/([a-z0-9]+)(?:/download)?$")


def problem(status: int, title: str, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"title": title, "detail": detail, "status": status, **extra},
        status_code=status,
        media_type="application/problem+json",
    )


def field_errors(errors: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 with one entry per bad field, plus a readable summary the clients show in their exception."""
    fields = [
        {"field": ".".join(map(str, (*prefix, *e["loc"]))), "type": e["type"], "description": e["msg"]} for e in errors
    ]
    summary = "\n".join(f"- {f['field']}: {f['description']}" for f in fields)
    return problem(422, "Input validation failed", summary, invalid_fields=fields)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        titles = {
            400: "Bad request",
            401: "Unauthenticated",
            404: "Not found",
            405: "Method not allowed",
            413: "Request too large",
            422: "Unprocessable entity",
            503: "Service unavailable",
        }
        response = problem(exc.status_code, titles.get(exc.status_code, "Error"), exc.detail)
        response.headers.update(exc.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return field_errors(list(exc.errors()))

    @app.exception_handler(pydantic.ValidationError)
    async def body_invalid(request: Request, exc: pydantic.ValidationError) -> JSONResponse:
        return field_errors(exc.errors())

    @app.exception_handler(FieldsInvalid)
    async def fields_invalid(request: Request, exc: FieldsInvalid) -> JSONResponse:
        return field_errors(exc.errors, exc.prefix)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem(413, "Request too large", str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        response = problem(429, "Too many requests", str(exc))
        response.headers["Retry-After"] = str(exc.RETRY_AFTER_S)
        return response

    @app.exception_handler(StorageFailed)
    async def storage_failed(request: Request, exc: StorageFailed) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc.__cause__ or exc)
        if exc.full:
            return problem(507, "Insufficient storage", str(exc))
        response = problem(503, "Service unavailable", str(exc))
        response.headers["Retry-After"] = str(QueueFull.RETRY_AFTER_S)
        return response

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return problem(500, "Internal server error", "Unexpected server error; see the server log.")


async def _remove_expired_forever(store: Store, every_s: float) -> None:
    """MUSICGEN_RETENTION: reclaim the disk of what has expired, whether or not anyone reads it."""
    while True:
        await asyncio.sleep(every_s)
        try:
            removed = await run_in_threadpool(store.remove_expired)
        except Exception:  # a bug of ours: log it, try again next time
            log.exception("removing expired outputs failed")
        else:
            if removed:
                log.info("retention: removed the data of %d predictions and uploads", removed)


def input_resolver(store: Store):
    """A file input over HTTP (`input_audio`, a training's `dataset_path`): our own /v1/files URLs become
    the uploaded file's path; other http(s) URLs and data: URIs stay as they are; anything else (a
    server path, file://) is refused, so that no request can read this server's files."""

    def resolve(url: str, name: str = "input_audio") -> str:
        match = _FILE_URL.search(url.split("?")[0])
        if match:
            found = store.get_file(match.group(1))
            if found is None:
                raise _file_input_error(name, f"no file {match.group(1)!r} was uploaded to this server")
            return str(found[1])
        if url.startswith(("http://", "https://", "data:")):
            return url
        raise _file_input_error(name, "must be an http(s) URL, a data: URI, or a file uploaded with POST /v1/files")

    return resolve


def _file_input_error(name: str, message: str) -> FieldsInvalid:
    return FieldsInvalid([{"loc": (name,), "type": "url_scheme", "msg": message}], ("input",))


def create_app(
    settings: Settings,
    engine: EngineClient,
    *,
    page_size: int = 100,
    webhook_throttle_s: float = 0.5,
    webhook_backoff_s: float = 0.1,
    webhook_timeout_s: float = 5.0,
    retention_sweep_s: float = 60.0,
) -> FastAPI:
    store = Store(Path(settings.data_dir), settings.retention_s)
    registry = Registry(Path(settings.data_dir) / "musicgen.sqlite3")

    def render(pred: Prediction, base_url: str | None = None, listing: bool = False) -> dict[str, Any]:
        """`listing`: for a list page, whose outputs are always URLs (inlined, a page of long outputs is
        gigabytes)."""
        inline = store.prediction_dir(pred.id) if settings.output == "data-uri" and not listing else None
        out = pred.to_json(base_url, inline)
        out["urls"]["stream"] = stream_routes.stream_url(settings, base_url or pred.base_url, pred.id)
        return out

    webhooks = WebhookSender(
        store.secret(),
        throttle_s=webhook_throttle_s,
        backoff_s=webhook_backoff_s,
        timeout_s=webhook_timeout_s,
        block_private_urls=settings.block_private_urls,
        render=render,
        journal=store,
    )
    streams = StreamHub(store)

    def scrape() -> dict[str, Any]:
        return {
            "queued": dispatcher.queued(),
            "unfinished": store.unfinished_count(),
            "followers": streams.stats()["followers"],
            "uploaded": store.uploaded_bytes,
            "webhooks": {"prediction": dict(webhooks.counts), "training": dict(training_webhooks.counts)},
            "engine": engine.health(),
        }

    metrics = Metrics(scrape)
    dispatcher = Dispatcher(
        engine, store, webhooks, capacity=getattr(engine, "capacity", 1), observer=metrics.predictions
    )
    dispatcher.subscribe(streams.on_event)
    dispatcher.on_finished(streams.finished)

    def cancel_late(pred_id: str) -> None:  # a Cancel-After deadline passed: what POST .../cancel does
        pred = store.get(pred_id)
        if pred is not None:
            dispatcher.cancel(pred)

    deadlines = Deadlines(cancel_late)

    # No retention for trainings: the versions they made serve their weights.
    training_store = Store(Path(settings.data_dir), kind="trainings", record=Training)
    training_webhooks = WebhookSender(
        store.secret(),
        throttle_s=webhook_throttle_s,
        backoff_s=webhook_backoff_s,
        timeout_s=webhook_timeout_s,
        block_private_urls=settings.block_private_urls,
        render=Training.to_json,
        journal=training_store,
    )
    trainings = TrainingDispatcher(engine, training_store, training_webhooks, registry, observer=metrics.trainings)

    def cancel_training_late(training_id: str) -> None:
        training = training_store.get(training_id)
        if training is not None:
            trainings.cancel(training)

    training_deadlines = Deadlines(cancel_training_late)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        webhooks.resume()  # before the dispatcher starts, whose own `completed` webhooks are kept anew
        training_webhooks.resume()
        dispatcher.start()
        deadlines.restore(store.unfinished_runs())
        deadlines.start()
        trainings.start()
        training_deadlines.restore(training_store.unfinished_runs())
        training_deadlines.start()
        sweeper = asyncio.create_task(_remove_expired_forever(store, retention_sweep_s)) if store.retention else None
        yield
        if sweeper:
            sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await sweeper
        deadlines.stop()
        training_deadlines.stop()
        # A training is not waited for (it may have hours left): it stops, and resumes at the next start.
        await asyncio.gather(
            asyncio.to_thread(dispatcher.drain, settings.shutdown_grace), asyncio.to_thread(trainings.drain, 0)
        )
        webhooks.close()
        training_webhooks.close()

    app = FastAPI(title="musicgen-local", lifespan=lifespan)
    app.state.settings, app.state.store, app.state.dispatcher, app.state.render = settings, store, dispatcher, render
    app.state.webhooks, app.state.engine, app.state.page_size = webhooks, engine, page_size
    app.state.deadlines, app.state.resolve_input = deadlines, input_resolver(store)
    app.state.streams, app.state.registry, app.state.metrics = streams, registry, metrics
    app.state.training_store, app.state.trainings, app.state.training_deadlines = (
        training_store,
        trainings,
        training_deadlines,
    )
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    auth = [Depends(require_token)]
    app.include_router(routes.router, prefix="/v1", dependencies=auth, responses=bodies.problems(401))
    app.include_router(resources.v1, prefix="/v1", dependencies=auth, responses=bodies.problems(401))
    app.include_router(model_routes.router, prefix="/v1", dependencies=auth, responses=bodies.problems(401))
    app.include_router(training_routes.router, prefix="/v1", dependencies=auth, responses=bodies.problems(401))
    app.include_router(training_routes.public)
    app.include_router(resources.operator, dependencies=auth)
    app.include_router(resources.public)
    app.include_router(stream_routes.v1, prefix="/v1")  # its own auth: the bearer token or the URL's signature
    app.include_router(stream_routes.public)
    playground.install(app)  # GET / and /playground/*: the browser page, public like /health-check
    bodies.install(app)
    return app
