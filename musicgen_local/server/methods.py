"""The methods a path is served with, for a 405's `Allow` header: Starlette names only those of the first route
whose path matched, so `OPTIONS /v1/models` answered `Allow: GET` though POST creates a model there."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")  # QUERY /v1/models searches


def allowed(request: Request) -> str:
    served = [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    ]
    return ", ".join(served)
