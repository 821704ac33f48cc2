"""The image's default command, as the README runs it: the v1 API on port 5000, tiny weights mounted read-only
as /weights, predictions on a named volume at /data; the official Python client, unchanged but for its base URL."""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import replicate
from container_helpers import TOKEN, Container, engine, healthcheck_command, unique

from musicgen_local.registry import LATEST

pytestmark = pytest.mark.timeout(3600)  # the first test builds the image (fixture `image`)
REF = f"meta/musicgen:{LATEST}"


def v1_server(tiny_weights, data: str, **env: str) -> Container:
    """The README's `docker run` of the v1 API. Only the module's `server` warms its default model up before READY
    (a minute here); the others start cold (MUSICGEN_WARMUP=none) and load on their first prediction."""
    env = {"MUSICGEN_API_TOKEN": TOKEN, "MUSICGEN_WARMUP": "none", **env}
    return Container({str(tiny_weights): "/weights:ro", data: "/data"}, env=env)


def client(container: Container) -> replicate.Client:
    return replicate.Client(api_token=TOKEN, base_url=container.url)


def audio_info(url: str) -> tuple[int, int, int]:
    """(channels, sample rate, frames) of a wav output, fetched without a token as clients do."""
    with wave.open(io.BytesIO(httpx.get(url, timeout=30).raise_for_status().content)) as w:
        return w.getnchannels(), w.getframerate(), w.getnframes()


@pytest.fixture(scope="module")
def server(image, tiny_weights) -> Iterator[Container]:
    volume = unique("data")
    engine("volume", "create", volume)
    container = v1_server(tiny_weights, volume, MUSICGEN_WARMUP="default").start()
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()
        engine("volume", "rm", "-f", volume, check=False)


def test_health_check_answers_and_the_images_healthcheck_passes(server):
    assert httpx.get(f"{server.url}/health-check", timeout=10).json()["status"] == "READY"
    assert server.exec(*healthcheck_command()).returncode == 0


def test_the_official_python_client_runs_a_prediction(server):
    output = client(server).run(REF, input={"prompt": "jazz", "duration": 1, "model_version": "large", "seed": 3})
    assert isinstance(output, str) and output.startswith(f"{server.url}/delivery/")
    assert audio_info(output) == (1, 32000, 32000)


def test_no_process_in_the_container_runs_as_root(server):
    # Every process's real, effective, saved and filesystem uid: tini (PID 1), the server, and this exec.
    lines = server.exec("sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").stdout.splitlines()
    uids = {uid for line in lines for uid in line.split()[1:]}
    assert len(lines) >= 3 and uids == {"1000"}


def test_the_data_volume_keeps_a_finished_prediction_across_a_restart(image, tiny_weights, data_volume, containers):
    first = v1_server(tiny_weights, data_volume).start()
    containers.append(first)
    first.wait_ready()
    output = client(first).run(REF, input={"prompt": "keep me", "duration": 1, "model_version": "large"})
    pred_id = output.split("/")[-2]
    first.stop()
    second = v1_server(tiny_weights, data_volume).start()  # a new container on the same volume
    containers.append(second)
    second.wait_ready()
    again = client(second).predictions.get(pred_id)
    assert again.status == "succeeded" and again.output == f"{second.url}/delivery/{pred_id}/out.wav"
    assert audio_info(again.output) == (1, 32000, 32000)


def test_docker_stop_drains_a_running_prediction(image, tiny_weights, data_volume, containers):
    """`docker stop`'s SIGTERM reaches the server (tini is PID 1), which lets the running prediction finish and
    exits 0 before the engine's SIGKILL; the prediction is then found succeeded by the next container."""
    first = v1_server(tiny_weights, data_volume, MUSICGEN_SHUTDOWN_GRACE="240").start()
    containers.append(first)
    first.wait_ready()
    pred = client(first).predictions.create(version=LATEST, input={"prompt": "long", "duration": 20, "seed": 1})
    deadline = time.monotonic() + 120
    while (pred := client(first).predictions.get(pred.id)).status == "starting":
        assert time.monotonic() < deadline, pred
        time.sleep(0.2)
    assert pred.status == "processing"
    stopped_at = datetime.now().astimezone()
    first.stop(grace=300)
    state = first.state()
    assert state["ExitCode"] == 0, first.logs()[-3000:]  # 137 if SIGKILL had ended it
    assert "Draining: no new predictions" in first.logs()
    second = v1_server(tiny_weights, data_volume).start()
    containers.append(second)
    second.wait_ready()
    done = client(second).predictions.get(pred.id)
    assert done.status == "succeeded", (done.status, done.error, first.logs()[-3000:])
    assert datetime.fromisoformat(done.completed_at.replace("Z", "+00:00")) > stopped_at  # it ran through SIGTERM
    assert audio_info(done.output)[1:] == (32000, 20 * 32000)
