"""What every kind of run's routes share: reading a create's body, its webhook, queueing it with its Cancel-After,
finding, cancelling and listing runs of a kind (`runs.py`), and refusing creates while the server drains.

A kind's own routes (routes.py for predictions, training_routes.py for trainings) parse what is theirs and call
these; errors map to HTTP in app.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import netpolicy
from . import surrogates
from .prediction import Prediction, iso, new_id
from .runs import RunStack

MAX_JSON_DEPTH = 64  # a create body nests 4 levels; walking a deeper one is what hostile bodies are for


class FieldsInvalid(Exception):
    """A 422 naming each bad field (pydantic's error shape, under `prefix`), raised before anything is queued."""

    def __init__(self, errors: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> None:
        super().__init__("validation failed")
        self.errors, self.prefix = errors, prefix


class QueueFull(Exception):
    """MUSICGEN_MAX_QUEUE predictions are unfinished: a 429 with Retry-After."""

    RETRY_AFTER_S = 10

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The queue is full: {limit} predictions are waiting or running (MUSICGEN_MAX_QUEUE). "
            f"Retry after {self.RETRY_AFTER_S} seconds."
        )


def _field_error(loc: tuple[str | int, ...], kind: str, message: str) -> FieldsInvalid:
    return FieldsInvalid([{"loc": loc, "type": kind, "msg": message}])


MAX_INT_DIGITS = 100  # no input needs more; turning digits into an int costs their square (CPython stops at 4300)


class LongNumber(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise LongNumber
    return int(digits)


async def read_json_object(request: Request) -> dict[str, Any]:
    try:
        raw = json.loads(await request.body() or b"{}", parse_int=_bounded_int)
        if surrogates.depth(raw) > MAX_JSON_DEPTH:  # whatever the interpreter's recursion limit is
            raise RecursionError
        where = surrogates.find(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "The request body is not valid JSON.") from None
    except LongNumber:
        raise HTTPException(400, f"The request body holds an integer longer than {MAX_INT_DIGITS} digits.") from None
    except RecursionError:  # [[[[...: deeper than Python's parser (or our walk) can go
        raise HTTPException(400, "The request body is nested too deeply.") from None
    if not isinstance(raw, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    if where is not None:
        raise _field_error(
            where,
            "string_unicode",
            "Input should be valid Unicode text: it holds a lone UTF-16 "
            "surrogate (such as \\ud800), which is not a character",
        )
    return raw


async def checked_webhook(request: Request, body: Any) -> str | None:
    if body.webhook is None:
        return None
    url = str(body.webhook)
    block_private = request.app.state.settings.block_private_urls
    if reason := await run_in_threadpool(netpolicy.refusal, url, block_private):  # resolving the host blocks
        raise _field_error(("webhook",), "url_refused", f"This server does not send webhooks there: {reason}")
    return url


def stack(request: Request, noun: str) -> RunStack:
    return request.app.state.runs[noun]


def refuse_while_draining(request: Request, noun: str) -> None:
    if not request.app.state.runs.accepting:
        raise HTTPException(503, f"The server is shutting down; create the {noun} again in a moment.")


def new_run(http: Request, noun: str, **fields: Any) -> Prediction:
    """A new run of the kind, with its id and its creator's base URL (for its webhooks' URLs)."""
    return stack(http, noun).kind.record(id=new_id(), base_url=str(http.base_url), **fields)


def submit(request: Request, noun: str, run: Prediction, body: Any, cancel_after: float | None) -> None:
    """A created run queued, with its events filter and its Cancel-After deadline (kept with it, so that a restart
    still enforces it)."""
    kind = stack(request, noun)
    if body.webhook_events_filter is not None:
        run.webhook_events_filter = tuple(body.webhook_events_filter)
    if cancel_after is not None:
        run.cancel_at = run.created_at + timedelta(seconds=cancel_after)
    kind.dispatcher.submit(run)
    if cancel_after is not None:
        kind.deadlines.add(run.id, cancel_after)


def found(request: Request, noun: str, run_id: str) -> Prediction:
    run = stack(request, noun).store.get(run_id)
    if run is None:
        raise HTTPException(404, f"No {noun} with id {run_id!r}.")
    return run


def render(request: Request, noun: str, run: Prediction) -> dict[str, Any]:
    return stack(request, noun).render(run, str(request.base_url))


def cancel(request: Request, noun: str, run_id: str) -> dict[str, Any]:
    run = found(request, noun, run_id)
    stack(request, noun).dispatcher.cancel(run)
    return render(request, noun, run)


def listing(
    request: Request,
    noun: str,
    cursor: str | None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> dict[str, Any]:
    """A page of a kind's runs, newest first, with the links to the next and previous pages."""
    kind = stack(request, noun)
    try:
        runs, next_cursor, prev_cursor = kind.store.page(
            request.app.state.page_size, cursor, created_after, created_before
        )
    except ValueError:
        raise HTTPException(400, "Invalid cursor; use the `next` or `previous` URL of a previous page.") from None
    base = str(request.base_url)
    # Every page of a filtered list is filtered the same way: the links carry the bounds (in UTC).
    filters = {
        name: iso(t)
        for name, t in (("created_after", created_after), ("created_before", created_before))
        if t is not None
    }

    def link(c: str | None) -> str | None:
        return f"{base}v1/{kind.kind.plural}?{urlencode({'cursor': c, **filters})}" if c else None

    results = [kind.render(run, base, listing=True) for run in runs]
    return {"next": link(next_cursor), "previous": link(prev_cursor), "results": results}
