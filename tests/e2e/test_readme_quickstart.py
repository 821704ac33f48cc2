"""The README's Node.js quick start, run as written: only the port and the webhook target change,
so that every request stays on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest
from e2e_helpers import E2E, TOKEN, audio_info

from tests.docs_helpers import code_blocks, section


def readme_node_snippet() -> str:
    return code_blocks(section("README.md", "### From Node.js (the official `replicate` client)"), "js")[0]


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
