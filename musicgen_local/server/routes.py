"""/v1/predictions: create (with `Prefer: wait` and `Cancel-After`), get, list (with `created_after`
and `created_before`), cancel.

Each handler parses, calls the store/worker, and renders; errors map to HTTP in app.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlencode

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..engine.api import Request as EngineRequest
from ..schema import VERSION_IDS, parse_input
from . import stream_routes
from .params import CancelAfter, CreatedAfter, CreatedBefore
from .prediction import MODEL, Prediction, iso, new_id

router = APIRouter()
MAX_WAIT_S = 60
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:=(\d+))?(?:$|[,;\s])")


class InputInvalid(Exception):
    """Schema violations in `input`: a 422 naming each field, raised before anything is queued."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("input validation failed")
        self.errors = errors


class CreateBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    version: str | None = None
    input: dict[str, Any] = {}
    webhook: pydantic.AnyHttpUrl | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "The request body is not valid JSON.") from None


def resolve_version(ref: str | None) -> str:
    """`<id>`, `meta/musicgen:<id>` or `meta/musicgen` (its latest version) -> a version id."""
    if ref is None or ref == MODEL:
        return VERSION_IDS[0]
    version = ref.removeprefix(MODEL + ":")
    if version not in VERSION_IDS:
        raise HTTPException(422, f"Invalid version or not permitted: {ref!r}. This server runs {MODEL} versions "
                                 f"{', '.join(VERSION_IDS)}.")
    return version


def wait_seconds(prefer: str | None) -> float:
    """`Prefer: wait` -> 60 s, `Prefer: wait=N` -> min(N, 60) s, absent -> 0."""
    match = _PREFER_WAIT.search(f" {prefer} ") if prefer else None
    if not match:
        return 0
    return min(int(match.group(1)), MAX_WAIT_S) if match.group(1) else MAX_WAIT_S


async def _create(request: Request, version_ref: str | None, cancel_after: float | None) -> Response:
    raw = await _json_body(request)
    if not isinstance(raw, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    body = CreateBody.model_validate(raw)
    version = resolve_version(body.version if version_ref is None else version_ref)
    try:
        parsed = parse_input(body.input)
    except pydantic.ValidationError as exc:
        raise InputInvalid(exc.errors()) from None
    if version != VERSION_IDS[0] and parsed.model_version == "encode-decode":
        raise HTTPException(422, f"- input.model_version: 'encode-decode' is not available in version {version}; "
                                 f"use version {VERSION_IDS[0]}.")
    if not request.app.state.dispatcher.accepting:
        raise HTTPException(503, "The server is shutting down; create the prediction again in a moment.")
    engine_request = EngineRequest.from_input(parsed).with_seed()
    if engine_request.input_audio:
        local = request.app.state.resolve_input(engine_request.input_audio)
        engine_request = replace(engine_request, input_audio=local)
    pred = Prediction(id=new_id(), version=version, input=body.input, base_url=str(request.base_url),
                      webhook=str(body.webhook) if body.webhook else None, request=engine_request.as_dict())
    if body.webhook_events_filter is not None:
        pred.webhook_events_filter = tuple(body.webhook_events_filter)
    request.app.state.dispatcher.submit(pred)
    if cancel_after is not None:
        request.app.state.deadlines.add(pred.id, cancel_after)
    if stream_routes.wants_events(request):  # as Cog does: the events from creation, as the response
        location = request.app.state.render(pred, str(request.base_url))["urls"]["get"]
        return stream_routes.event_stream(request, pred, status_code=201, headers={"Location": location})
    return JSONResponse(await _wait(request, pred), status_code=201)


async def _wait(request: Request, pred: Prediction) -> dict[str, Any]:
    """Hold the request up to the `Prefer: wait` time. On timeout the object says `starting`, never
    `processing`: both clients treat any other status after a blocking create as finished."""
    deadline = time.monotonic() + wait_seconds(request.headers.get("prefer"))
    while not pred.done and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    out = request.app.state.render(pred, str(request.base_url))
    if not pred.done:
        out["status"] = "starting"
    return out


@router.post("/predictions")
async def create_prediction(request: Request, cancel_after: CancelAfter = None) -> Response:
    return await _create(request, None, cancel_after)


@router.post("/models/meta/musicgen/predictions")
async def create_model_prediction(request: Request, cancel_after: CancelAfter = None) -> Response:
    return await _create(request, MODEL, cancel_after)


def _found(request: Request, pred_id: str) -> Prediction:
    pred = request.app.state.store.get(pred_id)
    if pred is None:
        raise HTTPException(404, f"No prediction with id {pred_id!r}.")
    return pred


@router.get("/predictions/{pred_id}")
async def get_prediction(request: Request, pred_id: str) -> dict[str, Any]:
    return request.app.state.render(_found(request, pred_id), str(request.base_url))


@router.post("/predictions/{pred_id}/cancel")
async def cancel_prediction(request: Request, pred_id: str) -> dict[str, Any]:
    pred = _found(request, pred_id)
    request.app.state.dispatcher.cancel(pred)
    return request.app.state.render(pred, str(request.base_url))


@router.get("/predictions")
async def list_predictions(request: Request, cursor: str | None = None, created_after: CreatedAfter = None,
                           created_before: CreatedBefore = None) -> dict[str, Any]:
    try:
        preds, next_cursor, prev_cursor = request.app.state.store.page(request.app.state.page_size, cursor,
                                                                       created_after, created_before)
    except ValueError:
        raise HTTPException(400, "Invalid cursor; use the `next` or `previous` URL of a previous page.") from None
    base = str(request.base_url)
    # Every page of a filtered list is filtered the same way: the links carry the bounds (in UTC).
    filters = {name: iso(t) for name, t in (("created_after", created_after), ("created_before", created_before))
               if t is not None}

    def link(c: str | None) -> str | None:
        return f"{base}v1/predictions?{urlencode({'cursor': c, **filters})}" if c else None

    results = [request.app.state.render(p, base) for p in preds]
    return {"next": link(next_cursor), "previous": link(prev_cursor), "results": results}
