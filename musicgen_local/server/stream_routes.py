"""`urls.stream` over HTTP: Server-Sent Events as Replicate serves them, and the segment files.

The stream lives at `/v1/files/streams/<id>`: the npm client wraps `output` data as a `FileOutput`
only when the stream URL's path starts with `/v1/files/` (Replicate's own are
`https://stream.replicate.com/v1/files/...`), so there each segment comes as an object with
`blob()` and `url()`. The URL carries a signature (`sig`), as Replicate's stream URLs carry their
own token: the npm client and a browser's `EventSource` send no `Authorization` header, and
whoever may read the prediction object may follow it. Without a valid `sig`, the stream needs the
bearer token when MUSICGEN_API_TOKEN is set. Segments are served without a token, like outputs at
`/delivery/`: the random prediction id is the capability.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..settings import Settings
from .auth import require_token
from .bodies import SSE_EVENT, problems
from .prediction import Prediction
from .streams import Entry

v1 = APIRouter()  # its own auth: the bearer token or the URL's signature
public = APIRouter()
_SEGMENT = re.compile(r"\d{5}\.wav")
CORS = {"Access-Control-Allow-Origin": "*"}  # capability URLs: a page on any origin may play them
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", **CORS}


def signature(token: str, pred_id: str) -> str:
    return hmac.new(token.encode(), f"stream:{pred_id}".encode(), hashlib.sha256).hexdigest()[:32]


def stream_url(settings: Settings, base: str, pred_id: str) -> str:
    url = f"{base.rstrip('/')}/v1/files/streams/{pred_id}"
    return f"{url}?sig={signature(settings.api_token, pred_id)}" if settings.api_token else url


def wants_events(request: Request) -> bool:
    """`Accept: text/event-stream` on a create: answer with the stream instead of the JSON object."""
    return "text/event-stream" in request.headers.get("accept", "")


def event_stream(
    request: Request, pred: Prediction, after: int = 0, status_code: int = 200, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """The prediction's events after id `after`, as they come, ending with `done`."""
    hub, inline = request.app.state.streams, request.app.state.settings.output == "data-uri"
    base = str(request.base_url).rstrip("/")

    def output(name: str) -> str:
        if inline:
            data = base64.b64encode(hub.segment_path(pred.id, name).read_bytes()).decode()
            return f"data:audio/wav;base64,{data}"
        return f"{base}/delivery/{pred.id}/stream/{name}"

    async def body() -> AsyncIterator[bytes]:
        async for entry in hub.follow(pred, after):
            yield b": keep-alive\n\n" if entry is None else _encode(entry, output)

    return StreamingResponse(body(), status_code, {**SSE_HEADERS, **(headers or {})}, media_type="text/event-stream")


def _encode(entry: Entry, output) -> bytes:
    data = output(entry.data) if entry.event == "output" else entry.data
    lines = [f"id: {entry.id}", f"event: {entry.event}", *(f"data: {line}" for line in data.split("\n"))]
    return ("\n".join(lines) + "\n\n").encode()


def _authorize(request: Request, pred_id: str) -> None:
    token, sig = request.app.state.settings.api_token, request.query_params.get("sig", "")
    if token and sig and hmac.compare_digest(sig, signature(token, pred_id)):
        return
    require_token(request)


def _after(last_event_id: str | None) -> int:
    """The id a reconnecting client saw last (0: from the start; anything unreadable also)."""
    text = (last_event_id or "").strip()
    return int(text) if re.fullmatch(r"[0-9]{1,18}", text) else 0  # not "²", not 5000 digits


STREAM = {
    "responses": {
        200: {
            "description": "Server-Sent Events: `output`, `logs`, `error`, `done`, each with an id.",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        204: {"description": "The client saw `done` already (its Last-Event-ID): nothing more."},
        **problems(401, 404, 406),
    }
}
SEGMENT = {
    "responses": {
        200: {
            "description": "A WAV file (32-bit float) of one segment.",
            "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problems(404),
    }
}


@v1.get("/files/streams/{pred_id}", **STREAM)
async def stream_prediction(
    request: Request, pred_id: str, last_event_id: Annotated[str | None, Header()] = None
) -> Response:
    _authorize(request, pred_id)
    pred = request.app.state.runs["prediction"].store.get(pred_id)
    if pred is None:
        raise HTTPException(404, f"No prediction with id {pred_id!r}.")
    accept = request.headers.get("accept", "*/*")
    if not any(kind in accept for kind in ("text/event-stream", "*/*", "text/*")):
        raise HTTPException(406, "This URL serves Server-Sent Events: send `Accept: text/event-stream`.")
    after = _after(last_event_id)
    entries, closed = request.app.state.streams.log_for(pred).since(after)
    if closed and not entries:  # the client saw `done` already: 204 tells an EventSource not to reconnect
        return Response(status_code=204, headers=CORS)
    return event_stream(request, pred, after)


@public.get("/delivery/{pred_id}/stream/{name}", **SEGMENT)
async def deliver_segment(request: Request, pred_id: str, name: str) -> FileResponse:
    """A streamed segment: a WAV (32-bit float, not normalised) of a part of the audio."""
    path = request.app.state.streams.segment_path(pred_id, name)
    if (
        not _SEGMENT.fullmatch(name)
        or request.app.state.runs["prediction"].store.get(pred_id) is None
        or not path.is_file()
    ):
        raise HTTPException(404, f"No segment {name!r} for prediction {pred_id!r}.")
    return FileResponse(path, media_type="audio/wav", headers=CORS)
