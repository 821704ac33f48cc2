"""File uploads, the webhook secret, health,
and the public delivery of outputs."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from . import surrogates
from .bodies import ANY_FILE, AUDIO, CREATE_FAILURES, UPLOAD_BODY, UPLOAD_PARTS, File, created, problems
from .metrics import CONTENT_TYPE
from .prediction import iso, now

v1 = APIRouter()  # behind the token, when one is set
operator = APIRouter()  # /metrics: at the root, where Prometheus looks, behind the token when one is set
public = APIRouter()  # health and outputs: the Node client fetches outputs with plain fetch(), no token
MAX_METADATA_DEPTH = 32


def _file_json(request: Request, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "urls": {"get": f"{request.base_url}v1/files/{record['id']}"}}


async def _metadata(part: Any) -> dict[str, Any]:
    """`metadata` comes as a plain field (Python client) or as a JSON blob part (Node client)."""
    raw = await part.read() if isinstance(part, StarletteUpload) else part
    try:
        meta = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise HTTPException(400, "`metadata` must be a JSON object.")
    if surrogates.depth(meta) > MAX_METADATA_DEPTH:  # deeper ones cannot be rendered back
        raise HTTPException(400, f"`metadata` may nest at most {MAX_METADATA_DEPTH} levels deep.")
    if surrogates.find(meta) is not None:
        raise HTTPException(400, "`metadata` holds a lone UTF-16 surrogate (such as \\ud800), which is not text.")
    return meta


def _text_part(form: Any, name: str) -> str | None:
    part = form.get(name)
    if part is not None and not isinstance(part, str):
        raise HTTPException(400, f"`{name}` must be a plain form field, not a file.")
    return part or None


@v1.post(
    "/files",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={**created(File), **problems(400, 413, 422, *CREATE_FAILURES)},
)
async def create_file(request: Request) -> dict[str, Any]:
    """Multipart upload (`content`; optional `filename`, `type` and `metadata`, as Replicate documents them), as
    both clients send local file inputs. The multipart parser spools the content to a temporary file; the store
    copies it to its place."""
    try:
        async with request.form(max_files=2, max_fields=4) as form:  # closes (deletes) the spooled parts
            content = form.get("content")
            if not isinstance(content, StarletteUpload):
                raise HTTPException(422, "- content: a file part named `content` is required.")
            unknown = sorted(set(form.keys()) - set(UPLOAD_PARTS))
            if unknown:
                named = ", ".join(repr(name[:40]) for name in unknown[:5])
                raise HTTPException(400, f"Unknown parts ({named}): send `content`, and optionally {UPLOAD_PARTS[1:]}.")
            metadata = await _metadata(form.get("metadata"))
            record = await run_in_threadpool(
                request.app.state.files.add,
                _text_part(form, "filename") or content.filename or "file",
                _text_part(form, "type") or content.content_type,
                content.file,
                metadata,
            )
    except MultiPartException:
        raise HTTPException(400, "Send the file as multipart/form-data with a `content` part.") from None
    return _file_json(request, record)


def _stored_file(request: Request, file_id: str):
    found = request.app.state.files.get(file_id)
    if not found:
        raise HTTPException(404, f"No file with id {file_id!r}.")
    return found


@v1.get("/files/{file_id}", responses={200: {"model": File}, **problems(404)})
async def get_file(request: Request, file_id: str) -> dict[str, Any]:
    return _file_json(request, _stored_file(request, file_id)[0])


@v1.get("/files/{file_id}/download", response_class=FileResponse, responses={**ANY_FILE, **problems(404)})
async def download_file(request: Request, file_id: str) -> FileResponse:
    record, path = _stored_file(request, file_id)
    return FileResponse(path, media_type=record["content_type"], filename=record["name"])


@v1.get("/webhooks/default/secret")
async def webhook_secret(request: Request) -> dict[str, str]:
    return {"key": request.app.state.runs.secret}


@operator.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus' text format (see metrics.py). Needs the bearer token when MUSICGEN_API_TOKEN is set."""
    body = await run_in_threadpool(request.app.state.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE)


@public.get("/health-check")
async def health(request: Request) -> dict[str, Any]:
    """Cog's statuses: STARTING until the engine has warmed up, then READY; DRAINING while shutting down."""
    engine = request.app.state.engine.health()
    status = engine.get("status", "READY") if request.app.state.runs.accepting else "DRAINING"
    return {"status": status, "engine": engine, "time": iso(now())}


@public.get("/delivery/{pred_id}/{name}", response_class=FileResponse, responses={**AUDIO, **problems(404)})
async def deliver_output(request: Request, pred_id: str, name: str) -> FileResponse:
    """Outputs, like replicate.delivery: no token, the unguessable prediction id is the capability."""
    store = request.app.state.runs["prediction"].store
    pred = store.get(pred_id)
    if pred is None or name not in pred.output_names():
        raise HTTPException(404, f"No output {name!r} for prediction {pred_id!r}.")
    media = "audio/mpeg" if name.endswith(".mp3") else "audio/wav"
    return FileResponse(store.prediction_dir(pred_id) / name, media_type=media)
