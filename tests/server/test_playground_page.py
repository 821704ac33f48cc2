"""GET /: the browser playground is served, without a token, from local files only.

What the page does in a browser is tested in tests/e2e/test_playground.py (real Chromium)."""

from __future__ import annotations

import re

import pytest
from server_helpers import make_client

TOKEN = "secret-token"


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path, api_token=TOKEN) as c:
        yield c


def assets(client) -> dict[str, str]:
    """The page's scripts and styles, followed through the modules' imports: path -> text."""
    page = client.get("/").text
    todo = re.findall(r'(?:src|href)="(/playground/[^"]+)"', page)
    found: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in found:
            continue
        resp = client.get(path)
        assert resp.status_code == 200, path
        found[path] = resp.text
        todo += [f"/playground/{name}" for name in re.findall(r'from "\./([^"]+)"', resp.text)]
    return found


def test_the_page_is_served_without_a_token_while_v1_still_needs_it(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    assert client.get("/v1/models/meta/musicgen").status_code == 401


def test_scripts_and_styles_are_served_with_their_types(client):
    found = assets(client)
    assert {
        "/playground/app.js",
        "/playground/playground.css",
        "/playground/api.js",
        "/playground/form.js",
        "/playground/history.js",
        "/playground/audio-view.js",
    } <= set(found)
    assert client.get("/playground/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/playground/playground.css").headers["content-type"].startswith("text/css")
    assert client.get("/playground/missing.js").status_code == 404


def test_nothing_is_loaded_from_another_origin(client):
    texts = {"/": client.get("/").text, **assets(client)}
    assert {
        path: re.findall(r"https?://[^\s\"'`)]*", text) for path, text in texts.items() if re.search(r"https?://", text)
    } == {}
    assert not re.search(r'(?:src|href)="//', texts["/"])  # protocol-relative URLs


def test_every_element_the_scripts_look_up_is_on_the_page(client):
    page = client.get("/").text
    ids = set(re.findall(r'\sid="([^"]+)"', page))
    wanted = {
        name for text in assets(client).values() for name in re.findall(r'(?:\$|getElementById)\("([^"]+)"\)', text)
    }
    assert wanted and wanted - ids == set()
