"""/openapi.json describes every route's request body and responses, and a bounded schemathesis run
against it (loopback, fixed seed) finds no server error and no response that breaks the document."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from server_helpers import LiveServer, Receiver, fuzz_settings

from musicgen_local.schema import FIELDS
from musicgen_local.server import create_app
from musicgen_local.settings import Settings
from musicgen_local.testing.fake_engine import FakeEngine

CREATE_ROUTES = ("/v1/predictions", "/v1/models/{owner}/{name}/predictions")
EXAMPLES = 300  # per generated operation: about a minute in all on two cores


def test_every_route_declares_its_request_body_and_responses(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path in CREATE_ROUTES:
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/PredictionRequest"}
    request = schemas["PredictionRequest"]["properties"]
    assert set(request) == {"version", "input", "webhook", "webhook_events_filter"}
    assert request["input"]["$ref"] == "#/components/schemas/PredictionInput"
    assert list(schemas["PredictionInput"]["properties"]) == [f.name for f in FIELDS]  # from schema.py
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["content"] and upload["properties"]["content"]["format"] == "binary"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert any(code.startswith("2") for code in codes), (method, path)
            for code in (c for c in codes if not c.startswith("2")):  # errors: the problem shape
                schema = op["responses"][code]["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, code)
    assert "HTTPValidationError" not in schemas


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    allow_header_conformance,
]  # positive_data_acceptance and negative_data_rejection: test_conformance.py, on the operations where they hold


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[schemathesis.BaseSchema, str]]:
    receiver = Receiver()  # every generated webhook is pointed here: nothing leaves this machine
    app = create_app(Settings(data_dir=tmp_path / "data"), FakeEngine(max_duration=2))
    with LiveServer(app) as live:
        yield schemathesis.openapi.from_url(f"{live.url}/openapi.json"), receiver.url
    receiver.close()


def _loopback_only(case: schemathesis.Case, receiver_url: str) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("webhook"), str):
        if urlsplit(case.body["webhook"]).scheme.lower() in ("http", "https"):
            case.body["webhook"] = receiver_url
    if case.headers:
        case.headers.pop("Prefer", None)  # a blocking create would hold each case up to 60 s


@pytest.mark.slow
def test_fuzzed_requests_get_no_5xx_and_match_the_document(api):
    """Valid and invalid requests for every operation, generated from the document (fixed seed, no
    shrinking, so the run is bounded): each answer must be documented, match its schema, and not be 5xx."""
    schema, receiver_url = api
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases)
        @fuzz_settings(EXAMPLES)
        def call(case: schemathesis.Case) -> None:
            _loopback_only(case, receiver_url)
            case.call_and_validate(checks=CHECKS)

        call()
