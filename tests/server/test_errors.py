"""Every bad request is a 4xx with a readable body, before anything is queued; the server keeps serving."""

from __future__ import annotations

import pytest
from server_helpers import V1, V2, make_client


@pytest.mark.parametrize("body, field, kind", [
    ({"prompt": "x", "duration": "8"}, "input.duration", "int_type"),
    ({"prompt": "x", "model_version": "small"}, "input.model_version", "literal_error"),
    ({"prompt": "x", "continuation_start": -1}, "input.continuation_start", "greater_than_equal"),
    ({"prompt": 3}, "input.prompt", "string_type"),
])
def test_schema_violation_is_422_with_field_detail(client, fake_engine, body, field, kind):
    resp = client.post("/v1/predictions", json={"version": V1, "input": body})
    assert resp.status_code == 422
    assert resp.json()["invalid_fields"][0]["field"] == field and resp.json()["invalid_fields"][0]["type"] == kind
    assert field in resp.json()["detail"]
    assert client.get("/v1/predictions").json()["results"] == [] and fake_engine.requests == []


@pytest.mark.parametrize("kwargs, status, detail", [
    ({"content": b"{not json"}, 400, "The request body is not valid JSON."),
    ({"json": [1, 2]}, 400, "The request body must be a JSON object."),
    ({"content": b"[" * 100_000}, 400, "The request body is nested too deeply."),
    ({"content": b'{"input": {"prompt": ' + b"[" * 990 + b"]" * 990 + b"}}"}, 400,
     "The request body is nested too deeply."),
    ({"json": {"version": "meta/musicgen:abc", "input": {"prompt": "x"}}}, 422,
     "Invalid version or not permitted: 'meta/musicgen:abc'."),
    ({"json": {"version": V2, "input": {"input_audio": "a.wav", "model_version": "encode-decode"}}}, 422,
     "- input.model_version: 'encode-decode' is not available in version"),
    ({"json": {"version": V1, "input": {"prompt": "x"}, "webhook": "ftp://x"}}, 422, "- webhook: URL scheme"),
    ({"json": {"version": V1, "input": {"prompt": "x"}, "webhook_events_filter": ["done"]}}, 422,
     "- webhook_events_filter.0: Input should be"),
])
def test_malformed_requests_are_4xx(client, kwargs, status, detail):
    resp = client.post("/v1/predictions", **kwargs)
    assert resp.status_code == status
    assert resp.json()["detail"].startswith(detail)
    assert resp.headers["content-type"] == "application/problem+json"


def test_unknown_ids_are_404(client):
    for method, path in [("GET", "/v1/predictions/nope"), ("POST", "/v1/predictions/nope/cancel"),
                         ("GET", "/v1/files/nope"), ("GET", "/delivery/nope/out.wav")]:
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
            assert resp.json() == {"title": "Unauthenticated", "status": 401,
                                   "detail": "You did not pass a valid authentication token"}
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
