"""Lone UTF-16 surrogates (`"\\ud800"` in JSON) are refused at create with a 422 naming the field, and
no stored row, whatever it holds, can make GET or the list fail."""

from __future__ import annotations

import json
import sqlite3

import pytest
from server_helpers import V1, make_client

CASES = [
    ({"input": {"prompt": "\ud800"}}, "input.prompt"),
    ({"input": {"prompt": "x", "\ud800": 1}}, "input.\\ud800"),
    ({"input": {"prompt": "x", "model_version": "large\udfff"}}, "input.model_version"),
    ({"input": {"prompt": "x"}, "webhook": "http://127.0.0.1:9/\ud800"}, "webhook"),
    ({"input": {"prompt": "x"}, "webhook_events_filter": ["completed", "\ud800"]}, "webhook_events_filter.1"),
]


def _post(client, body: dict):
    # json.dumps escapes the surrogate as \ud800, which is what a client's JSON encoder sends
    return client.post(
        "/v1/predictions", content=json.dumps({"version": V1, **body}), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("body, field", CASES)
def test_lone_surrogate_is_422_naming_the_field_and_nothing_is_queued(client, fake_engine, body, field):
    resp = _post(client, body)
    assert resp.status_code == 422
    assert resp.json()["invalid_fields"][0]["field"] == field
    assert "lone UTF-16 surrogate" in resp.json()["detail"]
    assert client.get("/v1/predictions").json()["results"] == [] and fake_engine.requests == []


def test_lone_surrogate_in_upload_metadata_is_400(client):
    resp = client.post("/v1/files", files={"content": ("a.wav", b"x")}, data={"metadata": '{"a": "\\ud800"}'})
    assert resp.status_code == 400 and "surrogate" in resp.json()["detail"]


RAW_SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded as if it were a character: not valid UTF-8


def _rows() -> dict[str, bytes | str]:
    """Rows as other versions (or hand edits) left them, keyed by prediction id."""
    base = {
        "version": V1,
        "created_at": "2025-01-01T00:00:00+00:00",
        "status": "succeeded",
        "logs": "",
        "output_file": None,
        "error": None,
        "started_at": None,
        "completed_at": "2025-01-01T00:00:01+00:00",
        "webhook": None,
        "webhook_events_filter": ["completed"],
        "base_url": "http://x/",
        "seed": 1,
    }
    return {
        "a" * 26: json.dumps({**base, "id": "a" * 26, "input": {"prompt": "\ud800", "\udfff": "\ud801x"}}),
        "b" * 26: json.dumps(
            {
                "id": "b" * 26,
                "version": V1,
                "input": {"prompt": "old"},
                "status": "succeeded",
                "created_at": "2024-06-01T00:00:00",
                "a_field_from_the_future": [1],
            }
        ),
        "c" * 26: "this is not JSON",
        # a surrogate as raw (invalid) UTF-8 bytes, as another program could write it
        "d" * 26: json.dumps({**base, "id": "d" * 26, "input": {"prompt": "@"}}).encode().replace(b"@", RAW_SURROGATE),
        "e" * 26: json.dumps({"id": "e" * 26}),
    }


def test_any_stored_row_renders_in_get_and_list(tmp_path):
    with make_client(tmp_path):
        pass  # creates the database
    db = sqlite3.connect(tmp_path / "data" / "musicgen.sqlite3")
    for pred_id, record in _rows().items():
        db.execute(
            "INSERT INTO predictions VALUES (?, ?, CAST(? AS TEXT))", (pred_id, "2025-01-01T00:00:00+00:00", record)
        )
    db.commit()
    db.close()
    with make_client(tmp_path, page_size=3) as c:
        for pred_id in _rows():
            resp = c.get(f"/v1/predictions/{pred_id}")
            assert resp.status_code == 200, resp.text
            assert resp.json()["id"] == pred_id
        assert c.get(f"/v1/predictions/{'a' * 26}").json()["input"] == {"prompt": "\ufffd", "\ufffd": "\ufffdx"}
        assert c.get(f"/v1/predictions/{'b' * 26}").json()["input"] == {"prompt": "old"}
        assert c.get(f"/v1/predictions/{'c' * 26}").json()["status"] == "failed"
        seen, url = [], "/v1/predictions"
        while url:
            page = c.get(url)
            assert page.status_code == 200, page.text
            seen += [p["id"] for p in page.json()["results"]]
            url = page.json()["next"]
        assert sorted(seen) == sorted(_rows())
