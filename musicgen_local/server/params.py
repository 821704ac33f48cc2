"""Request parameters outside the JSON body: the `Cancel-After` header, the list's `created_after`
/ `created_before` filters and its `cursor`.

Each is an Annotated type that FastAPI validates before the handler runs, so a bad value becomes a
422 naming `header.Cancel-After` or `query.created_after` through app.py's RequestValidationError
handler, shaped like every other field error.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Header, Query
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

MIN_CANCEL_AFTER_S = 5  # Replicate's minimum
MAX_CANCEL_AFTER_S = 365 * 24 * 3600  # past it the deadline is no deadline, and 10**400 s is no date at all
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"(?:{_NUMBER}[hms])+")
_PART = re.compile(rf"({_NUMBER})([hms])")
_UNIT_S = {"h": 3600, "m": 60, "s": 1}


def cancel_after_seconds(text: str) -> float:
    """`30s`, `5m`, `1h30m` (units may combine, as in Go durations); a bare number is seconds."""
    if re.fullmatch(_NUMBER, text):
        seconds = float(text)
    elif _DURATION.fullmatch(text):
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))
    else:
        raise PydanticCustomError(
            "duration_parsing", "Input should be a duration such as 30s, 5m, 1h30m or 90 (seconds)"
        )
    if seconds > MAX_CANCEL_AFTER_S:
        raise PydanticCustomError(
            "less_than_equal", f"Input should be less than or equal to {MAX_CANCEL_AFTER_S} seconds (a year)"
        )
    if seconds < MIN_CANCEL_AFTER_S:
        raise PydanticCustomError(
            "greater_than_equal", f"Input should be greater than or equal to {MIN_CANCEL_AFTER_S} seconds"
        )
    return seconds


def utc_time(text: str) -> datetime:
    """ISO 8601 as Replicate takes it (`2025-01-01T00:00:00Z`), or a date (its midnight). Without an
    offset the time is UTC, the zone every `created_at` is written in."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise PydanticCustomError(
            "datetime_parsing",
            "Input should be an ISO 8601 date-time such as 2025-01-01T00:00:00Z, or a date such as 2025-01-01",
        ) from None
    try:
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in the year 10000 in UTC
        raise PydanticCustomError(
            "datetime_parsing", "Input should be a date-time between the years 1 and 9999 in UTC"
        ) from None


# What the document says of the values (the validators above judge them): a duration's syntax (its 5 s minimum is
# in the description: a pattern cannot say it), and an ISO 8601 date-time or date.
DURATION_TEXT = Annotated[str, Field(pattern=rf"^(?:{_NUMBER}|(?:{_NUMBER}[hms])+)$")]
TIME_TEXT = datetime | date

CancelAfter = Annotated[
    float | None,
    BeforeValidator(cancel_after_seconds, json_schema_input_type=DURATION_TEXT),
    Header(
        alias="Cancel-After",
        description="Cancel the prediction if it has not finished after this long "
        "(e.g. 30s, 5m, 1h30m; a bare number is seconds; at least 5 s).",
    ),
]
CreatedAfter = Annotated[
    datetime | None,
    BeforeValidator(utc_time, json_schema_input_type=TIME_TEXT),
    Query(description="Only predictions created at or after this time (ISO 8601; no offset means UTC)."),
]
CreatedBefore = Annotated[
    datetime | None,
    BeforeValidator(utc_time, json_schema_input_type=TIME_TEXT),
    Query(description="Only predictions created before this time (ISO 8601; no offset means UTC)."),
]
Cursor = Annotated[
    str | None,
    Query(
        description="Which page: an opaque token that a page's `next` and `previous` links carry; any other value "
        "is a 400 (the document cannot describe tokens only this server makes)."
    ),
]
