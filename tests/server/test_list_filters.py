"""GET /v1/predictions?created_after=&created_before=: predictions created in [after, before), in UTC, newest
first, on cursor pages whose links keep the filters."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from server_helpers import V1

DATETIME_ERROR = "Input should be an ISO 8601 date-time such as 2025-01-01T00:00:00Z, or a date such as 2025-01-01"


def _create(client, n: int) -> list[dict]:
    """n finished predictions, oldest first (the client fixture lists 2 per page)."""
    return [
        client.post(
            "/v1/predictions",
            headers={"Prefer": "wait"},
            json={"version": V1, "input": {"prompt": str(i), "duration": 1}},
        ).json()
        for i in range(n)
    ]


def _listed(client, **params) -> list[str]:
    """Ids on every page, following the `next` links from the first page."""
    page = client.get("/v1/predictions", params=params).json()
    ids = [p["id"] for p in page["results"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        ids += [p["id"] for p in page["results"]]
    return ids


def test_bounds_are_after_inclusive_before_exclusive_and_pages_keep_them(client):
    p = _create(client, 5)
    bounds = {"created_after": p[1]["created_at"], "created_before": p[4]["created_at"]}
    first = client.get("/v1/predictions", params=bounds).json()
    assert [r["id"] for r in first["results"]] == [p[3]["id"], p[2]["id"]] and first["previous"] is None
    query = parse_qs(urlsplit(first["next"]).query)
    assert {k: v for k, v in query.items() if k != "cursor"} == {k: [v] for k, v in bounds.items()}

    second = client.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == [p[1]["id"]] and second["next"] is None
    back = client.get(second["previous"]).json()
    assert [r["id"] for r in back["results"]] == [p[3]["id"], p[2]["id"]]
    assert parse_qs(urlsplit(second["previous"]).query).keys() == {"cursor", "created_after", "created_before"}

    assert _listed(client, created_after=p[3]["created_at"]) == [p[4]["id"], p[3]["id"]]
    assert _listed(client, created_before=p[1]["created_at"]) == [p[0]["id"]]
    assert _listed(client) == [x["id"] for x in reversed(p)]


@pytest.fixture
def local_zone_not_utc(monkeypatch):
    monkeypatch.setenv("TZ", "IST-5:30")  # POSIX form: needs no tz database
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_offsets_naive_times_and_dates_are_read_as_utc(client, local_zone_not_utc):
    p = _create(client, 4)
    instant = datetime.fromisoformat(p[1]["created_at"])  # ...Z: UTC
    expected = [p[3]["id"], p[2]["id"], p[1]["id"]]  # two pages: the `next` link must carry the same instant
    plus_two = instant.astimezone(timezone(timedelta(hours=2))).isoformat()  # the '+' is sent as %2B
    assert _listed(client, created_after=plus_two) == expected
    assert _listed(client, created_after=instant.replace(tzinfo=None).isoformat()) == expected
    day = p[0]["created_at"][:10]  # midnight UTC of the day the first one was created
    assert _listed(client, created_after=day) == [x["id"] for x in reversed(p)]
    assert _listed(client, created_before=day) == []


@pytest.mark.parametrize("name", ["created_after", "created_before"])
@pytest.mark.parametrize("value", ["yesterday", "2025-13-01", "2025-01-01T00:00:00 01:00", "", "1735689600"])
def test_unparsable_time_is_422_naming_the_query_parameter(client, name, value):
    resp = client.get("/v1/predictions", params={name: value})
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json() == {
        "title": "Input validation failed",
        "status": 422,
        "detail": f"- query.{name}: {DATETIME_ERROR}",
        "invalid_fields": [{"field": f"query.{name}", "type": "datetime_parsing", "description": DATETIME_ERROR}],
    }
