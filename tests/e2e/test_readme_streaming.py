"""The README's "Streaming" snippets, run as written against a live server on tiny weights: Python,
Node.js, and the browser one in Debian's chromium on a page from another origin. Only the base URL
and the token change."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import soundfile
from e2e_helpers import E2E, TOKEN

from musicgen_local.registry import LATEST
from tests.docs_helpers import code_blocks, section

SECTION = section("docs/streaming.md", "# Streaming")
V1 = LATEST


def snippet(language: str) -> str:
    return code_blocks(SECTION, language)[0]


def test_readme_python_stream(live_server, capsys):
    code = snippet("python").replace("http://127.0.0.1:5000", live_server.url).replace('"local"', repr(TOKEN))
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(
        re.fullmatch(
            rf"next segment: {live_server.url}/delivery/[a-z0-9]{{26}}/stream/"
            rf"0000{i}\.wav",
            line,
        )
        for i, line in enumerate(lines)
    )


def test_readme_node_stream(live_server, tmp_path):
    if shutil.which("node") is None or not (E2E / "node_modules" / "replicate").exists():
        pytest.skip("npm replicate not installed: run `make install`")
    script = E2E / f"readme-stream-{os.getpid()}.mjs"  # beside node_modules, so `import "replicate"` resolves
    script.write_text(snippet("js").replace("http://127.0.0.1:5000", live_server.url))
    try:
        done = subprocess.run(
            ["node", str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=dict(os.environ, REPLICATE_API_TOKEN=TOKEN),
        )
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr
    for i in range(4):
        info = soundfile.info(str(tmp_path / f"segment-{i}.wav"))
        assert (info.frames, info.samplerate, info.channels) == (32000, 32000, 1)


def browser_snippet() -> str:
    return code_blocks(SECTION, "js")[1]


PAGE = """<!doctype html><link rel="icon" href="data:,"><script>
const streamUrl = %r;
const scheduled = [];  // what the snippet asks the audio graph to play: [when, seconds, frames]
const start = AudioBufferSourceNode.prototype.start;
AudioBufferSourceNode.prototype.start = function (when) {
  scheduled.push([when, this.buffer.duration, this.buffer.length]);
  return start.call(this, when);
};
</script><script>
%s
</script>"""


@contextlib.contextmanager
def page_server(directory: Path):
    """Another origin than the API's: the stream and the segments must allow it (CORS)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.mark.browser
def test_readme_browser_snippet_plays_the_segments_in_order(live_server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed")
    body = {"version": V1, "input": {"prompt": "browser", "duration": 3, "model_version": "stereo-large"}}
    pred = httpx.post(
        f"{live_server.url}/v1/predictions", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    (tmp_path / "play.html").write_text(PAGE % (pred["urls"]["stream"], browser_snippet()))
    options = webdriver.ChromeOptions()
    for flag in ("headless=new", "no-sandbox", "disable-dev-shm-usage", "autoplay-policy=no-user-gesture-required"):
        options.add_argument(f"--{flag}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        with page_server(tmp_path) as origin:
            driver.get(f"{origin}/play.html")
            driver.set_script_timeout(60)
            driver.execute_async_script("""const done = arguments[0];
                const wait = () => source.readyState === EventSource.CLOSED ? inOrder.then(done) : setTimeout(wait, 50);
                wait();""")
            scheduled = driver.execute_script("return scheduled")
            errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert errors == []
    assert [frames for _, _, frames in scheduled] == [32000] * 3  # each segment decoded (float WAV, stereo)
    for (when, seconds, _), (next_when, _, _) in zip(scheduled, scheduled[1:], strict=False):
        assert next_when == pytest.approx(when + seconds)  # back to back: no gap, no overlap
    segment = httpx.get(pred["urls"]["get"].replace("/v1/predictions/", "/delivery/") + "/stream/00000.wav")
    assert soundfile.read(io.BytesIO(segment.content))[0].shape == (32000, 2)
