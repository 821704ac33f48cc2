"""andreasjansson/musicgen-looper in the playground, in a real headless Chromium against a live server on the tiny
weights: picked in the model picker, its own form (built from its version's schema), and its output object shown as
one player per variation. As in test_looper_clients.py, the engine's test seam hands the pipeline a click track in
place of the tiny model's noise."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2e_helpers import TOKEN
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from test_playground import GENERATE_S, browser, enter_token, fill, status, token_dialog_open, wait_for  # noqa: F401

from musicgen_local.looper.stretch import available
from musicgen_local.registry import LOOPER

pytestmark = [pytest.mark.skipif(not available(), reason="rubberband-cli is not installed (make install)")]


@pytest.fixture
def page(browser, looper_server) -> Iterator[WebDriver]:  # noqa: F811
    browser.set_window_size(1280, 900)
    browser.get(looper_server.url + "/")
    wait_for(browser, lambda d: token_dialog_open(d) or d.find_element(By.ID, "submit").is_enabled())
    if token_dialog_open(browser):
        enter_token(browser, TOKEN)
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
    browser.get_log("browser")
    yield browser
    assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def pick(page: WebDriver, label_start: str) -> None:
    picker = Select(page.find_element(By.ID, "model-picker"))
    value = next(o.get_attribute("value") for o in picker.options if o.text.startswith(label_start))
    picker.select_by_value(value)


def field_names(page: WebDriver) -> set[str]:
    return {el.get_attribute("name") for el in page.find_elements(By.CSS_SELECTOR, "#fields [name]")}


@pytest.mark.slow
def test_the_looper_is_picked_gets_its_own_form_and_shows_every_variation(page, looper_server):
    assert {"duration", "input_audio"} <= field_names(page)  # meta/musicgen's form first
    pick(page, LOOPER)
    wait_for(page, lambda d: "bpm" in field_names(d))
    assert "duration" not in field_names(page) and "input_audio" not in field_names(page)
    assert Select(page.find_element(By.NAME, "model_version")).first_selected_option.text == "medium"

    fill(page, prompt="a drum loop", bpm=120, variations=3, max_duration=4, seed=3)
    page.find_element(By.ID, "submit").click()
    wait_for(page, lambda d: status(d)[0] in ("succeeded", "failed"), GENERATE_S * 2)
    assert status(page)[0] == "succeeded", page.find_element(By.ID, "status").text
    pred = httpx.get(
        f"{looper_server.url}/v1/predictions/{status(page)[1]}", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert pred["model"] == LOOPER and pred["input"]["bpm"] == 120
    assert sorted(pred["output"]) == ["variation_01", "variation_02", "variation_03"]

    rows = page.find_elements(By.CSS_SELECTOR, "#variations li")
    assert [r.get_attribute("data-name") for r in rows] == ["variation_01", "variation_02", "variation_03"]
    for row in rows:
        name = row.get_attribute("data-name")
        assert row.find_element(By.TAG_NAME, "audio").get_attribute("src") == pred["output"][name]
        assert row.find_element(By.TAG_NAME, "a").get_attribute("download").endswith(f"-{name}.wav")
    assert page.find_element(By.ID, "player").get_attribute("src") == pred["output"]["variation_01"]
    wait_for(page, lambda d: d.find_element(By.ID, "nyquist").text == "16 kHz", 15)  # the first one was drawn

    pick(page, "meta/musicgen")
    wait_for(page, lambda d: "duration" in field_names(d))
    assert "bpm" not in field_names(page)
