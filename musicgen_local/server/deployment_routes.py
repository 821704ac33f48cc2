"""/v1/deployments, as Replicate's API and its three official clients have them: list, create, get, update (a new
release), delete, and create a prediction through one (a prediction like any other, naming its `deployment`).

A deployment belongs to this server's account (MUSICGEN_ACCOUNT, GET /v1/account). What its configuration does
here (a model kept warm, predictions capped) is `instances.py`'s; changes are made one at a time, each after the
engine answered whether it can keep the model warm.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ..deployments import MAX_MAX_INSTANCES, MAX_MIN_INSTANCES, Configuration, Deployment, Deployments
from ..errors import MusicgenError
from ..registry import LATEST, MUSICGEN, Version
from . import routes, surrogates
from .bodies import CREATE_FAILURES, created, json_body, problems
from .bodies import Prediction as PredictionBody
from .instances import Instances
from .params import CancelAfter
from .routes import WaitFor

router = APIRouter()
MIN_DOC = (
    "1 or more: its model (and a LoRA fine-tune's adapter) is kept resident on its hardware for as long as the "
    "deployment exists (never evicted by other traffic, counted in the device's memory plan); 0: loaded when "
    f"needed. From 0 to {MAX_MIN_INSTANCES}."
)
MAX_DOC = (
    f"How many of its predictions run at once; the rest wait, in order (0: all wait). From 0 to {MAX_MAX_INSTANCES}."
)


class DeploymentCreate(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "my-sound-prod",
                    "model": MUSICGEN,
                    "version": LATEST,
                    "hardware": "cpu",
                    "min_instances": 1,
                    "max_instances": 2,
                }
            ]
        },
    )
    name: str = pydantic.Field(description="Its name; its owner is this server's account (GET /v1/account).")
    model: str = pydantic.Field(description="`owner/name` of the version's model (meta/musicgen, or a fine-tune's).")
    version: str = pydantic.Field(description="The version's id.")
    hardware: str = pydantic.Field(description="A `sku` of GET /v1/hardware: one of this server's devices.")
    min_instances: int = pydantic.Field(ge=0, le=MAX_MIN_INSTANCES, description=MIN_DOC)
    max_instances: int = pydantic.Field(ge=0, le=MAX_MAX_INSTANCES, description=MAX_DOC)


class DeploymentUpdate(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    version: str | None = pydantic.Field(None, description="A version id (of any model: a fine-tune's too).")
    hardware: str | None = None
    min_instances: int | None = pydantic.Field(None, ge=0, le=MAX_MIN_INSTANCES, description=MIN_DOC)
    max_instances: int | None = pydantic.Field(None, ge=0, le=MAX_MAX_INSTANCES, description=MAX_DOC)


class Account(pydantic.BaseModel):
    type: Literal["user", "organization"]
    username: str
    name: str
    github_url: str | None = None


class ConfigurationBody(pydantic.BaseModel):
    hardware: str
    min_instances: int
    max_instances: int


class ReleaseBody(pydantic.BaseModel):
    number: int
    model: str
    version: str
    created_at: str
    created_by: Account
    configuration: ConfigurationBody


class DeploymentBody(pydantic.BaseModel):
    owner: str
    name: str
    current_release: ReleaseBody


class DeploymentPage(pydantic.BaseModel):
    next: str | None
    previous: str | None
    results: list[DeploymentBody]


def account_json(request: Request) -> dict[str, Any]:
    username = request.app.state.settings.account
    return {"type": "user", "username": username, "name": username, "github_url": None}


def deployment_json(request: Request, deployment: Deployment) -> dict[str, Any]:
    release = deployment.release
    return {
        "owner": deployment.owner,
        "name": deployment.name,
        "current_release": {
            "number": release.number,
            "model": release.model,
            "version": release.version,
            "created_at": release.created_at,
            "created_by": account_json(request),
            "configuration": vars(release.configuration),
        },
    }


def _deployments(request: Request) -> Deployments:
    return request.app.state.deployments


def _instances(request: Request) -> Instances:
    return request.app.state.instances


def found(request: Request, owner: str, name: str) -> Deployment:
    deployment = _deployments(request).get(f"{owner}/{name}")
    if deployment is None:
        raise HTTPException(404, f"No deployment {owner}/{name}. Create it with POST /v1/deployments.")
    return deployment


def _version(request: Request, model: str | None, version_id: str) -> Version:
    """The version a deployment is to run (of `model`, when it is given); 422 naming what exists."""
    registry = request.app.state.registry
    version = registry.version(version_id)
    if version is None or (model is not None and version.model != model):
        where = f" of {model}" if model is not None else ""
        raise HTTPException(422, f"No version {version_id!r}{where}. This server has {', '.join(registry.describe())}.")
    return version


def _checked(body: pydantic.BaseModel) -> None:
    if surrogates.find(body.model_dump()) is not None:
        raise HTTPException(422, "The deployment's fields hold a lone UTF-16 surrogate (such as \\ud800), not text.")


async def _warm(request: Request, deployment: Deployment) -> None:
    """Its model kept warm (or let go) as its configuration says; 422 with the engine's answer when refused."""
    try:
        await _instances(request).warm(deployment)
    except MusicgenError as exc:
        raise HTTPException(422, f"Cannot keep {deployment.full_name} warm: {exc}") from None


def _write(request: Request, deployment: Deployment, write) -> None:
    """`write(deployment)`, unless its version was deleted while the engine was asked (checked holding the
    deployments' lock, which deleting a version holds too)."""
    with _deployments(request).lock:
        if request.app.state.registry.version(deployment.release.version) is None:
            raise HTTPException(422, f"Version {deployment.release.version} was deleted meanwhile.")
        write(deployment)


@router.get("/deployments", responses={200: {"model": DeploymentPage}, **problems(400)})
async def list_deployments(request: Request, cursor: str | None = None) -> dict[str, Any]:
    try:
        page, next_cursor = _deployments(request).page(request.app.state.page_size, cursor)
    except (ValueError, UnicodeError):
        raise HTTPException(400, "Invalid cursor; use the `next` URL of a previous page.") from None
    base = f"{request.base_url}v1/deployments"
    return {
        "next": f"{base}?cursor={next_cursor}" if next_cursor else None,
        "previous": None,
        "results": [deployment_json(request, d) for d in page],
    }


@router.post(
    "/deployments", responses={200: {"model": DeploymentBody}, **problems(400, 409, 413, 422, *CREATE_FAILURES)}
)
async def create_deployment(request: Request, body: DeploymentCreate) -> dict[str, Any]:
    """Answers 200, as Replicate's API does."""
    _checked(body)
    owner = request.app.state.settings.account
    given_owner, slash, name = body.name.rpartition("/")  # clients may send `owner/name`
    if slash and given_owner != owner:
        raise HTTPException(422, f"Deployments here belong to the account {owner!r}: name it {owner}/{name}.")
    version = _version(request, body.model, body.version)
    configuration = Configuration(body.hardware, body.min_instances, body.max_instances)
    try:
        _instances(request).check_hardware(body.hardware)
        deployment = Deployments.new(owner, name, version.model, version.id, configuration)
    except MusicgenError as exc:
        raise HTTPException(422, str(exc)) from None
    async with request.app.state.deployment_changes:
        if _deployments(request).get(deployment.full_name) is not None:
            raise HTTPException(409, f"A deployment named {deployment.full_name} already exists.")
        await _warm(request, deployment)
        try:
            _write(request, deployment, _deployments(request).add)
        except BaseException:
            _instances(request).removed(deployment.full_name)
            raise
        _instances(request).configured(deployment)
    return deployment_json(request, deployment)


@router.get("/deployments/{owner}/{name}", responses={200: {"model": DeploymentBody}, **problems(404)})
async def get_deployment(request: Request, owner: str, name: str) -> dict[str, Any]:
    return deployment_json(request, found(request, owner, name))


@router.patch(
    "/deployments/{owner}/{name}",
    responses={200: {"model": DeploymentBody}, **problems(400, 404, 413, 422, *CREATE_FAILURES)},
)
async def update_deployment(request: Request, owner: str, name: str, body: DeploymentUpdate) -> dict[str, Any]:
    """Any change makes a new release (its `number` one more); the model follows the version."""
    _checked(body)
    if all(value is None for value in body.model_dump().values()):
        raise HTTPException(422, "Give at least one of version, hardware, min_instances, max_instances.")
    async with request.app.state.deployment_changes:
        current = found(request, owner, name)
        was = current.release
        version = _version(request, None, body.version) if body.version is not None else None
        configuration = Configuration(
            body.hardware if body.hardware is not None else was.configuration.hardware,
            body.min_instances if body.min_instances is not None else was.configuration.min_instances,
            body.max_instances if body.max_instances is not None else was.configuration.max_instances,
        )
        model, version_id = (version.model, version.id) if version else (was.model, was.version)
        try:
            _instances(request).check_hardware(configuration.hardware)
            updated = Deployments.next_release(current, model, version_id, configuration)
        except MusicgenError as exc:
            raise HTTPException(422, str(exc)) from None
        await _warm(request, updated)
        try:
            _write(request, updated, _deployments(request).add_release)
        except LookupError:  # deleted by another process meanwhile
            _instances(request).removed(updated.full_name)
            raise HTTPException(404, f"No deployment {owner}/{name}.") from None
        except BaseException:
            await _instances(request).warm(current)  # as it was
            raise
        _instances(request).configured(updated)
    return deployment_json(request, updated)


@router.delete("/deployments/{owner}/{name}", status_code=204, responses=problems(404, *CREATE_FAILURES))
async def delete_deployment(request: Request, owner: str, name: str) -> Response:
    """Its predictions already created still run; its model is no longer kept warm."""
    async with request.app.state.deployment_changes:
        if not _deployments(request).delete(f"{owner}/{name}"):
            raise HTTPException(404, f"No deployment {owner}/{name}.")
        _instances(request).removed(f"{owner}/{name}")
    return Response(status_code=204)


@router.post(
    "/deployments/{owner}/{name}/predictions",
    status_code=201,
    openapi_extra=json_body("DeploymentPredictionRequest"),
    responses={**created(PredictionBody, located=True), **problems(400, 404, 413, 422, 429)},
)
async def create_deployment_prediction(
    request: Request, owner: str, name: str, wait_s: WaitFor, cancel_after: CancelAfter = None
) -> Response:
    """A prediction of the deployment's current version, waiting its turn under its max_instances."""
    release = found(request, owner, name).release
    return await routes._create(
        request, f"{release.model}:{release.version}", cancel_after, wait_s, deployment=f"{owner}/{name}"
    )


def new_lock() -> asyncio.Lock:
    """Deployments change one at a time (each waits for the engine's answer about its pin)."""
    return asyncio.Lock()
