"""The rest of Replicate's prediction object and headers: `Prefer: wait=n` held to 1-60 seconds (a 422 naming the
header otherwise), `deadline` with Cancel-After, `metrics.total_time` beside `predict_time`, `Location` on create,
and `urls.web`: the prediction's page, served without a token (what it shows: tests/e2e/test_prediction_page.py)."""

from __future__ import annotations

import re

import pytest
from server_helpers import V1, make_client

BODY = {"version": V1, "input": {"prompt": "x", "duration": 1}}


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "wait=", "wait=1.5", "respond-async, wait=99"])
def test_prefer_wait_outside_1_to_60_is_a_422_naming_the_header(client, prefer):
    response = client.post("/v1/predictions", json=BODY, headers={"Prefer": prefer})
    assert response.status_code == 422
    (field,) = response.json()["invalid_fields"]
    assert field["field"] == "header.Prefer" and "from 1 to 60" in field["description"]
    assert client.get("/v1/predictions").json()["results"] == []  # nothing was created


@pytest.mark.parametrize("prefer", ["wait", "wait=1", "wait=60", "respond-async, wait=5"])
def test_prefer_wait_within_1_to_60_waits(client, prefer):
    response = client.post("/v1/predictions", json=BODY, headers={"Prefer": prefer})
    assert response.status_code == 201 and response.json()["status"] == "succeeded"


def test_an_unrelated_preference_does_not_wait(client, fake_engine):
    fake_engine.step_delay_s = 0.05
    response = client.post("/v1/predictions", json=BODY, headers={"Prefer": "respond-async"})
    assert response.status_code == 201 and response.json()["status"] == "starting"


def test_create_answers_location_deadline_and_both_times(client):
    response = client.post("/v1/predictions", json=BODY, headers={"Prefer": "wait", "Cancel-After": "90s"})
    body = response.json()
    assert response.headers["location"] == body["urls"]["get"]
    assert body["deadline"] > body["created_at"] and "deployment" not in body
    assert set(body["metrics"]) == {"predict_time", "total_time"}
    plain = client.post("/v1/predictions", json=BODY, headers={"Prefer": "wait"}).json()
    assert "deadline" not in plain


def test_urls_web_is_a_page_served_without_the_token(tmp_path):
    with make_client(tmp_path, api_token="secret") as c:
        auth = {"Authorization": "Bearer secret"}
        pred = c.post("/v1/predictions", json=BODY, headers=auth).json()
        assert pred["urls"]["web"] == f"http://testserver/p/{pred['id']}"
        listed = c.get("/v1/predictions", headers=auth).json()["results"][0]
        assert listed["urls"]["web"] == pred["urls"]["web"]
        page = c.get(f"/p/{pred['id']}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        scripts = re.findall(r'src="(/playground/[^"]+)"', page.text)
        assert scripts == ["/playground/prediction.js"] and c.get(scripts[0]).status_code == 200
        ids = set(re.findall(r'\sid="([^"]+)"', page.text))
        texts = [c.get(path).text for path in (scripts[0], "/playground/api.js")]
        wanted = {name for text in texts for name in re.findall(r'(?:\$|getElementById)\("([^"]+)"\)', text)}
        assert wanted and wanted - ids == set()
