"""`musicgen-local mcp` over stdio, driven by the MCP SDK's own client, against the live server on the tiny
weights: list the tools, generate, wait, get, cancel, list models; the schema's refusal and a server that is
down come back as readable tool errors."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx
from e2e_helpers import TOKEN
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from musicgen_local.testing.live import free_port


def _door(url: str, token: str | None = TOKEN) -> StdioServerParameters:
    args = ["-m", "musicgen_local.cli", "mcp", "--url", url] + (["--token", token] if token else [])
    return StdioServerParameters(
        command=sys.executable, args=args, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )


def _result(called) -> dict:
    assert not called.is_error, called.content
    return called.structured_content.get("result", called.structured_content)


def test_an_agent_generates_waits_and_lists_models(live_server):
    async def session() -> dict:
        async with Client(_door(live_server.url)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            made = _result(
                await client.call_tool(
                    "generate_music",
                    {
                        "input": {"prompt": "calm piano", "duration": 1, "model_version": "large", "seed": 7},
                        "wait_seconds": 0,
                    },
                )
            )
            waited = _result(
                await client.call_tool("wait_for_prediction", {"prediction_id": made["id"], "timeout_seconds": 60})
            )
            got = _result(await client.call_tool("get_prediction", {"prediction_id": made["id"]}))
            models = _result(await client.call_tool("list_models", {}))
            refused = await client.call_tool("generate_music", {"input": {"prompt": "x", "model_version": "small"}})
            too_long = _result(await client.call_tool("generate_music", {"input": {"prompt": "x", "duration": 100000}}))
            return {
                "tools": tools,
                "made": made,
                "waited": waited,
                "got": got,
                "models": models,
                "refused": refused,
                "too_long": too_long,
            }

    out = asyncio.run(session())
    assert set(out["tools"]) == {
        "generate_music",
        "get_prediction",
        "wait_for_prediction",
        "cancel_prediction",
        "list_models",
    }
    schema = out["tools"]["generate_music"].input_schema
    assert "prompt" in json.dumps(schema) and "continuation_start" in json.dumps(schema)  # the schema's fields
    assert out["made"]["status"] in ("starting", "processing") and out["made"]["stream"].startswith(live_server.url)
    assert out["waited"]["status"] == "succeeded" and out["waited"]["finished"] is True
    audio = httpx.get(out["waited"]["output"])
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    assert out["got"]["output"] == out["waited"]["output"]
    assert out["models"][0]["model"] == "meta/musicgen" and out["models"][0]["latest_version"]
    assert out["refused"].is_error
    text = out["refused"].content[0].text
    assert "model_version" in text and "'stereo-melody-large'" in text and "Traceback" not in text
    assert out["too_long"]["status"] == "failed" and "300" in out["too_long"]["error"]  # a semantic refusal


def test_a_server_that_is_down_is_a_clear_tool_error():
    async def session():
        async with Client(_door(f"http://127.0.0.1:{free_port()}", token=None)) as client:
            return await client.call_tool("get_prediction", {"prediction_id": "a" * 26})

    called = asyncio.run(session())
    assert called.is_error
    assert "cannot be reached" in called.content[0].text and "make serve" in called.content[0].text
