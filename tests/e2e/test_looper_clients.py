"""andreasjansson/musicgen-looper through both official clients, unchanged but for the base URL, on the tiny weights:
4 variations, each a valid audio file of exactly the same length (whole bars at the tempo asked for). The model
really generates every variation (`medium`, as one batch); the engine's test seam then gives the pipeline a click
track at the requested tempo in place of the tiny model's noise (see tests/looper/test_engine_loops.py)."""

from __future__ import annotations

import pytest
import replicate
from e2e_helpers import TOKEN, audio_info, node_client

from musicgen_local.looper.plan import plan_loop
from musicgen_local.looper.stretch import available
from musicgen_local.registry import LOOPER, LOOPER_PUBLISHED

pytestmark = [pytest.mark.skipif(not available(), reason="rubberband-cli is not installed (make install)")]
VERSION = LOOPER_PUBLISHED[0]
INPUT = {"prompt": "a drum loop", "bpm": 120, "variations": 4, "max_duration": 8, "seed": 3}
FRAMES = plan_loop(120, 8, 32000).samples  # 4 bars of 4 beats at 120 bpm: 8 s, 256000 samples


@pytest.mark.slow
def test_the_python_client_runs_the_looper(looper_server):
    client = replicate.Client(api_token=TOKEN, base_url=looper_server.url)
    output = client.run(f"{LOOPER}:{VERSION}", input=INPUT)
    assert sorted(output) == ["variation_01", "variation_02", "variation_03", "variation_04"]
    assert {audio_info(str(url)) for url in output.values()} == {(1, 32000, FRAMES)}
    latest = client.predictions.list().results[0]
    assert latest.model == LOOPER and latest.version == VERSION and "120 bpm" in latest.logs


@pytest.mark.slow
def test_the_node_client_runs_the_looper(looper_server):
    got = node_client("loop", token=TOKEN, baseUrl=looper_server.url, version=VERSION, input=INPUT)
    assert sorted(got["output"]) == ["variation_01", "variation_02", "variation_03", "variation_04"]
    assert {audio_info(url) for url in got["output"].values()} == {(1, 32000, FRAMES)}


@pytest.mark.slow
def test_the_docs_python_snippet_runs_as_written(looper_server):
    """docs/looper.md's "Using it" snippet, with only the port and the token changed."""
    from tests.docs_helpers import code_blocks, section

    (snippet,) = code_blocks(section("docs/looper.md", "## Using it"), "python")
    code = snippet.replace("http://127.0.0.1:5000", looper_server.url).replace('"anything"', repr(TOKEN))
    scope: dict = {}
    exec(compile(code, "docs/looper.md", "exec"), scope)
    assert sorted(scope["loops"]) == ["variation_01", "variation_02", "variation_03", "variation_04"]
    assert {audio_info(str(url)) for url in scope["loops"].values()} == {(1, 32000, FRAMES)}
