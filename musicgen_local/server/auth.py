"""The bearer token (MUSICGEN_API_TOKEN) every /v1 route and /metrics require when it is set."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.exceptions import HTTPException


def require_token(request: Request) -> None:
    """`Authorization: Bearer <token>` (or `Token <token>`, as older clients send it)."""
    token = request.app.state.settings.api_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(value.strip(), token):
        raise HTTPException(401, "You did not pass a valid authentication token")
