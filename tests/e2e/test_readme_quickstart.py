"""The README's first prediction, run as written: from Node.js, from Python and from the command line. Only the
port, the token, the webhook target (so that every request stays on 127.0.0.1) and the virtualenv's path change."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import pytest
from e2e_helpers import E2E, TOKEN, audio_info

from tests.docs_helpers import code_blocks, section


def readme_snippet(heading: str, language: str) -> str:
    return code_blocks(section("README.md", heading), language)[0]


def readme_node_snippet() -> str:
    return readme_snippet("### From Node.js (the official `replicate` client)", "js")


@pytest.fixture
def webhook_inbox():
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_readme_node_quick_start_works(live_server, webhook_inbox):
    if shutil.which("node") is None or not (E2E / "node_modules" / "replicate").exists():
        pytest.skip("npm replicate not installed: run `make install`")
    hook_url, received = webhook_inbox
    code = readme_node_snippet()
    assert 'baseUrl: "http://127.0.0.1:5000/v1"' in code and "https://example.com/hook" in code
    code = code.replace("http://127.0.0.1:5000", live_server.url).replace("https://example.com/hook", hook_url)
    script = E2E / f"readme-{os.getpid()}.mjs"  # beside node_modules, so `import "replicate"` resolves
    script.write_text(code)
    try:
        done = subprocess.run(
            ["node", str(script)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=dict(os.environ, REPLICATE_API_TOKEN=TOKEN),
        )
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr
    status, output = done.stdout.split()
    assert status == "succeeded"
    assert re.fullmatch(rf"{live_server.url}/delivery/[a-z0-9]{{26}}/out\.wav", output)
    assert audio_info(output) == (2, 32000, 8 * 32000)  # stereo-melody-large, duration 8
    deadline = time.monotonic() + 10  # the webhook may land just after the client saw `succeeded`
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [event["status"] for event in received] == ["succeeded"]  # webhook_events_filter: ["completed"]


def test_readme_python_quick_start_works(live_server):
    code = readme_snippet("### From Python (the official `replicate` client)", "python")
    assert 'base_url="http://127.0.0.1:5000"' in code and 'api_token="local"' in code
    code = code.replace("http://127.0.0.1:5000", live_server.url).replace('api_token="local"', f"api_token={TOKEN!r}")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert re.fullmatch(rf"{live_server.url}/delivery/[a-z0-9]{{26}}/out\.wav", scope["url"])
    assert audio_info(scope["url"]) == (2, 32000, 10 * 32000)  # stereo-large, duration 10


def test_readme_command_line_quick_start_works(settings, melody_wav, tmp_path):
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(melody_wav), str(tmp_path / "melody.mp3")], check=True)
    env = {**os.environ, "MUSICGEN_WEIGHTS": str(settings.weights_dir), "MUSICGEN_DEVICES": "cpu"}
    expected = [(2, 8 * 32000), (1, 8 * 32000)]  # stereo-melody-large by default, then melody-large; 8 s each
    lines = readme_snippet("### From the command line", "bash").strip().splitlines()
    assert len(lines) == len(expected) and all(line.startswith(".venv/bin/musicgen-local predict ") for line in lines)
    for line, (channels, frames) in zip(lines, expected, strict=True):
        command = line.replace(".venv/bin/", f"{Path(sys.executable).parent}/", 1)
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, (line, done.stderr[-3000:])
        assert "out.wav" in done.stdout and "seed=" in done.stdout  # it prints the output path and the seed
        with wave.open(str(tmp_path / "out.wav")) as w:
            assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (channels, 32000, frames)
