"""Many writers at once, through the HTTP API of a real server process: creates, uploads and model creates (some of
them duplicates, answered 409) are all stored, and none answers 503 "database is locked" (issue 31, items 0 and 11:
a 409 left its transaction open and every later write failed; the fuzz saw 27 such 503s)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

WRITERS = 12  # of each kind


@pytest.mark.slow
def test_a_refused_duplicate_model_leaves_every_later_write_working(processes):
    server = processes()
    model = {"owner": "me", "name": "tune"}
    assert httpx.post(f"{server.url}/v1/models", json=model, timeout=30).status_code == 201
    assert httpx.post(f"{server.url}/v1/models", json=model, timeout=30).status_code == 409
    after = [  # another model create first would have committed (and so closed) the transaction the 409 left open
        httpx.post(f"{server.url}/v1/files", files={"content": ("a.txt", b"after")}, timeout=30),
        server.create("after the 409", 1),
        httpx.post(f"{server.url}/v1/models", json={"owner": "me", "name": "other"}, timeout=30),
    ]
    assert [r.status_code for r in after] == [201, 201, 201], [r.text for r in after]
    assert server.wait_for(after[1].json()["id"], ("succeeded", "failed"))["status"] == "succeeded"


@pytest.mark.slow
def test_concurrent_creates_uploads_and_model_creates_are_all_stored(processes):
    server = processes()

    def create(i: int) -> httpx.Response:
        return server.create(f"writer {i}", 1)

    def upload(i: int) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/files", files={"content": (f"f{i}.txt", b"x" * 4096)}, timeout=60)

    def model(i: int) -> httpx.Response:  # every name twice: one of each pair is a 409
        return httpx.post(f"{server.url}/v1/models", json={"owner": "me", "name": f"m{i // 2}"}, timeout=60)

    with ThreadPoolExecutor(3 * WRITERS) as pool:
        jobs = {kind: [pool.submit(kind, i) for i in range(WRITERS)] for kind in (create, upload, model)}
        answers = {kind.__name__: [job.result() for job in done] for kind, done in jobs.items()}

    assert [r.status_code for r in answers["create"]] == [201] * WRITERS, [r.text for r in answers["create"]]
    assert [r.status_code for r in answers["upload"]] == [201] * WRITERS, [r.text for r in answers["upload"]]
    assert Counter(r.status_code for r in answers["model"]) == {201: WRITERS // 2, 409: WRITERS // 2}
    for created in answers["create"]:
        assert server.wait_for(created.json()["id"], ("succeeded", "failed"))["status"] == "succeeded"
    for uploaded in answers["upload"]:
        assert httpx.get(uploaded.json()["urls"]["get"], timeout=10).json()["size"] == 4096
    names = {m["name"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["results"]}
    assert {f"m{i}" for i in range(WRITERS // 2)} <= names
    listed = httpx.get(f"{server.url}/v1/predictions", timeout=10).json()["results"]
    assert {p["id"] for p in listed} >= {r.json()["id"] for r in answers["create"]}
