"""/v1/predictions: create (with `Prefer: wait` and `Cancel-After`), get, list (with `created_after`
and `created_before`), cancel. A deployment's predictions are created here too (`_create`, called by
deployment_routes.py with the deployment's current version).

Each handler parses what is a prediction's own and leaves the rest to what every kind of run shares
(run_routes.py); errors map to HTTP in app.py.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..engine.api import LoopRequest
from ..engine.api import Request as EngineRequest
from ..errors import UserError
from ..looper import schema as looper_schema
from ..registry import ENCODE_DECODE, LATEST, Version
from ..schema import FIELDS_BY_NAME, parse_input
from . import file_inputs, model_routes, stream_routes
from . import run_routes as runs
from .bodies import CreateBody, PredictionPage, created, json_body, problems
from .bodies import Prediction as PredictionBody
from .params import CancelAfter, CreatedAfter, CreatedBefore, Cursor
from .prediction import Prediction
from .run_routes import FieldsInvalid, QueueFull

router = APIRouter()
NOUN = "prediction"
MAX_WAIT_S = 60
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:=([^,;\s]*))?(?:$|[,;\s])")


def resolve_version(request: Request, ref: str | None) -> Version:
    """`<id>`, `owner/name:<id>` or `owner/name` (its latest version) -> the registry's version."""
    try:
        return request.app.state.registry.resolve(ref)
    except LookupError as exc:
        raise HTTPException(422, str(exc)) from None


PREFER_DOC = (
    "`wait` (60 s) or `wait=N` (N seconds, 1 to 60; anything else is a 422): answer once the prediction finishes, "
    "or then with status `starting`."
)


def wait_seconds(prefer: Annotated[str | None, Header(alias="Prefer", description=PREFER_DOC)] = None) -> float:
    """`Prefer: wait` -> 60 s, `Prefer: wait=N` -> N s for N in 1-60 (Replicate's range), absent -> 0. Any other
    wait is a 422, read before the prediction is created (its digits are counted before they are made a number)."""
    match = _PREFER_WAIT.search(f" {prefer} ") if prefer else None
    if not match:
        return 0
    value = match.group(1)
    if value is None:
        return MAX_WAIT_S
    if not (value.isdigit() and len(value) <= 2 and 1 <= int(value) <= MAX_WAIT_S):
        shown = value if len(value) <= 20 else f"{value[:20]}..."
        message = f"`wait=N` takes a whole number of seconds from 1 to {MAX_WAIT_S} (got {shown!r})"
        raise FieldsInvalid([{"loc": ("header", "Prefer"), "type": "prefer_wait", "msg": message}])
    return int(value)


def _checked_input(body: CreateBody, version: Version) -> tuple[pydantic.BaseModel, dict[str, Any]]:
    """The validated input, and the input as the client sent it less unknown keys (dropped, as Cog does:
    never stored or echoed). A trained version runs the model_version it was tuned from; a looper's version takes
    the looper's input."""
    raw = body.input
    if version.loops:
        return _checked(looper_schema.parse_input, raw), {
            k: v for k, v in raw.items() if k in looper_schema.FIELDS_BY_NAME
        }
    if version.trained:
        try:
            raw = {**raw, "model_version": version.model_version_for(raw.get("model_version"))}
        except UserError as exc:
            raise FieldsInvalid(
                [{"loc": ("model_version",), "type": "version_mismatch", "msg": str(exc)}], ("input",)
            ) from None
    parsed = _checked(parse_input, raw)
    if not version.allows_encode_decode() and parsed.model_version == ENCODE_DECODE:
        raise HTTPException(
            422,
            f"- input.model_version: '{ENCODE_DECODE}' is not available in version {version.id}; use version {LATEST}.",
        )
    return parsed, {key: value for key, value in body.input.items() if key in FIELDS_BY_NAME}


def _checked(parse, raw: dict[str, Any]) -> pydantic.BaseModel:
    try:
        return parse(raw)
    except pydantic.ValidationError as exc:
        raise FieldsInvalid(exc.errors(), ("input",)) from None


async def _engine_request(
    request: Request, parsed: pydantic.BaseModel, version: Version, sent: dict[str, Any]
) -> dict[str, Any]:
    """The engine's Request, built once at creation (seed fixed, a trained version's weights named, the file input
    taken: see file_inputs.py; `sent` keeps what the prediction shows of it)."""
    if version.loops:
        return LoopRequest.from_input(parsed).with_seed().as_dict()
    engine_request = replace(EngineRequest.from_input(parsed), weights=version.weights, tune=version.tune).with_seed()
    if engine_request.input_audio:
        taken = await file_inputs.take(request, engine_request.input_audio)
        engine_request = replace(engine_request, input_audio=taken.local)
        sent["input_audio"] = taken.kept
    return engine_request.as_dict()


async def _create(
    request: Request,
    version_ref: str | None,
    cancel_after: float | None,
    wait_s: float,
    deployment: str | None = None,
) -> Response:
    """`deployment`: the deployment it is created through (its current version is `version_ref`)."""
    body = CreateBody.model_validate(await runs.read_json_object(request))
    version = resolve_version(request, body.version if version_ref is None else version_ref)
    parsed, sent = _checked_input(body, version)
    webhook = await runs.checked_webhook(request, body)
    runs.refuse_while_draining(request, NOUN)
    _refuse_when_full(request)
    engine_request = await _engine_request(request, parsed, version, sent)
    _refuse_when_full(request)  # again: no await from here to submit
    pred = runs.new_run(
        request,
        NOUN,
        version=version.id,
        model=version.model,
        input=sent,
        webhook=webhook,
        request=engine_request,
        deployment=deployment,
    )
    runs.submit(request, NOUN, pred, body, cancel_after)
    location = {"Location": runs.render(request, NOUN, pred)["urls"]["get"]}  # where to follow it, as Replicate says
    if stream_routes.wants_events(request):  # as Cog does: the events from creation, as the response
        return stream_routes.event_stream(request, pred, status_code=201, headers=location)
    return JSONResponse(await _wait(request, pred, wait_s), status_code=201, headers=location)


def _refuse_when_full(request: Request) -> None:
    max_queue = request.app.state.settings.max_queue
    if max_queue and runs.stack(request, NOUN).store.unfinished_count() >= max_queue:
        raise QueueFull(max_queue)


async def _wait(request: Request, pred: Prediction, wait_s: float) -> dict[str, Any]:
    """Hold the request up to the `Prefer: wait` time. On timeout the object says `starting`, never
    `processing`: both clients treat any other status after a blocking create as finished."""
    await runs.stack(request, NOUN).dispatcher.wait_finished(pred, wait_s)
    out = runs.render(request, NOUN, pred)
    if not pred.done:
        out["status"] = "starting"
    return out


# Read once, before the handler runs (as FastAPI checks every header): a bad wait is a 422 whatever the path names.
WaitFor = Annotated[float, Depends(wait_seconds)]
CREATE = {
    "status_code": 201,
    "openapi_extra": json_body("PredictionRequest"),
    "responses": {**created(PredictionBody, located=True), **problems(400, 413, 422, 429)},
}
FOUND = {"responses": {200: {"model": PredictionBody}, **problems(404)}}


@router.post("/predictions", **CREATE)
async def create_prediction(request: Request, wait_s: WaitFor, cancel_after: CancelAfter = None) -> Response:
    return await _create(request, None, cancel_after, wait_s)


@router.post("/models/{owner}/{name}/predictions", **{**CREATE, "responses": {**CREATE["responses"], **problems(404)}})
async def create_model_prediction(
    request: Request, owner: str, name: str, wait_s: WaitFor, cancel_after: CancelAfter = None
) -> Response:
    """A model's latest version (meta/musicgen's, or the newest a training made)."""
    model_routes.found_model(request, owner, name)  # a model that is not there is a 404, as the path names it
    return await _create(request, f"{owner}/{name}", cancel_after, wait_s)


@router.get("/predictions/{pred_id}", **FOUND)
async def get_prediction(request: Request, pred_id: str) -> dict[str, Any]:
    return runs.render(request, NOUN, runs.found(request, NOUN, pred_id))


@router.post("/predictions/{pred_id}/cancel", **FOUND)
async def cancel_prediction(request: Request, pred_id: str) -> dict[str, Any]:
    return runs.cancel(request, NOUN, pred_id)


@router.get("/predictions", responses={200: {"model": PredictionPage}, **problems(400, 422)})
async def list_predictions(
    request: Request,
    cursor: Cursor = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> dict[str, Any]:
    return runs.listing(request, NOUN, cursor, created_after, created_before)
