"""How `musicgen-local mcp` is reached: stdio, where every line that is not a JSON-RPC message gets a JSON-RPC error,
and streamable HTTP, guarded as a server on a user's machine must be.

Over HTTP the door is a proxy to the v1 API with its token, so:
- it binds to loopback unless told otherwise, and another address needs a token (`--token` or MUSICGEN_API_TOKEN),
  or anyone who can reach the port would use the API as the door's owner;
- with a token, every request must carry it (`Authorization: Bearer <token>`, the SDK's bearer check);
- the SDK's DNS-rebinding guard checks `Host` (loopback names, the bound address, and the names given with
  `--allowed-host`; else 421) and `Origin` (the same names, any port; else 403), so that a web page the user
  visits cannot drive the door through a name that resolves to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError

from .errors import UserError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class SameToken:
    """The SDK's TokenVerifier for one static token: the API's own, compared in constant time."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self.token):
            return AccessToken(token=token, client_id="musicgen-local", scopes=[])
        return None


def bearer_auth(api_url: str, token: str) -> dict:
    """MCPServer's keyword arguments that make its HTTP transport require `token` (issuer: the API that gave it)."""
    return {
        "auth": AuthSettings(issuer_url=api_url, resource_server_url=None),
        "token_verifier": SameToken(token),
    }


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str | None:
    """The bound address as a Host header names it (None for a wildcard: clients reach it by other names)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if address.is_unspecified:
        return None
    return f"[{address}]" if address.version == 6 else str(address)


def transport_security(host: str, allowed_hosts: tuple[str, ...] = ()) -> TransportSecuritySettings:
    names = dict.fromkeys([*LOOPBACK_NAMES, _host_name(host), *allowed_hosts])
    names.pop(None, None)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[form for name in names for form in (name, f"{name}:*")],
        allowed_origins=[f"{scheme}://{name}:*" for name in names for scheme in ("http", "https")]
        + [f"{scheme}://{name}" for name in names for scheme in ("http", "https")],
    )


def check_binding(host: str, token: str | None) -> None:
    if not token and not is_loopback(host):
        raise UserError(
            f"`mcp --host {host}` would let anyone who reaches that address use the API: give a token "
            "(--token or MUSICGEN_API_TOKEN), which every MCP client must then send as `Authorization: Bearer`, "
            "or keep the default loopback address."
        )


def rpc_error(exc: Exception) -> JSONRPCError:
    """What a line that is not a JSON-RPC message gets: a parse error (not JSON) or an invalid request."""
    errors = getattr(exc, "errors", None)
    kinds = {e.get("type") for e in errors()} if callable(errors) else set()
    if "json_invalid" in kinds or isinstance(exc, json.JSONDecodeError):
        return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error"))
    message = "Invalid Request: not a JSON-RPC 2.0 request, notification or response"
    return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message))


async def serve_stdio(server: MCPServer) -> None:
    """The SDK's stdio transport, with a JSON-RPC error for each malformed line (the SDK only logs them)."""
    lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async runs; there is no public seam for this
    async with stdio_server() as (read_stream, write_stream):
        forward, received = create_context_streams[SessionMessage | Exception](0)

        async def answer_malformed() -> None:
            async with forward:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        await write_stream.send(SessionMessage(rpc_error(item)))
                    else:
                        await forward.send(item)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(answer_malformed)
            await lowlevel.run(received, write_stream, lowlevel.create_initialization_options())
            tasks.cancel_scope.cancel()
