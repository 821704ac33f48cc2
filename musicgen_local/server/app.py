"""The FastAPI app: wiring, limits, and every exception -> HTTP status mapping in one place (the token: auth.py).

Errors use Replicate's RFC 7807 problem shape (`title`, `detail`, `status`), which the Python
client's `ReplicateError.from_response` reads; nothing a client sends should produce a 500.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pydantic
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..database import Database, StorageFailed
from ..deployments import Deployments
from ..engine.api import EngineClient
from ..registry import Registry
from ..settings import Settings
from . import (
    bodies,
    catalog_routes,
    deployment_routes,
    methods,
    model_routes,
    playground,
    resources,
    routes,
    stream_routes,
    training_routes,
)
from .auth import require_token
from .bodylimit import BodyLimit, BodyTooLarge
from .files import FileStore
from .instances import Instances
from .metrics import Metrics
from .run_routes import FieldsInvalid, QueueFull
from .runs import RunStacks, WebhookTiming, Wiring
from .streams import StreamHub
from .webhooks import signing_secret

log = logging.getLogger(__name__)


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
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method the path is served with, not only the first route's
            response.headers["Allow"] = methods.allowed(request)
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


async def _keep_tidy_forever(runs: RunStacks, files: FileStore, retention_every_s: float, every_s: float = 5) -> None:
    """Write what a full disk left owed (finished runs' last states), and, with MUSICGEN_RETENTION, reclaim the disk
    of what has expired, whether or not anyone reads it."""
    since_retention = 0.0
    while True:
        await asyncio.sleep(every_s)
        since_retention += every_s
        try:
            for stack in runs:
                await run_in_threadpool(stack.store.flush)
            if since_retention >= retention_every_s:
                since_retention = 0.0
                removed = sum([await run_in_threadpool(s.store.remove_expired) for s in runs])
                removed += await run_in_threadpool(files.remove_expired)
                if removed:
                    log.info("retention: removed the data of %d runs and uploads", removed)
        except Exception:  # a bug of ours: log it, try again next time
            log.exception("keeping the data folder tidy failed")


def _prediction_urls(settings: Settings, base: str, pred_id: str) -> dict[str, str]:
    """The `urls` of a prediction beside `get` and `cancel`: its audio while it generates, and its page."""
    return {
        "stream": stream_routes.stream_url(settings, base, pred_id),
        "web": playground.prediction_page(base, pred_id),
    }


def _install_routes(app: FastAPI, settings: Settings) -> None:
    """The body limit, every router (/v1 behind the token; health, delivery and the playground public), OpenAPI."""
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    auth = [Depends(require_token)]
    v1 = (routes.router, resources.v1, model_routes.router, training_routes.router)
    for router in (*v1, deployment_routes.router, catalog_routes.router):
        app.include_router(router, prefix="/v1", dependencies=auth, responses=bodies.problems(401))
    app.include_router(training_routes.public)
    app.include_router(resources.operator, dependencies=auth)
    app.include_router(resources.public)
    app.include_router(stream_routes.v1, prefix="/v1")  # its own auth: the bearer token or the URL's signature
    app.include_router(stream_routes.public)
    playground.install(app)  # GET /, /p/<id> and /playground/*: the browser pages, public like /health-check
    bodies.install(app)


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
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    database = Database(data / "musicgen.sqlite3")
    registry, files = Registry(database), FileStore(database, data, settings.retention_s)

    def scrape() -> dict[str, Any]:
        return {
            "queued": runs["prediction"].dispatcher.queued(),
            "unfinished": runs["prediction"].store.unfinished_count(),
            "followers": streams.stats()["followers"],
            "uploaded": files.uploaded_bytes,
            "webhooks": {stack.kind.noun: dict(stack.webhooks.counts) for stack in runs},
            "engine": engine.health(),
        }

    metrics = Metrics(scrape)
    timing = WebhookTiming(webhook_throttle_s, webhook_backoff_s, webhook_timeout_s)
    runs = RunStacks(Wiring(settings, engine, database, registry, metrics, signing_secret(data), timing))
    predictions = runs["prediction"]
    streams = StreamHub(predictions.store)
    predictions.dispatcher.subscribe(streams.on_event)
    predictions.dispatcher.on_finished(streams.finished)
    predictions.add_urls(lambda pred, base: _prediction_urls(settings, base, pred.id))
    deployments = Deployments(database)
    instances = Instances(deployments, registry, engine, predictions.dispatcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runs.start()
        instances.restore()
        tidy = asyncio.create_task(_keep_tidy_forever(runs, files, retention_sweep_s))
        yield
        tidy.cancel()
        with suppress(asyncio.CancelledError):
            await tidy
        await asyncio.to_thread(runs.stop)

    app = FastAPI(title="musicgen-local", lifespan=lifespan)
    app.state.settings, app.state.engine, app.state.runs, app.state.files = settings, engine, runs, files
    app.state.registry, app.state.streams, app.state.metrics = registry, streams, metrics
    app.state.page_size, app.state.deployments, app.state.instances = page_size, deployments, instances
    app.state.deployment_changes = deployment_routes.new_lock()
    _install_error_handlers(app)
    _install_routes(app, settings)
    return app
