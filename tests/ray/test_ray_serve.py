"""The engine on a real Ray Serve cluster (two CPU replicas on 127.0.0.1, tiny weights), through the
same EngineClient interface as the in-process engine, and behind the unchanged v1 API."""

from __future__ import annotations

import os
import signal
import time

import httpx
import replicate
from ray_helpers import audio_of, log_lines, pid_of, replicas_of, wait_for

from musicgen_local.engine import Request, result_of
from musicgen_local.engine.api import Audio, Canceled, Done, Progress, Started
from musicgen_local.registry import LATEST, MUSICGEN
from tests.e2e.e2e_helpers import TOKEN, LiveServer, audio_info, melody_wav  # noqa: F401 - melody_wav is a fixture

REF = f"{MUSICGEN}:{LATEST}"


def until(run, condition) -> list:
    """The run's events up to the first one that meets `condition` (the run goes on)."""
    events = []
    for event in run:
        events.append(event)
        if condition(event):
            return events
    raise AssertionError(f"the run ended first: {events[-1]}")


def decoding(steps: int):
    return lambda event: isinstance(event, Progress) and event.done >= steps


def spread(ray_engine) -> list[list]:
    """Six predictions at once, each run's events: a replica takes 4 runs at once (2 x MUSICGEN_MAX_BATCH), so six
    cannot all go to one."""
    runs = [ray_engine.submit(Request(model_version="large", prompt=f"p{i}", duration=2, seed=i + 1)) for i in range(6)]
    return [list(run) for run in runs]


def test_predictions_spread_over_the_two_replicas(ray_engine):
    events = spread(ray_engine)
    assert all(isinstance(e[-1], Done) for e in events)
    assert len({replicas_of(e)[0] for e in events}) == 2


def test_metrics_carry_each_replicas_engine_series(ray_engine, ray_settings):
    """After predictions spread over both replicas, /metrics shows each replica's decode steps, labelled by
    replica, from the health they post every 5 s. (It spreads its own: under pytest-xdist the test above may
    have run on replicas that are gone.)"""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from musicgen_local.server import create_app

    def steps_by_replica(client) -> dict[str, float]:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {ray_settings.api_token}"}).text
        return {
            s.labels["replica"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "musicgen_engine_decode_steps_total" and s.labels["model_version"] == "large"
        }

    assert len({replicas_of(e)[0] for e in spread(ray_engine)}) == 2
    with TestClient(create_app(ray_settings, ray_engine)) as client:
        deadline = time.monotonic() + 30
        while len(steps := steps_by_replica(client)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    assert len(steps) == 2 and all(n > 0 for n in steps.values()) and "local" not in steps


def test_a_replica_that_holds_a_model_gets_its_next_requests(ray_engine):
    first = list(ray_engine.submit(Request(model_version="stereo-large", prompt="a", duration=1, seed=1)))
    holder = replicas_of(first)
    for seed in range(2, 7):  # at random, 5 in a row on the same replica of two: 1 in 32
        events = list(ray_engine.submit(Request(model_version="stereo-large", prompt="b", duration=1, seed=seed)))
        assert replicas_of(events) == holder


def test_cancel_reaches_the_replica(ray_engine):
    long = ray_engine.submit(Request(model_version="melody-large", prompt="long", duration=300, seed=1))
    holder = replicas_of(until(long, decoding(10)))
    long.cancel()
    started = time.monotonic()
    assert isinstance(list(long)[-1], Canceled)
    assert time.monotonic() - started < 10
    # The next request for that model goes to the same replica; had the canceled one gone on decoding
    # there, the two would decode together ("Decoding in a batch of 2 requests").
    after = list(ray_engine.submit(Request(model_version="melody-large", prompt="next", duration=1, seed=2)))
    assert replicas_of(after) == holder
    assert isinstance(after[-1], Done)
    assert not [line for line in log_lines(after) if "batch of" in line]


def test_a_killed_replica_runs_its_prediction_again_elsewhere_with_the_same_audio(ray_engine, engine):
    request = Request(model_version="stereo-melody-large", prompt="killed", duration=10, seed=7)
    run = ray_engine.submit(request, stream=True)
    events = until(run, decoding(200))  # 4 s of audio decoded: some segments streamed
    os.kill(pid_of(events), signal.SIGKILL)
    events += list(run)
    killed, again = replicas_of(events)
    assert killed != again
    assert [line for line in log_lines(events) if "stopped" in line and "running it again from the start" in line]
    assert audio_of(events) == result_of(engine.submit(request)).audio  # the in-process engine, same seed
    # What the first attempt had already sent is not sent twice: one start, each audio segment once.
    assert [e for e in events if isinstance(e, Started)] == [Started()]
    assert [e.index for e in events if isinstance(e, Audio)] == list(range(10))

    # The other replica went on serving, and the cluster replaces the dead one: soon, 6 predictions at
    # once are served by two replicas again, neither of them the one killed.
    assert isinstance(list(ray_engine.submit(Request(model_version="large", prompt="x", duration=1)))[-1], Done)
    serving: list[set[str]] = []

    def two_replicas_serve() -> bool:
        runs = [ray_engine.submit(Request(model_version="large", prompt=f"q{i}", duration=2)) for i in range(6)]
        serving.append({replicas_of(list(run))[0] for run in runs})
        return len(serving[-1]) == 2

    wait_for(two_replicas_serve, 120, lambda: f"served by {serving}; {ray_engine.health()}")
    assert killed not in serving[-1]


def test_the_python_client_against_the_ray_backed_server(ray_engine, ray_settings, engine, melody_wav):  # noqa: F811
    with LiveServer(ray_settings.with_(api_token=TOKEN), ray_engine) as server:
        client = replicate.Client(api_token=TOKEN, base_url=server.url)
        with open(melody_wav, "rb") as f:  # uploaded to the API, read by a replica in another process
            output = client.run(
                REF,
                input={
                    "prompt": "hum",
                    "duration": 1,
                    "model_version": "stereo-melody-large",
                    "input_audio": f,
                    "seed": 5,
                },
            )
        assert audio_info(output) == (2, 32000, 32000)
        prediction = client.predictions.list().results[0]
        assert prediction.status == "succeeded" and "Engine replica: " in prediction.logs
        health = httpx.get(f"{server.url}/health-check").json()
        assert health["status"] == "READY" and health["engine"]["engine"] == "ray"
        audio = httpx.get(output).content
    local = result_of(
        engine.submit(
            Request(model_version="stereo-melody-large", prompt="hum", duration=1, seed=5, input_audio=str(melody_wav))
        )
    )
    assert audio == local.audio


def test_a_training_runs_on_one_replica_and_its_version_runs_on_the_replicas(
    ray_engine, ray_settings, engine, tmp_path
):
    """The Python client trains through the Ray-backed server (one replica trains), then runs the new
    version on the replicas: the same audio the in-process engine gives with that tar."""
    from tests.training_helpers import PREDICT, songs_zip
    from tests.training_helpers import QUICK_TRAINING as TRAINING

    with LiveServer(ray_settings.with_(api_token=TOKEN), ray_engine) as server:
        client = replicate.Client(api_token=TOKEN, base_url=server.url)
        client.models.create(owner="alice", name="ray-sound", visibility="private", hardware="cpu")
        with open(songs_zip(tmp_path / "songs.zip"), "rb") as f:
            training = client.trainings.create(
                model="meta/musicgen",
                version=REF.partition(":")[2],
                destination="alice/ray-sound",
                input={**TRAINING, "dataset_path": f},
            )
        wait_for(
            lambda: client.trainings.get(training.id).status in ("succeeded", "failed"),
            300,
            lambda: "training did not end",
        )
        training = client.trainings.get(training.id)
        assert training.status == "succeeded", training.logs
        assert training.logs.count("Engine replica: ") == 1
        audio = httpx.get(client.run(training.output["version"], input=PREDICT)).content
        weights = tmp_path / "weights.tar"
        weights.write_bytes(httpx.get(training.output["weights"]).content)
    local = result_of(engine.submit(Request(**PREDICT, weights=str(weights))))
    base = result_of(engine.submit(Request(**PREDICT)))
    assert audio == local.audio != base.audio
