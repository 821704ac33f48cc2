"""The playground at GET /, in a real headless Chromium against the live server on tiny weights.

The live server requires TOKEN, so the page first asks for it. Each stage leaves a full-page
screenshot in the `playground-shots` temporary directory (its path is printed with `-s`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_helpers import TOKEN, LiveServer, add_lora_version
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="chromium and chromedriver not found: `make install` (as root) installs the Debian packages "
        "chromium and chromium-driver",
    ),
]
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
DESKTOP, PHONE = (1280, 900), (360, 780)
WAVE = "#38bdf8"  # the waveform's colour (audio-view.js)
GENERATE_S = 60  # longest wait for a tiny-model prediction on a busy 2-core machine


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("playground-shots")
    print(f"\nplayground screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="playground-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, live_server) -> Iterator[WebDriver]:
    """The page, loaded and past the token form, at desktop size; fails on any script error."""
    browser.set_window_size(*DESKTOP)
    browser.get(live_server.url + "/")
    browser.get_log("browser")  # start from an empty log
    wait_for(browser, lambda d: token_dialog_open(d) or d.find_element(By.ID, "submit").is_enabled())
    if token_dialog_open(browser):
        enter_token(browser, TOKEN)
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
    yield browser
    errors = [
        e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE" and " 401 " not in e["message"]
    ]
    assert errors == []


def wait_for(driver: WebDriver, condition, timeout: float = 15):
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(condition)


def token_dialog_open(driver: WebDriver) -> bool:
    return driver.execute_script("return document.getElementById('token-dialog').open")


def enter_token(driver: WebDriver, token: str) -> None:
    field = driver.find_element(By.ID, "token-input")
    field.send_keys(token, Keys.ENTER)


def shot(driver: WebDriver, shots: Path, name: str) -> None:
    """A full-page screenshot: the window grows to the page's height for the picture."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(height, full + 100))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(shots / f"{name}.png"))
    driver.set_window_size(width, height)


def fill(driver: WebDriver, **values) -> None:
    for name, value in values.items():
        el = driver.find_element(By.NAME, name)
        if el.tag_name == "select":
            Select(el).select_by_value(str(value))
        elif el.get_attribute("type") == "checkbox":
            if el.is_selected() != bool(value):
                el.click()
        else:
            el.clear()
            el.send_keys(str(value))


def status(driver: WebDriver) -> tuple[str | None, str | None]:
    el = driver.find_element(By.ID, "status")
    return el.get_attribute("data-status"), el.get_attribute("data-prediction-id")


def api(live_server, path: str) -> dict:
    resp = httpx.get(live_server.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp.raise_for_status()
    return resp.json()


def create_via_api(live_server, **input) -> dict:
    resp = httpx.post(
        f"{live_server.url}/v1/predictions",
        json={"input": input},
        timeout=GENERATE_S,
        headers={"Authorization": f"Bearer {TOKEN}", "Prefer": "wait"},
    )
    pred = resp.json()
    assert pred["status"] == "succeeded", pred
    return pred


def played_duration(driver: WebDriver, pred_id: str) -> float:
    """The duration of the prediction's audio element, once the browser has read it."""
    return wait_for(
        driver,
        lambda d: d.execute_script(
            "const a = document.querySelector(`audio[data-prediction-id='${arguments[0]}']`);"
            "return a && a.readyState >= 1 ? a.duration : null",
            pred_id,
        ),
    )


def open_in_history(driver: WebDriver, pred_id: str):
    driver.find_element(By.ID, "history-refresh").click()
    return wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"li[data-prediction-id='{pred_id}']"))


def history_text(driver: WebDriver, pred_id: str) -> str:
    """The text of a prediction's history entry, read in the same step that finds it: the list may be
    replaced meanwhile (the page reloads it when a prediction ends), leaving a found entry stale."""
    driver.find_element(By.ID, "history-refresh").click()
    return wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"li[data-prediction-id='{pred_id}']").text)


def lit_fraction(driver: WebDriver, canvas_id: str, lanes: int = 1, colour: str = "") -> list[float]:
    """Per lane (stereo: 2), the fraction of the canvas's pixels that differ from its background (or,
    given `colour` as "#rrggbb", that have that colour); the left tenth, where the lanes are
    labelled, is left out."""
    return driver.execute_script(
        """
        const [id, lanes, colour] = arguments;
        const want = colour ? [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16)) : null;
        const canvas = document.getElementById(id);
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        const rowsPerLane = Math.floor(canvas.height / lanes), out = [];
        for (let lane = 0; lane < lanes; lane++) {
          let lit = 0, total = 0;
          for (let y = lane * rowsPerLane; y < (lane + 1) * rowsPerLane; y++)
            for (let x = Math.ceil(canvas.width / 10); x < canvas.width; x++, total++) {
              const p = (y * canvas.width + x) * 4;
              const ref = want || [data[0], data[1], data[2]];
              const far = [0, 1, 2].reduce((sum, i) => sum + Math.abs(data[p + i] - ref[i]), 0) > 30;
              if (want ? !far : far) lit++;
            }
          out.push(lit / total);
        }
        return out;""",
        canvas_id,
        lanes,
        colour,
    )


def test_asks_for_the_token_once_and_builds_the_form_from_the_schema(browser, live_server, shots):
    browser.set_window_size(*DESKTOP)
    browser.get(live_server.url + "/playground/playground.css")  # same origin, to forget a token kept earlier
    browser.execute_script("sessionStorage.clear()")
    browser.get(live_server.url + "/")
    wait_for(browser, token_dialog_open)
    shot(browser, shots, "01-token")
    enter_token(browser, "wrong-token")
    wait_for(browser, lambda d: d.find_element(By.ID, "token-error").is_displayed())  # refused: asked again
    enter_token(browser, TOKEN)
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
    schema = api(live_server, "/v1/models/meta/musicgen")["latest_version"]["openapi_schema"]["components"]["schemas"]
    for name, prop in schema["Input"]["properties"].items():
        el = browser.find_element(By.NAME, name)
        label = browser.execute_script("return arguments[0].labels[0].textContent", el)
        assert label == prop["title"]
        if "allOf" in prop:
            choices = schema[prop["allOf"][0]["$ref"].split("/")[-1]]["enum"]
            assert [o.get_attribute("value") for o in Select(el).options] == choices
        if "default" in prop:
            shown = el.is_selected() if el.get_attribute("type") == "checkbox" else el.get_attribute("value")
            if prop.get("type") in ("integer", "number"):
                shown = float(shown)
            assert shown == prop["default"]
        if "minimum" in prop:
            assert el.get_attribute("min") == str(prop["minimum"])
    assert browser.find_element(By.ID, "field-duration-desc").text.startswith(
        schema["Input"]["properties"]["duration"]["description"]
    )
    shot(browser, shots, "02-form")
    browser.refresh()  # the token is kept for the tab: not asked again
    wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
    assert not token_dialog_open(browser)


def test_generate_plays_the_requested_duration_and_draws_it(page, live_server, shots):
    fill(page, prompt="warm lofi piano with soft drums", model_version="large", duration=2)
    page.find_element(By.NAME, "seed").click()
    page.switch_to.active_element.send_keys(Keys.TAB)  # the last field leads to the submit button
    assert page.switch_to.active_element.get_attribute("id") == "submit"
    page.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(page, lambda d: status(d)[0] in ("starting", "processing"))
    shot(page, shots, "03-running")
    wait_for(page, lambda d: status(d)[0] == "succeeded", GENERATE_S)
    pred_id = status(page)[1]
    duration = played_duration(page, pred_id)
    assert duration == pytest.approx(2.0, abs=0.01)
    wait_for(page, lambda d: lit_fraction(d, "waveform", 1, WAVE)[0] > 0.05)  # drawn once the audio is decoded
    shot(page, shots, "04-result")
    assert lit_fraction(page, "spectrogram")[0] > 0.2
    pred = api(live_server, f"/v1/predictions/{pred_id}")
    assert page.find_element(By.ID, "download").get_attribute("href") == pred["output"]
    assert f"Using seed {page.find_element(By.ID, 'seed').text}" in pred["logs"]
    page.find_element(By.ID, "use-as-input").click()
    assert page.find_element(By.NAME, "input_audio").get_attribute("value") == pred["output"]


def test_the_audio_plays_while_it_generates(page, live_server, shots):
    """The page follows the prediction's stream and schedules each segment as it arrives, before
    the finished file replaces it."""
    fill(page, prompt="slow ambient pads", model_version="large", duration=8)
    page.find_element(By.ID, "submit").click()
    segments = wait_for(
        page,
        lambda d: d.execute_script(
            "const live = document.getElementById('live');"
            "return !live.hidden && document.getElementById('result').hidden ? Number(live.dataset.segments) : 0"
        ),
        GENERATE_S,
    )
    assert segments >= 1 and status(page)[0] in ("starting", "processing")  # heard before the file exists
    shot(page, shots, "03b-streaming")
    wait_for(page, lambda d: status(d)[0] == "succeeded", GENERATE_S)
    final = int(page.find_element(By.ID, "live").get_attribute("data-segments"))
    assert 1 <= final <= 8  # one per second of audio (MUSICGEN_STREAM_SECONDS)
    assert not page.find_element(By.ID, "live").is_displayed()  # no "Playing as it generates" once it is done


def test_cancel_ends_a_long_prediction_canceled(page, live_server, shots):
    fill(page, prompt="a very long one", model_version="large", duration=60)
    page.find_element(By.ID, "submit").click()
    wait_for(page, lambda d: d.find_element(By.ID, "progress").get_attribute("value") not in ("0", None), 30)
    pred_id = status(page)[1]
    page.find_element(By.ID, "cancel").click()
    wait_for(page, lambda d: status(d)[0] == "canceled", 15)
    shot(page, shots, "05-canceled")
    assert api(live_server, f"/v1/predictions/{pred_id}")["status"] == "canceled"
    assert not page.find_element(By.ID, "cancel").is_displayed()


def test_a_file_upload_round_trips_through_v1_files_and_stereo_draws_both_channels(
    page, live_server, melody_wav, shots
):
    page.find_element(By.CSS_SELECTOR, "[data-upload-for=input_audio]").send_keys(str(melody_wav))
    wait_for(page, lambda d: "/v1/files/" in d.find_element(By.NAME, "input_audio").get_attribute("value"))
    fill(page, prompt="hum along", model_version="stereo-melody-large", duration=1)
    shot(page, shots, "06-uploaded")
    page.find_element(By.ID, "submit").click()
    wait_for(page, lambda d: status(d)[0] in ("succeeded", "failed"), GENERATE_S)
    pred = api(live_server, f"/v1/predictions/{status(page)[1]}")
    assert pred["status"] == "succeeded", pred["error"]
    assert pred["input"]["input_audio"].startswith(f"{live_server.url}/v1/files/")
    # The tiny stereo models write nearly constant audio: a thin trace per lane, but one in each.
    wait_for(page, lambda d: min(lit_fraction(d, "waveform", 2, WAVE)) > 0.005)
    shot(page, shots, "07-stereo-result")


def test_history_lists_predictions_and_loads_one_back_into_the_form(page, live_server, shots):
    pred = create_via_api(
        live_server, prompt="from history", model_version="large", duration=1, seed=77, temperature=0.5
    )
    item = open_in_history(page, pred["id"])
    assert "from history" in item.text and "temperature 0.5" in item.text
    assert item.find_element(By.TAG_NAME, "audio").get_attribute("src") == pred["output"]
    fill(page, prompt="something else", duration=5)
    item.find_element(By.CSS_SELECTOR, "[data-action=load]").click()
    form = {
        name: page.find_element(By.NAME, name).get_attribute("value")
        for name in ("prompt", "model_version", "duration", "seed", "temperature", "top_k")
    }
    assert form == {
        "prompt": "from history",
        "model_version": "large",
        "duration": "1",
        "seed": "77",
        "temperature": "0.5",
        "top_k": "250",
    }  # top_k: not in its input, back to the default
    shot(page, shots, "08-history-loaded")
    item.find_element(By.CSS_SELECTOR, "[data-action=open]").click()
    wait_for(page, lambda d: d.find_element(By.ID, "player").get_attribute("data-prediction-id") == pred["id"])
    assert page.find_element(By.ID, "seed").text == "77"


def test_phone_width_fits_and_brings_the_result_into_view(page, shots):
    page.set_window_size(*PHONE)
    fill(page, prompt="on a phone", model_version="large", duration=1)
    submit = page.find_element(By.ID, "submit")
    page.execute_script("arguments[0].scrollIntoView({block: 'end'}); arguments[0].click()", submit)  # output below
    wait_for(page, lambda d: status(d)[0] == "succeeded", GENERATE_S)
    wait_for(page, lambda d: lit_fraction(d, "waveform", 1, WAVE)[0] > 0.02)
    top = page.execute_script("return document.getElementById('output-title').getBoundingClientRect().top")
    assert 0 <= top < PHONE[1] / 2  # the page scrolled down to the output
    assert page.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    shot(page, shots, "09-phone")


def test_a_failed_prediction_shows_its_error(page):
    fill(page, prompt="", model_version="large", duration=1)
    page.find_element(By.ID, "submit").click()
    wait_for(page, lambda d: status(d)[0] == "failed", GENERATE_S)
    assert "Must provide either prompt or input_audio" in page.find_element(By.ID, "status").text
    assert not page.find_element(By.ID, "result").is_displayed()


def test_data_uri_outputs_play_and_draw_on_a_server_without_token(browser, settings, engine, tmp_path, shots):
    """MUSICGEN_OUTPUT=data-uri: the output is inlined; no token is set, so none is asked for."""
    with LiveServer(settings.with_(data_dir=tmp_path / "data", output="data-uri", api_token=""), engine) as server:
        browser.set_window_size(*DESKTOP)
        browser.get(server.url + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "submit").is_enabled())
        assert not token_dialog_open(browser)
        fill(browser, prompt="inline", model_version="large", duration=1)
        browser.find_element(By.ID, "submit").click()
        wait_for(browser, lambda d: status(d)[0] == "succeeded", GENERATE_S)
        assert browser.find_element(By.ID, "player").get_attribute("src").startswith("data:audio/wav;base64,")
        wait_for(browser, lambda d: lit_fraction(d, "waveform", 1, WAVE)[0] > 0.05)
        assert browser.execute_script("return document.getElementById('player').duration") == pytest.approx(1, abs=0.01)
        shot(browser, shots, "10-data-uri")


def test_stereo_lanes_show_the_left_channel_above_the_right(page):
    """A known stereo buffer, 440 Hz on the left and silence on the right, through the page's drawing."""
    page.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import("/playground/audio-view.js").then(({ drawWaveform }) => {
          const buffer = new OfflineAudioContext(2, 32000, 32000).createBuffer(2, 32000, 32000);
          const left = buffer.getChannelData(0);
          for (let i = 0; i < left.length; i++) left[i] = 0.8 * Math.sin(2 * Math.PI * 440 * i / 32000);
          const canvas = Object.assign(document.createElement("canvas"), { id: "lanes-probe" });
          canvas.style.cssText = "width: 400px; height: 120px; display: block";
          document.body.append(canvas);
          drawWaveform(canvas, buffer);
          done();
        });""")
    left, right = lit_fraction(page, "lanes-probe", 2, WAVE)
    assert left > 0.5 and right < 0.1  # the silent right channel is a flat line


def test_pick_a_fine_tuned_version_generate_and_hear_it(page, live_server, shots):
    """A training through the API, then the picker: the new version locks model_version to its base, and what
    it generates is the fine-tune's audio, not the base model's."""
    import base64

    from musicgen_local.registry import LATEST
    from tests.training_helpers import QUICK_TRAINING as TRAINING
    from tests.training_helpers import songs_zip as _dataset

    headers = {"Authorization": f"Bearer {TOKEN}"}
    httpx.post(f"{live_server.url}/v1/models", headers=headers, json={"owner": "alice", "name": "picker-sound"})
    dataset = _dataset(Path(tempfile.mkdtemp()) / "songs.zip").read_bytes()
    training = httpx.post(
        f"{live_server.url}/v1/models/meta/musicgen/versions/{LATEST}/trainings",
        headers=headers,
        json={
            "destination": "alice/picker-sound",
            "input": {**TRAINING, "dataset_path": "data:application/zip;base64," + base64.b64encode(dataset).decode()},
        },
    ).json()
    training = wait_for(
        page,
        lambda d: (t := api(live_server, f"/v1/trainings/{training['id']}"))["status"] in ("succeeded", "failed") and t,
        120,
    )
    assert training["status"] == "succeeded", training
    version = training["output"]["version"].partition(":")[2]

    page.find_element(By.ID, "model-picker").click()  # opening it reads the versions again: no reload needed
    label = wait_for(
        page,
        lambda d: d.execute_script(  # read at once: each opening replaces the options
            "const o = [...document.getElementById('model-picker').options].find((o) => o.value === arguments[0]);"
            "return o ? o.textContent : null",
            version,
        ),
    )
    assert label == f"alice/picker-sound:{version[:8]} · LoRA of large"
    wait_for(page, lambda d: Select(d.find_element(By.ID, "model-picker")).select_by_value(version) or True)
    model_version = page.find_element(By.NAME, "model_version")
    assert not model_version.is_enabled() and model_version.get_attribute("value") == "large"
    assert page.find_element(By.ID, "model-label").text == "alice/picker-sound"
    fill(page, prompt="my sound", duration=1, seed=5)
    page.find_element(By.ID, "submit").click()
    wait_for(page, lambda d: status(d)[0] == "succeeded", GENERATE_S)
    pred_id = status(page)[1]
    duration = played_duration(page, pred_id)
    assert duration == pytest.approx(1.0, abs=0.01)
    shot(page, shots, "10-fine-tuned")
    pred = api(live_server, f"/v1/predictions/{pred_id}")
    assert (pred["model"], pred["version"], pred["input"]["model_version"]) == ("alice/picker-sound", version, "large")
    assert f"alice/picker-sound:{version[:8]}" in history_text(page, pred_id)
    base = create_via_api(live_server, prompt="my sound", duration=1, seed=5, model_version="large")
    assert httpx.get(pred["output"]).content != httpx.get(base["output"]).content  # the fine-tune is heard


def test_a_version_added_to_the_registry_is_picked_after_a_reload_and_user_text_stays_text(
    page, live_server, live_settings, shots
):
    """A model whose description is markup, and a LoRA version of it put straight into the registry: after a
    reload the picker offers it, the description and a markup prompt show as the characters typed (nothing
    of them runs or renders), model_version is locked to the base, and the audio is the fine-tune's."""
    bait = '<img src=x onerror="window.pwned = 1"><b>bold</b>'
    headers = {"Authorization": f"Bearer {TOKEN}"}
    created = httpx.post(
        f"{live_server.url}/v1/models",
        headers=headers,
        json={"owner": "mallory", "name": "markup", "description": bait},
    )
    assert created.status_code == 201, created.text
    version = add_lora_version(live_settings, "mallory/markup", seed=3)

    page.refresh()  # the token stays in the tab's sessionStorage
    wait_for(page, lambda d: d.find_element(By.ID, "submit").is_enabled())
    Select(page.find_element(By.ID, "model-picker")).select_by_value(version)
    picker = Select(page.find_element(By.ID, "model-picker"))
    assert picker.first_selected_option.text == f"mallory/markup:{version[:8]} · LoRA of large"
    assert picker.options[0].text == "meta/musicgen (published)"  # the published model comes first
    assert page.find_element(By.ID, "model-description").text == bait
    model_version = page.find_element(By.NAME, "model_version")
    assert not model_version.is_enabled() and model_version.get_attribute("value") == "large"

    fill(page, prompt=bait, duration=1, seed=5)
    page.find_element(By.ID, "submit").click()
    wait_for(page, lambda d: status(d)[0] == "succeeded", GENERATE_S)
    pred_id = status(page)[1]
    duration = wait_for(
        page,
        lambda d: d.execute_script(
            "const a = document.getElementById('player');"
            "return a.dataset.predictionId === arguments[0] && a.src && a.readyState >= 1 ? a.duration : null",
            pred_id,
        ),
    )
    assert duration == pytest.approx(1.0, abs=0.01)
    item = history_text(page, pred_id)
    assert bait in item and f"mallory/markup:{version[:8]}" in item
    shot(page, shots, "11-markup-stays-text")
    assert page.execute_script("return window.pwned === undefined && document.querySelectorAll('img, b').length === 0")

    pred = api(live_server, f"/v1/predictions/{pred_id}")
    assert (pred["model"], pred["version"], pred["input"]["model_version"]) == ("mallory/markup", version, "large")
    base = create_via_api(live_server, prompt=bait, duration=1, seed=5, model_version="large")
    assert httpx.get(pred["output"]).content != httpx.get(base["output"]).content  # the LoRA is heard
