"""The v1 API's request and response bodies as pydantic models, and the OpenAPI document built from them.

`CreateBody` validates a create request (its `input` is checked separately, against schema.py, so
errors can name `input.<field>`). The other models only describe: the routes read their bodies
themselves (to count bytes and refuse lone surrogates), so FastAPI cannot see them, and `install`
adds them to /openapi.json: the create body with `input` built from schema.py's one list of
fields, the upload's multipart body, and a problem body for every 4xx a route can answer.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..schema import PredictionInput

EVENTS = Literal["start", "output", "logs", "completed"]
_REF = "#/components/schemas/{model}"


class CreateBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    version: str | None = pydantic.Field(None, description="A version id, `meta/musicgen:<id>`, or `meta/musicgen`.")
    input: dict[str, Any] = {}
    webhook: pydantic.AnyHttpUrl | None = pydantic.Field(None, description="Where to POST the prediction's updates.")
    webhook_events_filter: list[EVENTS] | None = pydantic.Field(
        None, description="Which events are sent to `webhook`; all four when absent."
    )


class PredictionRequest(CreateBody):
    """What the create routes document: CreateBody with `input` as the schema's fields."""

    input: PredictionInput = pydantic.Field(  # type: ignore[valid-type]
        default_factory=dict, description="The model's inputs; keys it does not know are dropped."
    )


class DeploymentPredictionRequest(pydantic.BaseModel):
    """What a deployment's create route documents: the version is the deployment's (a `version` sent is ignored)."""

    input: PredictionInput = pydantic.Field(  # type: ignore[valid-type]
        default_factory=dict, description="The model's inputs; keys it does not know are dropped."
    )
    webhook: pydantic.AnyHttpUrl | None = pydantic.Field(None, description="Where to POST the prediction's updates.")
    webhook_events_filter: list[EVENTS] | None = pydantic.Field(
        None, description="Which events are sent to `webhook`; all four when absent."
    )


class Prediction(pydantic.BaseModel):
    id: str
    model: str
    version: str
    deployment: str | None = pydantic.Field(None, description="The deployment it was created through, if any.")
    deadline: str | None = pydantic.Field(None, description="When `Cancel-After` cancels it, if it was given.")
    input: dict[str, Any]
    logs: str
    output: str | dict[str, str] | None  # an output object (the looper's variations) maps names to URLs
    data_removed: bool
    error: str | None
    # Never `aborted` (Replicate's status for a deadline passed before the start): the Python 1.0.7 client rejects
    # it and the other clients wait on it forever; such a prediction ends `canceled` here.
    status: Literal["starting", "processing", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None
    completed_at: str | None
    source: str
    metrics: dict[str, float]
    urls: dict[str, str]


class PredictionPage(pydantic.BaseModel):
    next: str | None
    previous: str | None
    results: list[Prediction]


class File(pydantic.BaseModel):
    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    expires_at: str | None
    urls: dict[str, str]


class InvalidField(pydantic.BaseModel):
    field: str
    type: str
    description: str


class Problem(pydantic.BaseModel):
    """RFC 7807, as Replicate answers errors (the Python client's ReplicateError reads it)."""

    title: str
    detail: str
    status: int
    invalid_fields: list[InvalidField] | None = None


_PROBLEMS = {
    400: "Malformed request: the body is not JSON (or not a JSON object), a bad cursor, a malformed upload.",
    401: "MUSICGEN_API_TOKEN is set and the request does not carry it as `Authorization: Bearer <token>`.",
    404: "No such prediction, training, model, version, file or output.",
    406: "This URL serves Server-Sent Events only: send `Accept: text/event-stream`.",
    409: "It exists already (a model of that name), or a training into that destination is running.",
    413: "The body is larger than MUSICGEN_MAX_BODY_BYTES.",
    422: "Validation failed: `invalid_fields` names each field (`input.duration`, `webhook`, ...).",
    429: "MUSICGEN_MAX_QUEUE predictions are unfinished; retry after the `Retry-After` header's seconds.",
    503: "The server is shutting down (SIGTERM), or its storage refused the write; retry after `Retry-After`.",
    507: "The server's disk is full: nothing was kept.",
}
# What every create may answer besides its own refusals: a drain, or storage that refused the write (app.py).
CREATE_FAILURES = (503, 507)


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "description": _PROBLEMS[code]} for code in codes}


def created(model: type[pydantic.BaseModel], located: bool = False) -> dict[int | str, dict[str, Any]]:
    """A 201 of `model`; `located`: with the `Location` header."""
    return {201: {"model": model, "description": "Created.", **({"headers": LOCATION} if located else {})}}


LOCATION = {"Location": {"description": "Its URL (`urls.get`), to follow it.", "schema": {"type": "string"}}}


def json_body(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
        }
    }


UPLOAD_PARTS = ("content", "filename", "type", "metadata")  # Replicate's; any other part is a 400
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["content"],
                    "additionalProperties": False,
                    "properties": {
                        "content": {"type": "string", "format": "binary", "description": "The file."},
                        "filename": {"type": "string", "description": "Optional: its name (else the part's)."},
                        "type": {"type": "string", "description": "Optional: its content type (else the part's)."},
                        "metadata": {"type": "object", "description": "Optional: a JSON object kept with the file."},
                    },
                }
            }
        },
    }
}
SSE_EVENT = {  # what each Server-Sent Event carries (OpenAPI 3.1: a text/event-stream's schema is one event)
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "Its place in the stream; send it back as Last-Event-ID."},
        "event": {"type": "string", "enum": ["output", "logs", "error", "done"]},
        "data": {
            "type": "string",
            "description": "`output`: a segment's URL; `logs`: a line; `error`: the message; `done`: a JSON object.",
        },
    },
}
AUDIO = {
    200: {
        "description": "The audio file.",
        "content": {
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "audio/mpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ANY_FILE = {
    200: {
        "description": "The uploaded file, with the content type it was uploaded with.",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _training_request() -> type[pydantic.BaseModel]:
    """What the trainings create route documents: `input` as the training inputs (training/params.py)."""
    from ..training.params import TrainingInput

    class TrainingRequest(pydantic.BaseModel):
        destination: str = pydantic.Field(description="`owner/name` of a model made with POST /v1/models.")
        input: TrainingInput = pydantic.Field(description="The training's inputs.")  # type: ignore[valid-type]
        webhook: pydantic.AnyHttpUrl | None = pydantic.Field(None, description="Where to POST the training's updates.")
        webhook_events_filter: list[EVENTS] | None = None

    return TrainingRequest


def _problem_responses(doc: dict[str, Any]) -> None:
    """Every 4xx and 5xx is a problem body as app.py sends it (application/problem+json), including the 422
    FastAPI documents on its own for routes with parameters; every create (a POST answering 201) may also
    answer CREATE_FAILURES."""
    for item in doc["paths"].values():
        for method, operation in item.items():
            responses = operation["responses"]
            if method == "post" and "201" in responses:
                responses.update({str(code): {} for code in CREATE_FAILURES if str(code) not in responses})
            for code, response in responses.items():
                if code[0] in "45":
                    response["description"] = _PROBLEMS.get(int(code), response.get("description", ""))
                    response["content"] = {
                        "application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}
                    }
    for name in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(name, None)


def install(app: FastAPI) -> None:
    """Serve /openapi.json with the request bodies the routes read themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                routes=app.routes,
                description="Replicate's v1 API for meta/musicgen, served locally.",
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            requests = (
                ("PredictionRequest", PredictionRequest),
                ("DeploymentPredictionRequest", DeploymentPredictionRequest),
                ("TrainingRequest", _training_request()),
            )
            for name, model in requests:
                body = model.model_json_schema(ref_template=_REF)
                schemas.update(body.pop("$defs", {}))
                schemas[name] = body
            _problem_responses(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
