"""/v1/trainings, as Replicate's clients call it: create (on a version of meta/musicgen, into a model
created with POST /v1/models), list, get, cancel; and the public delivery of a training's weights."""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ..engine.api import TrainingRequest
from ..registry import MUSICGEN, PUBLISHED_MODELS
from . import file_inputs
from . import run_routes as runs
from .bodies import EVENTS, json_body, problems
from .file_inputs import FileInput
from .model_routes import found_model
from .params import CancelAfter, CreatedAfter, CreatedBefore, Cursor
from .run_routes import FieldsInvalid
from .training import WEIGHTS_FILE

router = APIRouter()
public = APIRouter()
NOUN = "training"


class TrainingBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    destination: str | None = pydantic.Field(None, description="`owner/name` of a model made with POST /v1/models.")
    input: dict[str, Any] = {}
    webhook: pydantic.AnyHttpUrl | None = None
    webhook_events_filter: list[EVENTS] | None = None


def _destination(request: Request, body: TrainingBody) -> str:
    if not body.destination:
        raise FieldsInvalid(
            [
                {
                    "loc": ("destination",),
                    "type": "missing",
                    "msg": "A training needs a `destination`: `owner/name` of a model made with "
                    "POST /v1/models, which gets the new version.",
                }
            ]
        )
    owner, slash, name = body.destination.partition("/")
    if not slash or body.destination in {m.full_name for m in PUBLISHED_MODELS}:
        raise FieldsInvalid(
            [
                {
                    "loc": ("destination",),
                    "type": "value_error",
                    "msg": "`destination` must be `owner/name` of a model you created with "
                    f"POST /v1/models (not {body.destination!r}).",
                }
            ]
        )
    if request.app.state.registry.model(body.destination) is None:
        raise HTTPException(
            404, f"The destination model {body.destination!r} does not exist. Create it first with POST /v1/models."
        )
    running = runs.stack(request, NOUN).dispatcher.running_into(body.destination)
    if running:
        raise HTTPException(
            409,
            f"Training {running} into {body.destination} is still running; wait for it to "
            "finish or cancel it before training into that model again.",
        )
    return body.destination


async def _checked_training_input(request: Request, body: TrainingBody) -> tuple[pydantic.BaseModel, FileInput]:
    """The validated input (as the engine takes it) and the dataset (file_inputs.py)."""
    from ..training.params import parse_training_input  # torch-free, but not needed by servers that never train

    try:
        parsed = parse_training_input(body.input)
    except pydantic.ValidationError as exc:
        raise FieldsInvalid(exc.errors(), ("input",)) from None
    dataset = await file_inputs.take(request, parsed.dataset_path, "dataset_path")
    return parsed.model_copy(update={"dataset_path": dataset.kept}), dataset


@router.post(
    "/models/{owner}/{name}/versions/{version_id}/trainings",
    status_code=201,
    openapi_extra=json_body("TrainingRequest"),
    responses=problems(400, 404, 409, 413, 422),
)
async def create_training(
    request: Request, owner: str, name: str, version_id: str, cancel_after: CancelAfter = None
) -> Response:
    body = TrainingBody.model_validate(await runs.read_json_object(request))
    model = found_model(request, owner, name)
    version = request.app.state.registry.version(version_id)
    if version is None or version.model != model.full_name:
        raise HTTPException(404, f"No version {version_id!r} of {model.full_name}.")
    if version.trained:
        raise HTTPException(
            422,
            f"{model.full_name}:{version_id} is itself a fine-tune; train from a version of "
            f"{MUSICGEN} (its base is `{version.base}`).",
        )
    engine_input, dataset = await _checked_training_input(request, body)
    sent = {**body.input, "dataset_path": dataset.kept}
    webhook = await runs.checked_webhook(request, body)
    runs.refuse_while_draining(request, NOUN)
    destination = _destination(request, body)  # no await from here to submit: one training per destination
    training = runs.new_run(
        request, NOUN, version=version.id, model=model.full_name, input=sent, webhook=webhook, destination=destination
    )
    folder = runs.stack(request, NOUN).store.prediction_dir(training.id)
    engine_request = TrainingRequest(engine_input, dataset.local, str(folder / "work"), str(folder / WEIGHTS_FILE))
    training.request = engine_request.as_record()
    runs.submit(request, NOUN, training, body, cancel_after)
    return JSONResponse(runs.render(request, NOUN, training), status_code=201)


@router.get("/trainings/{training_id}", responses=problems(404))
async def get_training(request: Request, training_id: str) -> dict[str, Any]:
    return runs.render(request, NOUN, runs.found(request, NOUN, training_id))


@router.post("/trainings/{training_id}/cancel", responses=problems(404))
async def cancel_training(request: Request, training_id: str) -> dict[str, Any]:
    return runs.cancel(request, NOUN, training_id)


@router.get("/trainings", responses=problems(400, 422))
async def list_trainings(
    request: Request,
    cursor: Cursor = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> dict[str, Any]:
    return runs.listing(request, NOUN, cursor, created_after, created_before)


@public.get("/delivery/trainings/{training_id}/{name}", response_class=FileResponse, responses=problems(404))
async def deliver_weights(request: Request, training_id: str, name: str) -> FileResponse:
    """A training's weights, like its outputs: the unguessable training id is the capability."""
    store = runs.stack(request, NOUN).store
    training = store.get(training_id)
    if training is None or training.weights_file != name:
        raise HTTPException(404, f"No weights {name!r} for training {training_id!r}.")
    return FileResponse(
        store.prediction_dir(training_id) / name,
        media_type="application/x-tar",
        filename=name,
    )
