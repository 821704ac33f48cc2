"""`Prefer: wait=N` takes 1 to 60 seconds, as Replicate publishes; anything else is a 422 naming the header, and
nothing is created (issue 31: `wait=<5000 digits>` answered 500)."""

from __future__ import annotations

import pytest
from server_helpers import V1

BAD_WAITS = ["0", "61", "100", "5" * 5000, "", "abc", "-1", "1.5", "0x10"]


@pytest.mark.parametrize("value", BAD_WAITS, ids=lambda v: v[:8] or "empty")
def test_a_wait_outside_1_to_60_is_a_422_and_creates_nothing(client, value):
    resp = client.post(
        "/v1/predictions", headers={"Prefer": f"wait={value}"}, json={"version": V1, "input": {"prompt": "x"}}
    )
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert [f["field"] for f in body["invalid_fields"]] == ["header.Prefer"]
    assert "1 to 60" in body["detail"] and len(body["detail"]) < 200  # the 5000 digits are not echoed
    assert client.get("/v1/predictions").json()["results"] == []


def test_waits_in_range_and_other_preferences_are_taken(client):
    for prefer in ("wait", "wait=1", "wait=60", "respond-async, wait=2", "wait=2; handling=lenient", "return=minimal"):
        resp = client.post(
            "/v1/predictions", headers={"Prefer": prefer}, json={"version": V1, "input": {"prompt": "x", "duration": 1}}
        )
        assert resp.status_code == 201, (prefer, resp.text)
