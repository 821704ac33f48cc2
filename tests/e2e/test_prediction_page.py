"""A prediction's page (its `urls.web`, /p/<id>) and deployments in the playground, in a real headless Chromium
against the live server on tiny weights: the page shows the input, the status as it changes, the audio while it
generates (its stream), the logs, then the file with its waveform, or the error; "Run again" makes a new prediction
(through the same deployment) and opens its page; the playground's picker offers deployments and predicts through
them. Screenshots go to the `playground-shots` temporary directory (see test_playground.py)."""

# ruff: noqa: F811 - the browser fixtures (browser, page, shots) are test_playground's, imported by name
from __future__ import annotations

import httpx
import pytest
from e2e_helpers import TOKEN
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from test_playground import (  # noqa: F401 - fixtures
    GENERATE_S,
    WAVE,
    browser,
    lit_fraction,
    page,
    shot,
    shots,
    status,
    wait_for,
)

from musicgen_local.registry import LATEST

HEADERS = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.browser


def post(live_server, path: str, wait: bool = False, **body) -> dict:
    headers = {**HEADERS, "Prefer": "wait"} if wait else HEADERS
    response = httpx.post(f"{live_server.url}{path}", json=body, headers=headers, timeout=GENERATE_S)
    assert response.status_code in (200, 201), response.text
    return response.json()


def page_status(driver) -> str | None:
    return driver.find_element(By.ID, "status").get_attribute("data-status")


def shown_input(driver) -> dict[str, str]:
    terms = driver.find_elements(By.CSS_SELECTOR, "#input dt")
    values = driver.find_elements(By.CSS_SELECTOR, "#input dd")
    return {t.text: v.text for t, v in zip(terms, values, strict=True)}


def fact(driver, name: str) -> str | None:
    pairs = zip(
        driver.find_elements(By.CSS_SELECTOR, "#facts dt"),
        driver.find_elements(By.CSS_SELECTOR, "#facts dd"),
        strict=True,
    )
    return next((v.text for t, v in pairs if t.text == name), None)


def test_the_page_follows_a_prediction_from_its_stream_to_its_waveform(page, live_server, shots):
    pred = post(
        live_server,
        "/v1/predictions",
        version=LATEST,
        input={"prompt": "slow ambient pads", "model_version": "large", "duration": 8, "seed": 21},
    )
    page.get(pred["urls"]["web"])
    statuses = set()
    segments = wait_for(  # heard while it generates: its stream plays before the file exists
        page,
        lambda d: (
            statuses.add(page_status(d))
            or d.execute_script(
                "const live = document.getElementById('live');"
                "return !live.hidden && document.getElementById('result').hidden ? Number(live.dataset.segments) : 0"
            )
        ),
        GENERATE_S,
    )
    assert segments >= 1 and page_status(page) in ("starting", "processing")
    assert shown_input(page) == {"prompt": "slow ambient pads", "model_version": "large", "duration": "8", "seed": "21"}
    assert fact(page, "version") == f"meta/musicgen:{LATEST}"
    shot(page, shots, "20-prediction-page-streaming")
    wait_for(page, lambda d: statuses.add(page_status(d)) or page_status(d) == "succeeded", GENERATE_S)
    assert {"processing", "succeeded"} <= statuses  # the status as it changed
    duration = wait_for(
        page,
        lambda d: d.execute_script(
            "const a = document.getElementById('player');return a.readyState >= 1 ? a.duration : null"
        ),
    )
    assert duration == pytest.approx(8.0, abs=0.01)
    wait_for(page, lambda d: lit_fraction(d, "waveform", 1, WAVE)[0] > 0.05)
    assert "Using seed 21" in page.find_element(By.ID, "logs").text and page.find_element(By.ID, "seed").text == "21"
    assert not page.find_element(By.ID, "live").is_displayed() and not page.find_element(By.ID, "cancel").is_displayed()
    done = httpx.get(f"{live_server.url}/v1/predictions/{pred['id']}", headers=HEADERS).json()
    assert page.find_element(By.ID, "download").get_attribute("href") == done["output"]
    shot(page, shots, "21-prediction-page")


def test_a_failed_prediction_shows_its_error(page, live_server):
    pred = post(live_server, "/v1/predictions", wait=True, version=LATEST, input={"duration": 1})
    page.get(pred["urls"]["web"])
    wait_for(page, lambda d: page_status(d) == "failed", GENERATE_S)
    assert "Must provide either prompt or input_audio" in page.find_element(By.ID, "error").text
    assert not page.find_element(By.ID, "result").is_displayed()


def test_run_again_goes_through_the_deployment_and_opens_the_new_page(page, live_server, shots):
    post(
        live_server,
        "/v1/deployments",
        name="page-prod",
        model="meta/musicgen",
        version=LATEST,
        hardware="cpu",
        min_instances=0,
        max_instances=1,
    )
    try:
        first = post(
            live_server,
            "/v1/deployments/local/page-prod/predictions",
            wait=True,
            input={"prompt": "again", "model_version": "large", "duration": 1, "seed": 4},
        )
        page.get(first["urls"]["web"])
        wait_for(page, lambda d: page_status(d) == "succeeded", GENERATE_S)
        assert fact(page, "deployment") == "local/page-prod"
        page.find_element(By.ID, "run-again").click()
        wait_for(page, lambda d: d.current_url.rsplit("/", 1)[-1] not in (first["id"], ""))
        again_id = page.current_url.rsplit("/", 1)[-1]
        wait_for(page, lambda d: page_status(d) == "succeeded", GENERATE_S)
        again = httpx.get(f"{live_server.url}/v1/predictions/{again_id}", headers=HEADERS).json()
        assert (again["deployment"], again["input"]) == ("local/page-prod", first["input"])
        assert httpx.get(again["output"]).content == httpx.get(first["output"]).content  # same input and seed
        shot(page, shots, "22-run-again")
    finally:
        httpx.delete(f"{live_server.url}/v1/deployments/local/page-prod", headers=HEADERS)


def test_the_playground_picker_offers_deployments_and_predicts_through_them(page, live_server):
    post(
        live_server,
        "/v1/deployments",
        name="picker-prod",
        model="meta/musicgen",
        version=LATEST,
        hardware="cpu",
        min_instances=0,
        max_instances=1,
    )
    try:
        page.get(live_server.url + "/")
        wait_for(page, lambda d: d.find_element(By.ID, "submit").is_enabled())
        picker = Select(page.find_element(By.ID, "model-picker"))
        labels = [o.text for o in picker.options]
        assert f"local/picker-prod · deployment of meta/musicgen:{LATEST[:8]}" in labels
        picker.select_by_value("deployment:local/picker-prod")
        assert page.find_element(By.ID, "model-label").text == "local/picker-prod (meta/musicgen)"
        page.find_element(By.NAME, "prompt").send_keys("through the deployment")
        Select(page.find_element(By.NAME, "model_version")).select_by_value("large")
        duration = page.find_element(By.NAME, "duration")
        duration.clear()
        duration.send_keys("1")
        page.find_element(By.ID, "submit").click()
        wait_for(page, lambda d: status(d)[0] == "succeeded", GENERATE_S)
        pred = httpx.get(f"{live_server.url}/v1/predictions/{status(page)[1]}", headers=HEADERS).json()
        assert pred["deployment"] == "local/picker-prod" and pred["version"] == LATEST
    finally:
        httpx.delete(f"{live_server.url}/v1/deployments/local/picker-prod", headers=HEADERS)
