"""What schemathesis found over the published OpenAPI (issue 31, item 11), each now held: requests the document
says are valid are taken, the stream's events are what the document says, a 405 names every method its path is
served with, a model missing from a create's path is a 404, and every create documents its 503 and 507. The
judgements left (an opaque cursor, Cancel-After's 5 s minimum) are in docs/limits.md."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
)
from server_helpers import V1, LiveServer, fuzz_settings, make_client

from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine

EXAMPLES = 25  # per operation and mode: a few seconds each


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[schemathesis.BaseSchema, str]]:
    app = create_app(Settings(data_dir=tmp_path / "data"), FakeEngine(max_duration=2))
    with LiveServer(app) as live:
        yield schemathesis.openapi.from_url(f"{live.url}/openapi.json"), live.url


def _judged(case: schemathesis.Case) -> None:
    """Leave out what docs/limits.md judges right (and a wait that would hold each case 60 s)."""
    for name in ("Prefer", "Cancel-After"):
        (case.headers or {}).pop(name, None)
    (case.query or {}).pop("cursor", None)


def _fuzz(operation, mode: GenerationMode, checks: list) -> None:
    @given(case=operation.as_strategy(mode))
    @fuzz_settings(EXAMPLES)
    def call(case: schemathesis.Case) -> None:
        _judged(case)
        case.call_and_validate(checks=checks)

    call()


@pytest.mark.parametrize(
    "path, method",
    [("/v1/predictions", "GET"), ("/v1/trainings", "GET"), ("/v1/models", "POST"), ("/v1/files", "POST")],
)
def test_requests_the_document_says_are_valid_are_taken_and_others_refused(api, path, method):
    """Were refused: `created_before=` (any string was documented), owner "" (no pattern documented), an upload
    with parts the document allowed (any property) or a `metadata` it called a string."""
    schema, _ = api
    operation = schema[path][method]
    _fuzz(operation, GenerationMode.POSITIVE, [positive_data_acceptance, not_a_server_error])
    if path != "/v1/files":  # in a multipart body a value made an empty array is no part at all, as if left out
        _fuzz(operation, GenerationMode.NEGATIVE, [negative_data_rejection, not_a_server_error])


def test_the_stream_sends_the_events_the_document_describes(api):
    schema, url = api
    created = httpx.post(f"{url}/v1/predictions", json={"version": V1, "input": {"duration": 1}}, timeout=30).json()
    # It fails (no prompt), maybe before the create answers: its stream carries an `error`, then `done`.
    assert created["status"] in ("starting", "failed")
    operation = schema["/v1/files/streams/{pred_id}"]["GET"]
    case = operation.Case(path_parameters={"pred_id": created["id"]}, headers={"Accept": "text/event-stream"})
    response = case.call_and_validate(checks=[response_schema_conformance])
    assert "event: error" in response.text and "event: done" in response.text


def test_a_405_names_every_method_its_path_is_served_with(client):
    for method, path, allowed in (
        ("OPTIONS", "/v1/models", {"GET", "POST", "QUERY"}),  # QUERY searches (deployments.md)
        ("DELETE", "/v1/predictions", {"GET", "POST"}),
        ("PUT", "/v1/files/abc", {"GET"}),
    ):
        resp = client.request(method, path)
        assert resp.status_code == 405 and set(resp.headers["allow"].split(", ")) == allowed, (method, path)


def test_a_create_on_a_model_that_is_not_there_is_a_404(client):
    resp = client.post("/v1/models/nobody/nothing/predictions", json={"input": {"prompt": "x"}})
    assert resp.status_code == 404 and "nobody/'nothing'" in resp.json()["detail"]


def test_every_create_documents_the_503_and_507_it_may_answer(client):
    doc = client.get("/openapi.json").json()
    creates = [
        (p, op)
        for p, item in doc["paths"].items()
        for m, op in item.items()
        if m == "post" and "201" in op["responses"]
    ]
    assert len(creates) == 6  # a deployment's predictions' too
    for path, op in creates:
        assert {"503", "507"} <= set(op["responses"]), path


def test_an_upload_takes_replicates_filename_and_type_parts(tmp_path):
    with make_client(tmp_path) as c:
        made = c.post(
            "/v1/files",
            files={"content": ("blob", b"RIFF....", "application/octet-stream")},
            data={"filename": "take.wav", "type": "audio/wav", "metadata": json.dumps({"k": 1})},
        )
        assert made.status_code == 201, made.text
        assert (made.json()["name"], made.json()["content_type"], made.json()["metadata"]) == (
            "take.wav",
            "audio/wav",
            {"k": 1},
        )
        other = c.post("/v1/files", files={"content": ("a.txt", b"x")}, data={"colour": "blue"})
        assert other.status_code == 400 and "'colour'" in other.json()["detail"]
