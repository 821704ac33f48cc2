"""Over HTTP, `input_audio` is an http(s) URL, a data: URI or a file uploaded to this server: a path on
the server or a file:// URL is refused with a 422 before anything runs, and no message shows a path."""

from __future__ import annotations

from pathlib import Path

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


def _stored_record_bytes(client, table: str, run_id: str) -> int:
    import sqlite3

    db = sqlite3.connect(client.app.state.settings.data_dir / "musicgen.sqlite3")
    try:
        return len(db.execute(f"SELECT record FROM {table} WHERE id = ?", (run_id,)).fetchone()[0])
    finally:
        db.close()


def test_a_data_uri_input_is_kept_once_as_a_file_and_runs_carry_its_url(client, fake_engine):
    """30 creates with a 45 MiB data: URI made a 2.9 GB database before: the bytes were in every record and list."""
    import base64

    audio = bytes(range(256)) * 4096  # 1 MiB
    uri = "data:audio/wav;base64," + base64.b64encode(audio).decode()
    body = {"version": V1, "input": {"prompt": "x", "model_version": "melody-large", "input_audio": uri}}
    created = client.post("/v1/predictions", json=body)
    assert created.status_code == 201, created.text
    shown = created.json()["input"]["input_audio"]
    assert shown.startswith("http://testserver/v1/files/")
    assert client.get(shown + "/download").content == audio  # the file the prediction was made with
    assert Path(fake_engine.requests[-1].input_audio).read_bytes() == audio  # the engine reads that file
    assert _stored_record_bytes(client, "predictions", created.json()["id"]) < 10_000
    listed = client.get("/v1/predictions")
    assert len(listed.content) < 20_000 and listed.json()["results"][0]["input"]["input_audio"] == shown


def test_a_data_uri_dataset_is_kept_once_as_a_file(client, fake_engine):
    import base64

    archive = b"PK" + bytes(2**20)
    client.post("/v1/models", json={"owner": "alice", "name": "sound"})
    uri = "data:application/zip;base64," + base64.b64encode(archive).decode()
    created = client.post(
        f"/v1/models/meta/musicgen/versions/{V1}/trainings",
        json={"destination": "alice/sound", "input": {"dataset_path": uri}},
    )
    assert created.status_code == 201, created.text
    shown = created.json()["input"]["dataset_path"]
    assert shown.startswith("http://testserver/v1/files/")
    assert client.get(shown + "/download").content == archive
    assert _stored_record_bytes(client, "trainings", created.json()["id"]) < 10_000


def test_a_malformed_or_oversized_data_uri_is_a_422(tmp_path):
    from server_helpers import make_client

    with make_client(tmp_path, settings={"max_input_bytes": 1000}) as c:
        for uri, message in (("data:audio/wav;base64", "malformed data URI"), ("data:;base64," + "A" * 4000, "larger")):
            body = {"version": V1, "input": {"prompt": "x", "model_version": "melody-large", "input_audio": uri}}
            resp = c.post("/v1/predictions", json=body)
            assert resp.status_code == 422 and message in resp.text, resp.text
