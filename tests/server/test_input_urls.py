"""Over HTTP, `input_audio` is an http(s) URL, a data: URI or a file uploaded to this server: a path on
the server or a file:// URL is refused with a 422 before anything runs, and no message shows a path."""

from __future__ import annotations

import pytest
from server_helpers import V1


@pytest.mark.parametrize(
    "ref", ["/etc/passwd", "file:///etc/passwd", "weights/hub", "ftp://example.com/a.wav", "~/song.wav"]
)
def test_server_paths_and_other_schemes_are_refused(client, fake_engine, ref):
    resp = client.post(
        "/v1/predictions",
        json={"version": V1, "input": {"prompt": "x", "input_audio": ref, "model_version": "melody-large"}},
    )
    assert resp.status_code == 422
    field = resp.json()["invalid_fields"][0]
    assert field["field"] == "input.input_audio"
    assert "http(s) URL, a data: URI, or a file uploaded with POST /v1/files" in field["description"]
    assert fake_engine.requests == []


def test_an_upload_of_this_server_is_used_and_an_unknown_one_refused(client, fake_engine):
    up = client.post("/v1/files", files={"content": ("m.wav", b"RIFF....", "audio/wav")}).json()
    body = {"version": V1, "input": {"prompt": "x", "input_audio": up["urls"]["get"]}}
    ok = client.post("/v1/predictions", json=body)
    assert ok.status_code == 201
    missing = up["urls"]["get"].replace(up["id"], "nosuchfile")
    resp = client.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", "input_audio": missing}})
    assert resp.status_code == 422 and "no file 'nosuchfile' was uploaded" in resp.json()["detail"]
    assert str(client.app.state.settings.data_dir) not in resp.text
