"""/v1/predictions: create (with `Prefer: wait` and `Cancel-After`), get, list (with `created_after`
and `created_before`), cancel.

Each handler parses, calls the store/worker, and renders; errors map to HTTP in app.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import pydantic
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import netpolicy
from ..engine.api import Request as EngineRequest
from ..errors import UserError
from ..registry import ENCODE_DECODE, LATEST, Version
from ..schema import FIELDS_BY_NAME, parse_input
from . import stream_routes, surrogates
from .bodies import CreateBody, PredictionPage, created, json_body, problems
from .bodies import Prediction as PredictionBody
from .params import CancelAfter, CreatedAfter, CreatedBefore
from .prediction import Prediction, iso, new_id

router = APIRouter()
MAX_WAIT_S = 60
MAX_JSON_DEPTH = 64  # a create body nests 4 levels; walking a deeper one is what hostile bodies are for
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:=(\d+))?(?:$|[,;\s])")


class FieldsInvalid(Exception):
    """A 422 naming each bad field (pydantic's error shape, under `prefix`), raised before anything is queued."""

    def __init__(self, errors: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> None:
        super().__init__("validation failed")
        self.errors, self.prefix = errors, prefix


class QueueFull(Exception):
    """MUSICGEN_MAX_QUEUE predictions are unfinished: a 429 with Retry-After."""

    RETRY_AFTER_S = 10

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The queue is full: {limit} predictions are waiting or running (MUSICGEN_MAX_QUEUE). "
            f"Retry after {self.RETRY_AFTER_S} seconds."
        )


def _field_error(loc: tuple[str | int, ...], kind: str, message: str) -> FieldsInvalid:
    return FieldsInvalid([{"loc": loc, "type": kind, "msg": message}])


MAX_INT_DIGITS = 100  # no input needs more; turning digits into an int costs their square (CPython stops at 4300)


class LongNumber(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise LongNumber
    return int(digits)


async def read_json_object(request: Request) -> dict[str, Any]:
    try:
        raw = json.loads(await request.body() or b"{}", parse_int=_bounded_int)
        if surrogates.depth(raw) > MAX_JSON_DEPTH:  # whatever the interpreter's recursion limit is
            raise RecursionError
        where = surrogates.find(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "The request body is not valid JSON.") from None
    except LongNumber:
        raise HTTPException(400, f"The request body holds an integer longer than {MAX_INT_DIGITS} digits.") from None
    except RecursionError:  # [[[[...: deeper than Python's parser (or our walk) can go
        raise HTTPException(400, "The request body is nested too deeply.") from None
    if not isinstance(raw, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    if where is not None:
        raise _field_error(
            where,
            "string_unicode",
            "Input should be valid Unicode text: it holds a lone UTF-16 "
            "surrogate (such as \\ud800), which is not a character",
        )
    return raw


def resolve_version(request: Request, ref: str | None) -> Version:
    """`<id>`, `owner/name:<id>` or `owner/name` (its latest version) -> the registry's version."""
    try:
        return request.app.state.registry.resolve(ref)
    except LookupError as exc:
        raise HTTPException(422, str(exc)) from None


def wait_seconds(prefer: str | None) -> float:
    """`Prefer: wait` -> 60 s, `Prefer: wait=N` -> min(N, 60) s, absent -> 0."""
    match = _PREFER_WAIT.search(f" {prefer} ") if prefer else None
    if not match:
        return 0
    return min(int(match.group(1)), MAX_WAIT_S) if match.group(1) else MAX_WAIT_S


def _checked_input(body: CreateBody, version: Version) -> tuple[pydantic.BaseModel, dict[str, Any]]:
    """The validated input, and the input as the client sent it less unknown keys (dropped, as Cog does:
    never stored or echoed). A trained version runs the model_version it was tuned from."""
    raw = body.input
    if version.trained:
        try:
            raw = {**raw, "model_version": version.model_version_for(raw.get("model_version"))}
        except UserError as exc:
            raise FieldsInvalid(
                [{"loc": ("model_version",), "type": "version_mismatch", "msg": str(exc)}], ("input",)
            ) from None
    try:
        parsed = parse_input(raw)
    except pydantic.ValidationError as exc:
        raise FieldsInvalid(exc.errors(), ("input",)) from None
    if not version.allows_encode_decode() and parsed.model_version == ENCODE_DECODE:
        raise HTTPException(
            422,
            f"- input.model_version: '{ENCODE_DECODE}' is not available in version {version.id}; use version {LATEST}.",
        )
    return parsed, {key: value for key, value in body.input.items() if key in FIELDS_BY_NAME}


async def checked_webhook(request: Request, body: Any) -> str | None:
    if body.webhook is None:
        return None
    url = str(body.webhook)
    block_private = request.app.state.settings.block_private_urls
    if reason := await run_in_threadpool(netpolicy.refusal, url, block_private):  # resolving the host blocks
        raise _field_error(("webhook",), "url_refused", f"This server does not send webhooks there: {reason}")
    return url


def _engine_request(request: Request, parsed: pydantic.BaseModel, version: Version) -> dict[str, Any]:
    """The engine's Request, built once at creation (seed fixed, our own upload URLs made local, a
    trained version's weights named)."""
    engine_request = replace(EngineRequest.from_input(parsed), weights=version.weights).with_seed()
    if engine_request.input_audio:
        local = request.app.state.resolve_input(engine_request.input_audio)
        engine_request = replace(engine_request, input_audio=local)
    return engine_request.as_dict()


async def _create(
    request: Request, version_ref: str | None, cancel_after: float | None, prefer: str | None
) -> Response:
    body = CreateBody.model_validate(await read_json_object(request))
    version = resolve_version(request, body.version if version_ref is None else version_ref)
    parsed, sent = _checked_input(body, version)
    engine_request, webhook = _engine_request(request, parsed, version), await checked_webhook(request, body)
    if not request.app.state.dispatcher.accepting:
        raise HTTPException(503, "The server is shutting down; create the prediction again in a moment.")
    max_queue = request.app.state.settings.max_queue
    if max_queue and request.app.state.store.unfinished_count() >= max_queue:  # no await from here to submit
        raise QueueFull(max_queue)
    pred = Prediction(
        id=new_id(),
        version=version.id,
        model=version.model,
        input=sent,
        base_url=str(request.base_url),
        webhook=webhook,
        request=engine_request,
    )
    submit_run(pred, body, cancel_after, request.app.state.dispatcher, request.app.state.deadlines)
    if stream_routes.wants_events(request):  # as Cog does: the events from creation, as the response
        location = request.app.state.render(pred, str(request.base_url))["urls"]["get"]
        return stream_routes.event_stream(request, pred, status_code=201, headers={"Location": location})
    return JSONResponse(await _wait(request, pred, prefer), status_code=201)


def submit_run(run: Prediction, body: Any, cancel_after: float | None, dispatcher, deadlines) -> None:
    """A created prediction (or training) queued, with its events filter and its Cancel-After deadline (kept
    with it, so that a restart still enforces it)."""
    if body.webhook_events_filter is not None:
        run.webhook_events_filter = tuple(body.webhook_events_filter)
    if cancel_after is not None:
        run.cancel_at = run.created_at + timedelta(seconds=cancel_after)
    dispatcher.submit(run)
    if cancel_after is not None:
        deadlines.add(run.id, cancel_after)


async def _wait(request: Request, pred: Prediction, prefer: str | None) -> dict[str, Any]:
    """Hold the request up to the `Prefer: wait` time. On timeout the object says `starting`, never
    `processing`: both clients treat any other status after a blocking create as finished."""
    await request.app.state.dispatcher.wait_finished(pred, wait_seconds(prefer))
    out = request.app.state.render(pred, str(request.base_url))
    if not pred.done:
        out["status"] = "starting"
    return out


PREFER_DOC = (
    "`wait` (up to 60 s) or `wait=N` (seconds): answer once the prediction finishes, or then with status `starting`."
)
Prefer = Annotated[str | None, Header(alias="Prefer", description=PREFER_DOC)]
CREATE = {
    "status_code": 201,
    "openapi_extra": json_body("PredictionRequest"),
    "responses": {**created(PredictionBody), **problems(400, 413, 422, 429)},
}
FOUND = {"responses": {200: {"model": PredictionBody}, **problems(404)}}


@router.post("/predictions", **CREATE)
async def create_prediction(request: Request, cancel_after: CancelAfter = None, prefer: Prefer = None) -> Response:
    return await _create(request, None, cancel_after, prefer)


@router.post("/models/{owner}/{name}/predictions", **CREATE)
async def create_model_prediction(
    request: Request, owner: str, name: str, cancel_after: CancelAfter = None, prefer: Prefer = None
) -> Response:
    """A model's latest version (meta/musicgen's, or the newest a training made)."""
    return await _create(request, f"{owner}/{name}", cancel_after, prefer)


def _found(request: Request, pred_id: str) -> Prediction:
    pred = request.app.state.store.get(pred_id)
    if pred is None:
        raise HTTPException(404, f"No prediction with id {pred_id!r}.")
    return pred


@router.get("/predictions/{pred_id}", **FOUND)
async def get_prediction(request: Request, pred_id: str) -> dict[str, Any]:
    return request.app.state.render(_found(request, pred_id), str(request.base_url))


@router.post("/predictions/{pred_id}/cancel", **FOUND)
async def cancel_prediction(request: Request, pred_id: str) -> dict[str, Any]:
    pred = _found(request, pred_id)
    request.app.state.dispatcher.cancel(pred)
    return request.app.state.render(pred, str(request.base_url))


@router.get("/predictions", responses={200: {"model": PredictionPage}, **problems(400, 422)})
async def list_predictions(
    request: Request,
    cursor: str | None = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> dict[str, Any]:
    try:
        preds, next_cursor, prev_cursor = request.app.state.store.page(
            request.app.state.page_size, cursor, created_after, created_before
        )
    except ValueError:
        raise HTTPException(400, "Invalid cursor; use the `next` or `previous` URL of a previous page.") from None
    base = str(request.base_url)
    # Every page of a filtered list is filtered the same way: the links carry the bounds (in UTC).
    filters = {
        name: iso(t)
        for name, t in (("created_after", created_after), ("created_before", created_before))
        if t is not None
    }

    def link(c: str | None) -> str | None:
        return f"{base}v1/predictions?{urlencode({'cursor': c, **filters})}" if c else None

    results = [request.app.state.render(p, base, listing=True) for p in preds]
    return {"next": link(next_cursor), "previous": link(prev_cursor), "results": results}
