"""`musicgen-local mcp`: a door for agents. An MCP server (the official `mcp` SDK) over stdio or
streamable HTTP, and a client of a Replicate v1 API: this server by default, any base URL and token.

Tools: generate music (the schema's inputs, from schema.py, described for an agent), get a
prediction, wait for one (bounded, so that a tool call never outlives an agent's timeout: it returns
what there is), cancel one, list the models. Results carry the output URL and `urls.stream`. What the
API refuses comes back as the API's own message; a server that cannot be reached says so and how to
start it.

Whatever a tool puts into an API path is checked and escaped: a prediction id is 26 lowercase letters and digits (the
tool refuses anything else), a model is `owner/name` in Replicate's name rules, each part percent-escaped. How the
door is reached (stdio, or HTTP with its Host, Origin and token checks) is mcp_transport.py.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import httpx
import pydantic
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from . import mcp_transport
from .errors import UserError
from .registry import PUBLISHED, check_name
from .schema import PredictionInput

DEFAULT_URL = "http://127.0.0.1:5000"
MAX_WAIT_S = 120.0  # longest a tool call waits; agents' hosts time calls out after a minute or a few
FINISHED = ("succeeded", "failed", "canceled")
INSTRUCTIONS = (
    "Generates music with Meta's MusicGen on a self-hosted musicgen-local server. generate_music starts a "
    "prediction and waits up to wait_seconds; if it is not done by then, call wait_for_prediction with its id. "
    "A finished prediction's `output` is a URL of the audio file; `stream` is a Server-Sent Events URL that "
    "carries the audio in segments while it generates."
)
PredictionId = Annotated[
    str,
    pydantic.Field(pattern=r"^[a-z0-9]{26}$", description="The prediction's id: 26 lowercase letters and digits."),
]


def _segment(part: str) -> str:
    return quote(part, safe="")


def _model_path(model: str) -> str:
    """`owner/name` -> its escaped API path, or a ToolError saying what a model name is."""
    owner, slash, name = model.partition("/")
    try:
        if not slash:
            raise UserError(f"`model` must be owner/name (as list_models gives it), got {model!r}.")
        check_name(owner, "owner")
        check_name(name, "name")
    except UserError as exc:
        raise ToolError(str(exc)) from None
    return f"/v1/models/{_segment(owner)}/{_segment(name)}"


class Api:
    """The v1 API, as the tools use it."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(30.0))

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            why = str(exc) or type(exc).__name__
            raise ToolError(
                f"The musicgen-local server at {self.base_url} cannot be reached ({why}). Start it with "
                "`make serve` (or `musicgen-local serve`), or pass --url."
            ) from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail") or resp.text
            except ValueError:
                detail = resp.text
            raise ToolError(f"The server refused it ({resp.status_code}): {detail}")
        return resp.json()


def summary(pred: dict[str, Any]) -> dict[str, Any]:
    """What an agent needs of a prediction: no base64, no full progress logs."""
    logs = (pred.get("logs") or "").splitlines()
    out = {
        "id": pred["id"],
        "status": pred["status"],
        "output": pred.get("output"),
        "stream": (pred.get("urls") or {}).get("stream"),
        "error": pred.get("error"),
        "input": pred.get("input"),
        "created_at": pred.get("created_at"),
        "completed_at": pred.get("completed_at"),
        "last_log_line": logs[-1] if logs else None,
        "finished": pred["status"] in FINISHED,
    }
    if isinstance(out["output"], str) and out["output"].startswith("data:"):
        out["output"] = f"{out['output'][:40]}... (a data: URI; get_prediction's `urls.get` has it whole)"
    return out


def build(
    base_url: str = DEFAULT_URL, token: str | None = None, version: str = PUBLISHED[0], http: bool = False
) -> MCPServer:
    """`http`: the door will be served over HTTP, where a token, when there is one, is required of every client."""
    api = Api(base_url, token)
    auth = mcp_transport.bearer_auth(base_url, token) if http and token else {}
    server = MCPServer("musicgen-local", instructions=INSTRUCTIONS, **auth)

    @server.tool(
        description="Generate music from a text description (and optionally a melody or audio to "
        "continue). Returns the prediction; `output` is the audio file's URL once it "
        "succeeded. Waits up to wait_seconds (at most 120) for it to finish."
    )
    async def generate_music(
        input: PredictionInput,
        wait_seconds: float = 30.0,  # noqa: A002
        model: str | None = None,
    ) -> dict[str, Any]:
        """`model`: "owner/name" of a fine-tune (list_models); default meta/musicgen."""
        sent = input.model_dump(exclude_unset=True)
        if model:
            created = await api.call("POST", f"{_model_path(model)}/predictions", json={"input": sent})
        else:
            created = await api.call("POST", "/v1/predictions", json={"version": version, "input": sent})
        return await _wait(api, created, wait_seconds)

    @server.tool(description="A prediction's current state, by id.")
    async def get_prediction(prediction_id: PredictionId) -> dict[str, Any]:
        return summary(await api.call("GET", _prediction_path(prediction_id)))

    @server.tool(
        description="Wait up to timeout_seconds (at most 120) for a prediction to finish; returns its "
        "state either way (`finished` says whether it did)."
    )
    async def wait_for_prediction(prediction_id: PredictionId, timeout_seconds: float = 60.0) -> dict[str, Any]:
        return await _wait(api, await api.call("GET", _prediction_path(prediction_id)), timeout_seconds)

    @server.tool(description="Cancel a prediction that is queued or generating.")
    async def cancel_prediction(prediction_id: PredictionId) -> dict[str, Any]:
        return summary(await api.call("POST", f"{_prediction_path(prediction_id)}/cancel"))

    @server.tool(
        description="The models this server serves: meta/musicgen and your fine-tunes, with their latest version ids."
    )
    async def list_models() -> list[dict[str, Any]]:
        page = await api.call("GET", "/v1/models")
        return [
            {
                "model": f"{m['owner']}/{m['name']}",
                "description": m.get("description"),
                "latest_version": (m.get("latest_version") or {}).get("id"),
            }
            for m in page.get("results", [])
        ]

    return server


def _prediction_path(prediction_id: str) -> str:
    return f"/v1/predictions/{_segment(prediction_id)}"


async def _wait(api: Api, pred: dict[str, Any], seconds: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + max(0.0, min(seconds, MAX_WAIT_S))
    while pred["status"] not in FINISHED and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.25)
        pred = await api.call("GET", _prediction_path(pred["id"]))
    return summary(pred)


def run(
    base_url: str,
    token: str | None,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    if transport == "stdio":
        anyio.run(mcp_transport.serve_stdio, build(base_url, token))
        return
    mcp_transport.check_binding(host, token)
    server = build(base_url, token, http=True)
    server.run(
        "streamable-http",
        host=host,
        port=port,
        transport_security=mcp_transport.transport_security(host, allowed_hosts),
    )
