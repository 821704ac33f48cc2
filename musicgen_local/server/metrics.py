"""`GET /metrics`: Prometheus' text format, from a registry of this app's own (two apps in one process,
as in tests, never share counters).

Two kinds of series:
- counted as things happen, by the dispatchers (`Observer`): runs created and ended, by status and
  model_version; time queued, time to the first streamed audio and predict time, as histograms;
- read at scrape time (`_Snapshot`), from what already keeps count: the queue, stream followers,
  webhooks, uploads, and the engine's `health()` (per device and model: decode steps and frames,
  batch rows in use and allocated, model loads and evictions, the memory plan). The engine knows
  nothing of Prometheus; it keeps plain numbers and this module names them.

Per-device series carry a `replica` label: "local" for the in-process engine; with `MUSICGEN_RAY_ADDRESS`,
each replica's id, from the health the replicas post to the bridge (ray/deployment.py's HealthBoard, every 5 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .prediction import Prediction

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: from a queue that empties at once to one an hour long
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
REALTIME_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)  # below 1: faster than real time
PREDICT_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


def audio_seconds(run: Prediction) -> float:
    """Seconds of audio a run asked for (a loop's: its longest), 0 when it made none."""
    request = run.request or {}
    return float(request.get("duration") or request.get("max_duration") or 0)


def model_of(run: Prediction) -> str:
    return str((run.request or {}).get("model_version") or run.input.get("model_version") or "unknown")


class Observer:
    """What one dispatcher reports (predictions, or trainings): it calls these as runs move."""

    def __init__(self, registry: CollectorRegistry, noun: str) -> None:
        plural = f"{noun}s"
        self.created = Counter(
            f"musicgen_{plural}_created",
            f"{plural.capitalize()} created, by model_version and version (a fine-tune's own).",
            ["model_version", "version"],
            registry=registry,
        )
        self.ended = Counter(
            f"musicgen_{plural}_ended",
            f"{plural.capitalize()} ended, by final status.",
            ["model_version", "version", "status"],
            registry=registry,
        )
        self.queued = Histogram(
            f"musicgen_{noun}_queued_seconds",
            f"From create to the {noun} starting.",
            ["model_version"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.predict = Histogram(
            f"musicgen_{noun}_predict_seconds",
            "From start to success (predict_time).",
            ["model_version"],
            buckets=PREDICT_BUCKETS,
            registry=registry,
        )
        self.first_audio = Histogram(
            f"musicgen_{noun}_first_audio_seconds",
            "From create to the first streamed segment.",
            ["model_version"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.realtime = Histogram(
            f"musicgen_{noun}_realtime_factor",
            "Seconds of work per second of audio made (predict_time over the duration asked for).",
            ["model_version"],
            buckets=REALTIME_BUCKETS,
            registry=registry,
        )
        self._heard: set[str] = set()  # runs whose first segment was counted

    def on_created(self, run: Prediction) -> None:
        self.created.labels(model_of(run), run.version).inc()

    def on_started(self, run: Prediction) -> None:
        if run.started_at is not None:
            self.queued.labels(model_of(run)).observe((run.started_at - run.created_at).total_seconds())

    def on_audio(self, run: Prediction) -> None:
        if run.id not in self._heard:
            self._heard.add(run.id)
            self.first_audio.labels(model_of(run)).observe(time.time() - run.created_at.timestamp())

    def on_ended(self, run: Prediction) -> None:
        self._heard.discard(run.id)
        self.ended.labels(model_of(run), run.version, run.status).inc()
        if run.status == "succeeded" and run.started_at is not None and run.completed_at is not None:
            took = (run.completed_at - run.started_at).total_seconds()
            self.predict.labels(model_of(run)).observe(took)
            if seconds := audio_seconds(run):
                self.realtime.labels(model_of(run)).observe(took / seconds)


class _Snapshot:
    """A custom collector: the numbers other parts keep, read when Prometheus scrapes."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        state = self.read()
        yield _gauge(
            "musicgen_predictions_queued",
            "Predictions created and not yet handed to the engine.",
            [((), state["queued"])],
        )
        yield _gauge(
            "musicgen_predictions_unfinished",
            "Predictions created and not ended (MUSICGEN_MAX_QUEUE counts these).",
            [((), state["unfinished"])],
        )
        yield _gauge(
            "musicgen_stream_followers", "Clients following a prediction's stream.", [((), state["followers"])]
        )
        yield _counter("musicgen_upload_bytes", "Bytes uploaded through POST /v1/files.", [((), state["uploaded"])])
        webhooks = [((kind, outcome), n) for kind, counts in state["webhooks"].items() for outcome, n in counts.items()]
        yield _counter(
            "musicgen_webhooks",
            "Webhook attempts by outcome: sent (answered 2xx-4xx), failed, retried (a retry scheduled), given_up.",
            webhooks,
            ["kind", "outcome"],
        )
        yield from _engine(state["engine"])


def _devices(health: dict[str, Any]) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """((replica, device), the device's health) for each device: the in-process engine's (replica "local"),
    or, with Ray, those each replica last posted."""
    if "replica_health" in health:
        return [
            ((replica, d["device"]), d)
            for replica, h in sorted(health["replica_health"].items())
            for d in h.get("devices") or []
        ]
    return [(("local", d["device"]), d) for d in health.get("devices") or []]


def _engine(health: dict[str, Any]) -> Iterator[Metric]:
    """The engine's own numbers, named: one row of `_ENGINE_SERIES` a series (per device, per model), then the
    adapters each tier holds and the Ray replicas."""
    yield _gauge(
        "musicgen_engine_ready", "1 when the engine says READY.", [((), 1 if health.get("status") == "READY" else 0)]
    )
    by_device = _devices(health)
    for family, name, doc, per, read in _ENGINE_SERIES:
        if per == "device":
            samples = [(labels, read(d)) for labels, d in by_device if read(d) is not None]
            yield family(name, doc, samples, ["replica", "device"])
        else:  # per model, from a dict the device keeps by model
            samples = [((*labels, m), read(v)) for labels, d in by_device for m, v in (d.get(per) or {}).items()]
            yield family(name, doc, samples, ["replica", "device", "model_version"])
    slots = [
        (labels, name) for labels, d in by_device for names in (d.get("adapters") or {}).values() for name in names
    ]
    adapters = [((*labels, name, "device"), 1) for labels, name in slots]
    adapters += [(("local", "host", name, "host"), 1) for name in health.get("host_adapters") or []]
    yield _gauge(
        "musicgen_adapters_loaded",
        "LoRA fine-tunes loaded, by tier: in a device's adapter slots, or read into host memory.",
        adapters,
        ["replica", "device", "adapter", "tier"],
    )
    yield _gauge(
        "musicgen_engine_replicas",
        "Ray Serve engine replicas, by state.",
        [((state,), n) for state, n in (health.get("replicas") or {}).items()],
        ["state"],
    )


def _family(kind, name: str, doc: str, samples: list[tuple[tuple, float]], labels: list[str] | None = None) -> Metric:
    family = kind(name, doc, labels=labels or [])
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _gauge(*args, **kwargs) -> Metric:
    return _family(GaugeMetricFamily, *args, **kwargs)


def _counter(*args, **kwargs) -> Metric:
    return _family(CounterMetricFamily, *args, **kwargs)


class Metrics:
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        """read() -> the scrape-time numbers: queued, unfinished, followers, uploaded, webhooks
        ({kind: {outcome: n}}), engine (its health)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self._observers: dict[str, Observer] = {}
        self.registry.register(_Snapshot(read))

    def observer(self, noun: str) -> Observer:
        """The series of one kind of run (`musicgen_predictions_created_total`, ...), made at its first use."""
        if noun not in self._observers:
            self._observers[noun] = Observer(self.registry, noun)
        return self._observers[noun]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _memory(key: str):
    return lambda d: (d.get("memory") or {}).get(key, 0)


# (family, name, doc, "device" or the per-model dict it reads, what it reads)
_ENGINE_SERIES = (
    (_counter, "musicgen_engine_model_loads", "Models read and placed on a device.", "device",
     lambda d: d.get("model_loads", 0)),
    (_counter, "musicgen_engine_evictions", "Models evicted from a device (for room, or MUSICGEN_MAX_MODELS).",
     "device", lambda d: d.get("evictions", 0)),
    (_counter, "musicgen_engine_out_of_memory_errors", "Out-of-memory errors the device survived.", "device",
     lambda d: d.get("out_of_memory_errors", 0)),
    (_gauge, "musicgen_engine_jobs", "Requests routed to a device and not ended.", "device",
     lambda d: d.get("jobs", 0)),
    (_gauge, "musicgen_engine_memory_budget_bytes", "Bytes the device's memory plan may use.", "device",
     _memory("budget_bytes")),
    (_gauge, "musicgen_engine_memory_planned_bytes", "Bytes the memory plan has given to models and caches.",
     "device", _memory("used_bytes")),
    (_gauge, "musicgen_engine_memory_used_bytes", "Bytes the device's allocator holds (CUDA; absent on CPU).",
     "device", lambda d: d.get("memory_allocated_bytes")),
    (_counter, "musicgen_engine_decode_steps", "Fast decoder steps, each for every row of a model's batch.",
     "decoded", lambda c: c["steps"]),
    (_counter, "musicgen_engine_frames",
     "Frames decoded (rows x steps; a frame is one token per codebook, 50 a second of audio).", "decoded",
     lambda c: c["frames"]),
    (_gauge, "musicgen_engine_batch_rows_in_use", "Rows of a model's batch decoding now.", "batches",
     lambda b: b["rows_in_use"]),
    (_gauge, "musicgen_engine_batch_rows_allocated", "Rows (slots) of a model's batch, allocated on the device.",
     "batches", lambda b: b["rows_allocated"]),
)  # fmt: skip
