"""Every bad request is a 4xx with a readable body, before anything is queued; the server keeps serving."""

from __future__ import annotations

import pytest
from server_helpers import V1, V2, make_client


@pytest.mark.parametrize(
    "body, field, kind",
    [
        ({"prompt": "x", "duration": "8"}, "input.duration", "int_type"),
        ({"prompt": "x", "model_version": "small"}, "input.model_version", "literal_error"),
        ({"prompt": "x", "continuation_start": -1}, "input.continuation_start", "greater_than_equal"),
        ({"prompt": 3}, "input.prompt", "string_type"),
    ],
)
def test_schema_violation_is_422_with_field_detail(client, fake_engine, body, field, kind):
    resp = client.post("/v1/predictions", json={"version": V1, "input": body})
    assert resp.status_code == 422
    assert resp.json()["invalid_fields"][0]["field"] == field and resp.json()["invalid_fields"][0]["type"] == kind
    assert field in resp.json()["detail"]
    assert client.get("/v1/predictions").json()["results"] == [] and fake_engine.requests == []


@pytest.mark.parametrize(
    "kwargs, status, detail",
    [
        ({"content": b"{not json"}, 400, "The request body is not valid JSON."),
        ({"json": [1, 2]}, 400, "The request body must be a JSON object."),
        ({"content": b"[" * 100_000}, 400, "The request body is nested too deeply."),
        (
            {"content": b'{"input": {"prompt": ' + b"[" * 990 + b"]" * 990 + b"}}"},
            400,
            "The request body is nested too deeply.",
        ),
        (
            {"json": {"version": "meta/musicgen:abc", "input": {"prompt": "x"}}},
            422,
            "Invalid version or not permitted: 'meta/musicgen:abc'.",
        ),
        (
            {"json": {"version": V2, "input": {"input_audio": "a.wav", "model_version": "encode-decode"}}},
            422,
            "- input.model_version: 'encode-decode' is not available in version",
        ),
        ({"json": {"version": V1, "input": {"prompt": "x"}, "webhook": "ftp://x"}}, 422, "- webhook: URL scheme"),
        (
            {"json": {"version": V1, "input": {"prompt": "x"}, "webhook_events_filter": ["done"]}},
            422,
            "- webhook_events_filter.0: Input should be",
        ),
        (
            {"content": b'{"input": {"prompt": "x", "duration": ' + b"9" * 5000 + b"}}"},
            400,
            "The request body holds an integer longer than 100 digits.",
        ),
        (
            {"json": {"version": V1, "input": {"prompt": "x"}}, "headers": {"Cancel-After": "9" * 400}},
            422,
            "- header.Cancel-After: Input should be less than or equal to 31536000 seconds (a year)",
        ),
    ],
)
def test_malformed_requests_are_4xx(client, kwargs, status, detail):
    resp = client.post("/v1/predictions", **kwargs)
    assert resp.status_code == status
    assert resp.json()["detail"].startswith(detail)
    assert resp.headers["content-type"] == "application/problem+json"


def test_unknown_ids_are_404(client):
    for method, path in [
        ("GET", "/v1/predictions/nope"),
        ("POST", "/v1/predictions/nope/cancel"),
        ("GET", "/v1/files/nope"),
        ("GET", "/delivery/nope/out.wav"),
    ]:
        resp = client.request(method, path)
        assert resp.status_code == 404 and "nope" in resp.json()["detail"]
    assert client.get("/v1/predictions?cursor=%%%").status_code == 400


def test_oversized_body_is_413(tmp_path):
    with make_client(tmp_path, settings={"max_body_bytes": 1000}) as client:
        resp = client.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x" * 2000}})
    assert resp.status_code == 413
    assert resp.json()["detail"] == "Request bodies are limited to 1000 bytes (MUSICGEN_MAX_BODY_BYTES)."


def test_token_required_on_every_v1_route_when_set(tmp_path):
    with make_client(tmp_path, api_token="s3cret") as c:
        for path in ("/v1/predictions", "/v1/models/meta/musicgen", "/v1/webhooks/default/secret"):
            resp = c.get(path)
            assert resp.status_code == 401
            assert resp.json() == {
                "title": "Unauthenticated",
                "status": 401,
                "detail": "You did not pass a valid authentication token",
            }
        assert c.get("/v1/predictions", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/predictions", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health-check").status_code == 200


def test_bad_uploads_are_4xx(client):
    assert client.post("/v1/files", json={"a": 1}).status_code == 422
    broken = client.post("/v1/files", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert broken.status_code == 400
    resp = client.post("/v1/files", files={"other": ("a.wav", b"x")})
    assert (resp.status_code, resp.json()["detail"]) == (422, "- content: a file part named `content` is required.")
    resp = client.post("/v1/files", files={"content": ("a.wav", b"x")}, data={"metadata": "[1]"})
    assert (resp.status_code, resp.json()["detail"]) == (400, "`metadata` must be a JSON object.")
    deep = '{"a": ' + "[" * 900 + "]" * 900 + "}"
    resp = client.post("/v1/files", files={"content": ("a.wav", b"x")}, data={"metadata": deep})
    assert (resp.status_code, resp.json()["detail"]) == (400, "`metadata` may nest at most 32 levels deep.")


@pytest.mark.parametrize(
    "query, detail",
    [
        ("created_after=9999-12-31T23:59:59-01:00", "Input should be a date-time between the years 1 and 9999 in UTC"),
        (
            "created_before=0001-01-01T00:00:00%2B01:00",
            "Input should be a date-time between the years 1 and 9999 in UTC",
        ),
    ],
)
def test_times_outside_the_calendar_are_422(client, query, detail):
    resp = client.get(f"/v1/predictions?{query}")
    assert resp.status_code == 422 and detail in resp.json()["detail"]


def test_a_method_a_route_does_not_take_is_405_with_allow(client):
    resp = client.get("/v1/predictions/abc/cancel")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"


@pytest.mark.parametrize("last_event_id", [b"\xb2", b"9" * 5000, b"-1", b"x"])  # b"\xb2" is a superscript two
def test_a_last_event_id_that_is_no_number_replays_from_the_start(client, last_event_id):
    created = client.post(
        "/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": 1}}, headers={"Prefer": "wait"}
    ).json()
    with client.stream("GET", created["urls"]["stream"], headers={"Last-Event-ID": last_event_id}) as events:
        assert events.status_code == 200
        body = "".join(events.iter_text())
    assert "event: done" in body
