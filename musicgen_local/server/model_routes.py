"""/v1/models: meta/musicgen and its published versions, plus the models users create to train into
and the versions their trainings produce (all from `musicgen_local.registry`); deleting them, unless a
deployment uses them."""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import UserError
from ..looper import schema as looper_schema
from ..registry import LOOPER, MUSICGEN, NAME_PATTERN, VISIBILITIES, Model, Registry, Version
from ..schema import openapi_schema
from . import surrogates
from .bodies import CREATE_FAILURES, problems

router = APIRouter()
COG_VERSION = "0.23.1"
META = {
    MUSICGEN: {
        "github_url": "https://github.com/facebookresearch/audiocraft",
        "paper_url": "https://arxiv.org/abs/2306.05284",
        "license_url": "https://github.com/facebookresearch/audiocraft/blob/main/LICENSE_weights",
    },
    LOOPER: {
        "github_url": "https://github.com/andreasjansson/cog-musicgen-looper",
        "paper_url": None,
        "license_url": "https://github.com/andreasjansson/cog-musicgen-looper/blob/main/LICENSE",
    },
}


def _documented(**schema: Any) -> Any:
    """What the document says of a field that the registry checks itself (so that its refusal says what to do)."""
    return pydantic.Field(json_schema_extra=schema)


class ModelCreate(pydantic.BaseModel):
    """POST /v1/models, as Replicate's clients send it (`hardware` is recorded: the box is the hardware)."""

    model_config = pydantic.ConfigDict(extra="ignore")
    owner: str = _documented(pattern=f"^{NAME_PATTERN}$")
    name: str = _documented(pattern=f"^{NAME_PATTERN}$")
    visibility: str = pydantic.Field("private", json_schema_extra={"enum": list(VISIBILITIES)})
    hardware: str = "local"
    description: str | None = None


def version_json(version: Version) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": version.id,
        "created_at": version.created_at,
        "cog_version": COG_VERSION,
        "openapi_schema": looper_schema.openapi_schema() if version.loops else openapi_schema(),
    }
    if version.trained:  # ours: what it was tuned from (Replicate shows nothing of the kind)
        out["base_model_version"], out["weights_kind"], out["training"] = version.base, version.kind, version.training
    return out


def model_json(request: Request, model: Model, registry: Registry) -> dict[str, Any]:
    latest = registry.latest(model.full_name)
    extra = META.get(model.full_name, {"github_url": None, "paper_url": None, "license_url": None})
    return {
        "url": f"{request.base_url}v1/models/{model.full_name}",
        "owner": model.owner,
        "name": model.name,
        "description": model.description,
        "visibility": model.visibility,
        **extra,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        "hardware": model.hardware,
        "created_at": model.created_at,
        "latest_version": version_json(latest) if latest else None,
    }


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def found_model(request: Request, owner: str, name: str) -> Model:
    model = _registry(request).model(f"{owner}/{name}")
    if model is None:
        raise HTTPException(404, f"No model {owner}/{name!r}. Create it with POST /v1/models.")
    return model


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry = _registry(request)
    return {"next": None, "previous": None, "results": [model_json(request, m, registry) for m in registry.models()]}


@router.post("/models", responses=problems(400, 409, 422, *CREATE_FAILURES), status_code=201)
async def create_model(request: Request, body: ModelCreate) -> dict[str, Any]:
    if surrogates.find(body.model_dump()) is not None:
        raise HTTPException(
            422, "The model's fields hold a lone UTF-16 surrogate (such as \\ud800), which is not text."
        )
    try:
        model = await run_in_threadpool(
            _registry(request).create_model, body.owner, body.name, body.description, body.visibility, body.hardware
        )
    except UserError as exc:
        raise HTTPException(422, str(exc)) from None
    except FileExistsError:
        raise HTTPException(409, f"A model named {body.owner}/{body.name} already exists.") from None
    return model_json(request, model, _registry(request))


@router.get("/models/{owner}/{name}", responses=problems(404))
async def get_model(request: Request, owner: str, name: str) -> dict[str, Any]:
    return model_json(request, found_model(request, owner, name), _registry(request))


@router.get("/models/{owner}/{name}/versions", responses=problems(404))
async def list_versions(request: Request, owner: str, name: str) -> dict[str, Any]:
    model = found_model(request, owner, name)
    return {
        "next": None,
        "previous": None,
        "results": [version_json(v) for v in _registry(request).versions(model.full_name)],
    }


@router.get("/models/{owner}/{name}/versions/{version_id}", responses=problems(404))
async def get_version(request: Request, owner: str, name: str, version_id: str) -> dict[str, Any]:
    model = found_model(request, owner, name)
    version = _registry(request).version(version_id)
    if version is None or version.model != model.full_name:
        have = ", ".join(v.id for v in _registry(request).versions(model.full_name)) or "none yet"
        raise HTTPException(404, f"No version {version_id!r} of {model.full_name}; it has {have}.")
    return version_json(version)


def _unless_deployed(request: Request, what: str, **used) -> None:
    """409 naming the deployments that run this model or version (call it holding the deployments' lock)."""
    using = request.app.state.deployments.using(**used)
    if using:
        raise HTTPException(
            409,
            f"{what} is used by the deployment{'s' if len(using) > 1 else ''} {', '.join(using)}: point "
            f"{'them' if len(using) > 1 else 'it'} at another version (PATCH /v1/deployments/<owner>/<name>) or "
            "delete it first.",
        )


@router.delete("/models/{owner}/{name}", status_code=204, responses=problems(404, 409, *CREATE_FAILURES))
async def delete_model(request: Request, owner: str, name: str) -> Response:
    """As on Replicate, a model is deleted once it has no versions."""
    model = found_model(request, owner, name)
    with request.app.state.deployments.lock:  # no deployment starts using it meanwhile
        _unless_deployed(request, model.full_name, model=model.full_name)
        try:
            _registry(request).delete_model(model.full_name)
        except UserError as exc:
            raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)


@router.delete(
    "/models/{owner}/{name}/versions/{version_id}", status_code=204, responses=problems(404, 409, *CREATE_FAILURES)
)
async def delete_version(request: Request, owner: str, name: str, version_id: str) -> Response:
    """Its weights stay with the training that made them (its output)."""
    model = found_model(request, owner, name)
    version = _registry(request).version(version_id)
    if version is None or version.model != model.full_name:
        raise HTTPException(404, f"No version {version_id!r} of {model.full_name}.")
    with request.app.state.deployments.lock:
        _unless_deployed(request, f"{model.full_name}:{version_id}", version=version_id)
        try:
            _registry(request).delete_version(version_id)
        except UserError as exc:
            raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)
