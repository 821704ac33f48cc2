"""What this server has, as Replicate's API lists it: `GET /v1/hardware` (its devices, for a deployment's
`hardware`), `GET /v1/account` (its one account, the owner of deployments), and models and versions found by text:
`QUERY /v1/models` (the query as the body, text/plain) and `GET /v1/search` (musicgen_local/search.py)."""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Query, Request
from starlette.exceptions import HTTPException

from ..search import search
from .bodies import problems
from .deployment_routes import Account, account_json
from .model_routes import model_json

router = APIRouter()
MAX_QUERY_BYTES = 4096  # more than any search needs; the body limit would allow 100 MB
TEXT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/plain": {"schema": {"type": "string", "description": "Words to find, e.g. `lora large`."}}},
    }
}


class Hardware(pydantic.BaseModel):
    sku: str = pydantic.Field(description="What a deployment's `hardware` names: `cpu`, `cuda:0`, ...")
    name: str


class ModelBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    url: str
    owner: str
    name: str
    description: str | None
    visibility: str
    run_count: int
    latest_version: dict[str, Any] | None


class ModelPage(pydantic.BaseModel):
    next: str | None
    previous: str | None
    results: list[ModelBody]


class SearchMetadata(pydantic.BaseModel):
    generated_description: str
    tags: list[str]
    score: float


class SearchHit(pydantic.BaseModel):
    model: ModelBody
    metadata: SearchMetadata


class SearchResults(pydantic.BaseModel):
    query: str
    models: list[SearchHit]
    collections: list[dict[str, Any]]
    pages: list[dict[str, Any]]


def _query_text(raw: bytes) -> str:
    """The query: the body as text, as Replicate documents it (the v2 SDK sends it as a JSON string instead)."""
    try:
        text = raw[:MAX_QUERY_BYTES].decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "The query must be UTF-8 text.") from None
    if text.startswith('"'):
        with suppress(ValueError):
            quoted = json.loads(text)
            if isinstance(quoted, str):
                return quoted
    return text


@router.get("/hardware", response_model=list[Hardware])
async def list_hardware(request: Request) -> list[dict[str, Any]]:
    """This server's devices (each GPU by name, or the CPU): a bare list, as the clients expect."""
    return request.app.state.instances.hardware()


@router.get("/account", response_model=Account)
async def get_account(request: Request) -> dict[str, Any]:
    return account_json(request)


@router.api_route(
    "/models", methods=["QUERY"], openapi_extra=TEXT_BODY, responses={200: {"model": ModelPage}, **problems(400, 413)}
)
async def search_models(request: Request) -> dict[str, Any]:
    """Models whose name, description, versions or tags hold every word of the query (all of them for none)."""
    query = _query_text(await request.body())
    registry = request.app.state.registry
    results = [model_json(request, found.model, registry) for found in search(registry, query)]
    return {"next": None, "previous": None, "results": results}


@router.get("/search", response_model=SearchResults, responses=problems(422))
async def search_everything(
    request: Request,
    query: Annotated[str, Query(description="Words to find in models and their versions (fine-tunes too).")],
    limit: Annotated[int, Query(ge=1, le=50, description="How many models at most.")] = 20,
) -> dict[str, Any]:
    registry = request.app.state.registry
    hits = [
        {
            "model": model_json(request, found.model, registry),
            "metadata": {"generated_description": found.description, "tags": found.tags, "score": found.score},
        }
        for found in search(registry, query, limit)
    ]
    return {"query": query, "models": hits, "collections": [], "pages": []}
