"""Amplification and leftovers: unknown input keys are dropped, upload names are made safe, the queue is
bounded (MUSICGEN_MAX_QUEUE: 429 + Retry-After), and MUSICGEN_RETENTION removes what it outlived."""

from __future__ import annotations

import sqlite3
import time

import pytest
from server_helpers import V1, make_client, wait_done

from musicgen_local.testing.fake_engine import FakeEngine


def test_unknown_input_keys_are_neither_stored_nor_echoed(client, tmp_path):
    sent = {"prompt": "x", "duration": 1, "junk": "y" * 10_000, "nested": {"deep": [1, 2, 3]}}
    created = client.post("/v1/predictions", json={"version": V1, "input": sent}).json()
    assert created["input"] == {"prompt": "x", "duration": 1}
    assert wait_done(client, created["id"])["input"] == {"prompt": "x", "duration": 1}
    assert client.get("/v1/predictions").json()["results"][0]["input"] == {"prompt": "x", "duration": 1}
    rows = sqlite3.connect(tmp_path / "data" / "musicgen.sqlite3").execute("SELECT record FROM predictions")
    assert all("junk" not in record and "nested" not in record for (record,) in rows)


def _upload(client, filename: bytes, content: bytes = b"RIFF....WAVE"):
    """A multipart body written by hand, so the name reaches the server byte for byte (NUL included)."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="content"; filename="' + filename + b'"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + content + b"\r\n--B--\r\n"
    )
    return client.post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=B"})


@pytest.mark.parametrize(
    "filename, stored",
    [
        (b"..", "file"),
        (b".", "file"),
        (b"../../etc/passwd", "passwd"),
        (b"a/..", "file"),
        (b"x\x00y.wav", "xy.wav"),
        (b"a" * 300, "a" * 255),
        (b"a" * 300 + b".wav", "a" * 251 + ".wav"),
        ("é".encode() * 200 + b".wav", "é" * 125 + ".wav"),
        (b"C:\\music\\take 1.wav", "take 1.wav"),
    ],
)
def test_any_upload_name_is_stored_under_a_safe_one(client, filename, stored):
    resp = _upload(client, filename)
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == stored and len(stored.encode()) <= 255
    assert client.get(f"/v1/files/{resp.json()['id']}/download").content == b"RIFF....WAVE"


def test_the_queue_is_bounded_with_429_and_retry_after(tmp_path):
    with make_client(tmp_path, FakeEngine(step_delay_s=0.05), settings={"max_queue": 2}) as c:
        first, second = (
            c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x", "duration": 60}}) for _ in range(2)
        )
        assert (first.status_code, second.status_code) == (201, 201)
        refused = c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x"}})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
        assert refused.json()["detail"].startswith("The queue is full: 2 predictions are waiting or running")
        c.post(f"/v1/predictions/{second.json()['id']}/cancel")
        assert c.post("/v1/predictions", json={"version": V1, "input": {"prompt": "x"}}).status_code == 201
        for pred in c.get("/v1/predictions").json()["results"]:
            c.post(f"/v1/predictions/{pred['id']}/cancel")


def test_retention_removes_outputs_and_uploads_on_read(tmp_path):
    with make_client(tmp_path, settings={"retention_s": 1.0}) as c:
        pred = c.post(
            "/v1/predictions", headers={"Prefer": "wait"}, json={"version": V1, "input": {"prompt": "x", "duration": 1}}
        ).json()
        upload = _upload(c, b"a.wav").json()
        assert pred["data_removed"] is False and c.get(pred["output"]).status_code == 200
        assert upload["expires_at"] is not None
        time.sleep(1.2)
        gone = c.get(f"/v1/predictions/{pred['id']}").json()
        assert (gone["status"], gone["data_removed"], gone["output"], gone["input"]) == ("succeeded", True, None, {})
        assert c.get(pred["output"]).status_code == 404
        assert not (tmp_path / "data" / "predictions" / pred["id"]).exists()
        assert c.get(f"/v1/files/{upload['id']}").status_code == 404
        assert c.get("/v1/predictions").json()["results"][0]["data_removed"] is True


def test_retention_sweep_removes_files_nobody_reads(tmp_path):
    with make_client(tmp_path, settings={"retention_s": 0.5}, retention_sweep_s=0.2) as c:
        pred = c.post(
            "/v1/predictions", headers={"Prefer": "wait"}, json={"version": V1, "input": {"prompt": "x", "duration": 1}}
        ).json()
        upload = _upload(c, b"a.wav").json()
        paths = [tmp_path / "data" / "predictions" / pred["id"], tmp_path / "data" / "files" / upload["id"]]
        assert all(p.exists() for p in paths)
        deadline = time.monotonic() + 5
        while any(p.exists() for p in paths) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(p.exists() for p in paths)
