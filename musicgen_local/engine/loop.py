"""The device loop: the one thread that owns a device, its models, their caches and every generator.

Each turn it takes the prepared requests that arrived, admits waiting windows into free slots of
their model's batch (conditions, prefill, first token), runs one decode step for every model that
has live slots (all models in turn, so none starves another), reports progress and streams audio
as frames become final, and retires finished windows: the next window of the request, or the codec
and then the encode pool. Other threads only ever hand it jobs and read its events.

A model it does not hold is read from disk by the loader pool while the loop goes on decoding; once
read, the loop places it by its memory plan (`memory.py`: evicting idle models, or waiting for busy
ones to finish), builds it on the device, captures its step graphs and checks its fast decoder
against audiocraft's (`selfcheck.py`) before any request uses it.

Failures have the reach `faults.py` gives them: a request's error ends that request; running out of
memory frees the cache and ends what needed the memory; a fatal device error ends every job here
(those not started yet end `Failed(kind="device")`, so that a server keeps them queued for its next
start), marks the device lost and tells the engine, whose owner exits.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from .. import audio, registry
from .. import weights as W
from ..errors import Cancelled, EngineError, MusicgenError
from ..settings import Settings
from . import codec, faults, memory, reference, selfcheck, training_job
from .api import Canceled, Done, Failed, Log, Progress, Request, Result, Started, failure
from .fast import Lora, SamplingParams, SlotBatch, Window, unsupported_reason
from .models import base_of
from .plan import Plan, plan_request
from .run import EventQueue

log = logging.getLogger(__name__)
CODEC_KEY = registry.ENCODE_DECODE
MELODY_PREFIX = 300  # cache positions kept for a melody model's prepended chroma (235) and prompt tokens


@dataclass(eq=False)
class Job:
    """One request inside the engine, from its preparation to its file."""

    request: Request  # its seed is fixed (Request.with_seed)
    run: EventQueue
    stream: bool = False
    clip: torch.Tensor | None = None  # the cropped input [C, T] at 32 kHz (prepare pool)
    # device loop state
    plan: Plan | None = None
    mbd: Any = None
    generator: torch.Generator | None = None
    window: int = 0  # the window decoding or next to decode
    slot: int | None = None
    codes: torch.Tensor | None = None  # [1, K, F] final frames so far (continuation prompt included)
    prompt: torch.Tensor | None = None  # the next window's prompt codes
    steps_before: int = 0  # decoding steps of finished windows
    segments: codec.SegmentStream | None = None
    batch_logged: int = 1  # the largest batch this request was told it decodes in
    started: bool = False  # Started was emitted

    lora: Lora | None = None  # a LoRA fine-tune of the model: decoded in the model's batch, its rows adapted
    full_tune: str | None = None  # a full fine-tune's folder: a model of its own

    @property
    def key(self) -> str:
        """The model this job decodes with, among the device's resident models."""
        version = self.request.model_version
        return version if self.full_tune is None else f"{version}@{self.full_tune}"

    def log(self, line: str) -> None:
        self.run.emit(Log(line))


@dataclass
class Resident:
    model: Any  # audiocraft MusicGen, or the EnCodec of encode-decode
    batch: SlotBatch | None  # the fast decoder's slots for this LM (None: audiocraft's loop decodes it)


@dataclass
class _Read:
    """The loader pool's answer: a model's checkpoint in host memory, or why it could not be read."""

    model_version: str
    host: Any = None
    error: Exception | None = None


class DeviceLoop:
    def __init__(
        self,
        device: str,
        settings: Settings,
        encode_pool: Executor,
        loader_pool: Executor,
        read,
        build,
        mbd,
        on_lost=None,
    ) -> None:
        """read(model_version) -> host copy (the loader pool); build(host copy, device) -> model (here);
        on_lost(device, message): called once if the device fails for good."""
        self.device, self.settings, self.encode_pool, self.loader_pool = device, settings, encode_pool, loader_pool
        self._read, self._build, self.mbd, self._on_lost = read, build, mbd, on_lost
        self.inbox: queue.SimpleQueue[Job | _Read | None] = queue.SimpleQueue()
        self.models: OrderedDict[str, Resident] = OrderedDict()
        self.plan = memory.new_plan(device, settings.device_memory)
        self.dtype_bytes = 4 if torch.device(device).type == "cpu" else 2  # the LM's compute dtype: float16 off CPU
        self.model_loads = 0
        self.evictions = 0
        # model_version -> [decode steps, frames decoded (rows x steps; a frame is one token per codebook)]
        self.decoded: dict[str, list[int]] = {}
        self.loading: dict[str, list[Job]] = {}  # model_version -> jobs waiting for it to be read and placed
        self.read: dict[str, Any] = {}  # model_version -> host copy, read and waiting for room on the device
        self.fast_decoder: dict[str, str] = {}  # model_version -> "enabled (...)" or "disabled (why)"
        self.trainings: deque[training_job.TrainJob] = deque()  # the first runs between decode steps, the rest wait
        self.waiting: list[Job] = []  # windows waiting for a slot, oldest first (a next window goes first)
        self.decoding: dict[str, dict[int, Job]] = {}  # model_version -> slot -> job
        self.lost: str | None = None  # why the device can serve nothing more
        self.out_of_memory = 0  # out-of-memory errors survived
        self.ready = threading.Event()
        self.jobs = 0  # routed here and not ended: how loaded this device is
        self._count = threading.Lock()
        self._busy_before: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=f"device-loop-{device}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- other threads

    def put(self, job: Job | training_job.TrainJob) -> None:
        with self._count:
            self.jobs += 1
            lost = self.lost
        if lost is None:
            self.inbox.put(job)
        else:
            self._end(job, _not_started(self.device, lost))

    def stop(self) -> None:
        self.inbox.put(None)
        self._thread.join(timeout=30)

    def health(self) -> dict[str, Any]:
        status = "UNHEALTHY" if self.lost else "READY" if self.ready.is_set() else "STARTING"
        out = {
            "device": self.device,
            "status": status,
            "ready": self.ready.is_set(),
            "resident_models": list(self.models),
            "model_loads": self.model_loads,
            "mbd_loads": self.mbd.loads,
            "jobs": self.jobs,
            "decoding": sum(len(jobs) for jobs in self.decoding.values()),
            "loading": sorted(self.loading),
            "fast_decoder": dict(self.fast_decoder),
            "memory": self.plan.as_dict(),
            "out_of_memory_errors": self.out_of_memory,
            "trainings": len(self.trainings),
            "evictions": self.evictions,
            "decoded": {
                version: {"steps": steps, "frames": frames} for version, (steps, frames) in list(self.decoded.items())
            },
            "batches": {
                version: {
                    "rows_in_use": len(self.decoding.get(version) or ()),
                    "rows_allocated": len(getattr(resident.batch, "slots", ()) or ()),
                }
                for version, resident in list(self.models.items())
            },
        }
        if self.device.startswith("cuda") and not self.lost:
            out["memory_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
        if self.lost:
            out["error"] = self.lost
        return out

    # ---------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._warm_up()
        except faults.DeviceLost as lost:
            self._lose(lost)
        except Exception:  # noqa: BLE001 - a model that cannot warm up still serves the others, logged
            log.exception("warm-up failed on %s", self.device)
        finally:
            self.ready.set()
        with torch.inference_mode():
            while not self.lost:
                try:
                    if not self._receive(block=self._idle()):
                        break
                    self._place_waiting_models()
                    self._admit()
                    self._step()
                    self._train()
                except faults.DeviceLost as lost:
                    self._lose(lost)
                except Exception as exc:  # noqa: BLE001 - a bug: end what was running, go on
                    if faults.classify(exc, self.device) == faults.FATAL:
                        self._lose(faults.DeviceLost(self.device, exc))
                        continue
                    log.exception("device loop %s: step failed", self.device)
                    self._fail_all(exc)
        self._refuse_forever()

    def _idle(self) -> bool:
        """Nothing to do until something arrives: no window waits or decodes, and no read model can be
        placed now that could not be before (the busy models are the same)."""
        placeable = bool(self.read) and self._busy() != self._busy_before
        training = bool(self.trainings) and self.trainings[0].work is not None
        return not self.waiting and not any(self.decoding.values()) and not placeable and not training

    def _fail_all(self, exc: Exception) -> None:
        for job in [*self.waiting, *(j for jobs in self.decoding.values() for j in jobs.values()), *self.trainings]:
            self._end(job, _failure(exc, job))
        self.waiting.clear()
        self.trainings.clear()
        for model_version, jobs in self.decoding.items():
            for slot in jobs:
                self.models[model_version].batch.release(slot)
            jobs.clear()

    def _lose(self, lost: faults.DeviceLost) -> None:
        """The device is unusable: every job here ends, and the engine is told (it exits)."""
        message = (
            f"The GPU {self.device} failed with an unrecoverable error ({lost.cause}). This server "
            "stops and is restarted; predictions that had not started yet run after the restart."
        )
        log.critical("device %s lost: %s", self.device, lost)
        with self._count:
            self.lost = message
        held = [
            *self.waiting,
            *(j for jobs in self.decoding.values() for j in jobs.values()),
            *(j for jobs in self.loading.values() for j in jobs),
            *([lost.job] if lost.job else []),
        ]
        started = [j for j in held if j.started]
        queued = [j for j in held if not j.started] + list(self.trainings)  # a training resumes from its checkpoint
        self.trainings.clear()
        for job in started:
            self._end(job, Failed(message, kind="internal"))
        for job in queued:
            self._end(job, _not_started(self.device, message))
        self.waiting.clear()
        self.decoding.clear()
        self.loading.clear()
        if self._on_lost is not None:
            self._on_lost(self.device, message)

    def _refuse_forever(self) -> None:
        """After a lost device: whatever still arrives ends at once, until the loop is stopped."""
        while self.lost:
            item = self.inbox.get()
            if item is None:
                return
            if isinstance(item, Job | training_job.TrainJob):
                self._end(item, _not_started(self.device, self.lost))

    def _receive(self, block: bool) -> bool:
        """Take the jobs that arrived (waiting for one when idle); False when told to stop."""
        while True:
            try:
                item = self.inbox.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            block = False
            if isinstance(item, _Read):
                self._model_read(item)
            elif isinstance(item, training_job.TrainJob):
                self.trainings.append(item)
            elif isinstance(item, training_job.TrainRead):
                self._training_read(item)
            else:
                self._guard(item, self._arrive, item)

    def _arrive(self, job: Job) -> None:
        if job.run.canceled.is_set():
            raise Cancelled()
        model_version = job.key
        if model_version not in self.models:
            return self._wait_for_model(job)
        self.models.move_to_end(model_version)
        self._start(job, self.models[model_version].model)

    def _start(self, job: Job, model) -> None:
        """A job whose model is resident: the codec round trip, audiocraft's loop, or a slot's wait."""
        if job.run.canceled.is_set():
            raise Cancelled()
        if job.key == CODEC_KEY:
            return self._round_trip(job, model)
        if self.settings.decoder == "reference" or self.models[job.key].batch is None:
            return self._reference(job, model)
        job.generator = torch.Generator(self.device).manual_seed(job.request.seed)
        job.plan = plan_request(model, job.request, job.clip, random.Random(job.request.seed))
        self._mbd(job)
        job.prompt = job.plan.prompt_tokens
        job.codes = (
            job.prompt
            if job.prompt is not None
            else torch.zeros((1, model.lm.num_codebooks, 0), dtype=torch.long, device=model.device)
        )
        if job.stream:
            job.segments = codec.SegmentStream(
                model.compression_model, int(job.request.duration * model.frame_rate), self.settings.stream_seconds
            )
        self.waiting.append(job)

    def _admit(self) -> None:
        for job in list(self.waiting):
            if job.run.canceled.is_set():
                self.waiting.remove(job)
                self._end(job, Canceled())
                continue
            batch = self.models[job.key].batch
            if batch.has_room():
                self.waiting.remove(job)
                self._guard(job, self._admit_one, job, batch)
        for jobs in self.decoding.values():
            for job in jobs.values():
                if len(jobs) > job.batch_logged:
                    job.batch_logged = len(jobs)
                    job.log(f"Decoding in a batch of {len(jobs)} requests")

    def _admit_one(self, job: Job, batch: SlotBatch) -> None:
        request, plan = job.request, job.plan
        params = SamplingParams(
            request.temperature, request.top_k, request.top_p, float(request.classifier_free_guidance)
        )
        window = Window(
            plan.window_conditions(job.window),
            job.prompt,
            plan.windows[job.window].frames,
            params,
            job.generator,
            job.lora,
        )
        with _autocast(self.device):
            job.slot = batch.admit(window)
        self.decoding.setdefault(job.key, {})[job.slot] = job
        if not job.started:
            job.started = True
            job.run.emit(Started())
        self._after_step(job, batch)

    def _step(self) -> None:
        for model_version, jobs in list(self.decoding.items()):
            if not jobs:
                continue
            batch = self.models[model_version].batch
            try:
                with _autocast(self.device):
                    batch.step()
                counts = self.decoded.setdefault(model_version, [0, 0])
                counts[0] += 1
                counts[1] += len(jobs)
            except Exception as exc:  # noqa: BLE001 - e.g. out of device memory: this batch's requests fail
                reach = faults.classify(exc, self.device)
                if reach == faults.FATAL:
                    raise faults.DeviceLost(self.device, exc) from exc
                log.exception("device loop %s: %s step failed", self.device, model_version)
                if reach == faults.OUT_OF_MEMORY:
                    exc = self._out_of_memory(exc, f"decoding a batch of {len(jobs)} {model_version} requests")
                for job in list(jobs.values()):
                    self._release(job, batch)
                    self._end(job, _failure(exc, job))
                continue
            for job in list(jobs.values()):
                self._guard(job, self._after_step, job, batch)

    def _after_step(self, job: Job, batch: SlotBatch) -> None:
        """Progress, cancellation, streamed segments and the end of a window, for one slot."""
        slot, plan = job.slot, job.plan
        done, _ = batch.steps(slot)
        job.run.emit(Progress(job.steps_before + done, plan.steps_total))
        if job.run.canceled.is_set():
            raise Cancelled()
        prompt_frames = plan.windows[job.window].prompt
        if job.segments is not None:
            final = job.codes.shape[-1] + max(0, batch.final_frames(slot) - prompt_frames)
            while job.segments.due(final):
                window_codes = batch.codes(slot, prompt_frames + final - job.codes.shape[-1])[..., prompt_frames:]
                job.run.emit(job.segments.decode_next(torch.cat([job.codes, window_codes], dim=-1), final))
        if not batch.done(slot):
            return
        codes = batch.codes(slot)  # [1, K, frames]
        self._release(job, batch)
        span = plan.windows[job.window]
        job.codes = torch.cat([job.codes, codes[..., span.prompt :]], dim=-1)
        job.steps_before += span.frames - span.prompt + plan.max_delay
        job.prompt = codes[..., plan.stride :]
        job.window += 1
        if job.window < len(plan.windows):
            self.waiting.insert(0, job)
        else:
            self._finish(job, plan.model, job.codes, job.generator)

    def _release(self, job: Job, batch: SlotBatch) -> None:
        if job.slot is not None:
            batch.release(job.slot)
            del self.decoding[job.key][job.slot]
            job.slot = None

    # ---------------------------------------------------------------------------------- whole requests

    def _reference(self, job: Job, model) -> None:
        """The oracle path: audiocraft's own loop, one request at a time (see reference.py)."""
        self._mbd(job)  # before seeding: building a model draws from the global RNGs
        job.run.emit(Started())
        reference.seed_everything(job.request.seed)
        plan = plan_request(model, job.request, job.clip, random.Random(job.request.seed))

        def on_step(done: int, total: int) -> None:
            job.run.emit(Progress(done, total))
            if job.run.canceled.is_set():
                raise Cancelled()

        if job.lora is None:
            tokens = reference.decode(plan, job.request, on_step)
        else:
            from ..training.lora import applied

            with applied(model.lm, job.lora.tensors, job.lora.scale):
                tokens = reference.decode(plan, job.request, on_step)
        if job.stream:
            job.segments = codec.SegmentStream(model.compression_model, tokens.shape[-1], self.settings.stream_seconds)
        self._finish(job, model, tokens, None)  # MBD's noise continues the global stream, as audiocraft's does

    def _round_trip(self, job: Job, codec_model) -> None:
        job.run.emit(Started())
        job.generator = torch.Generator(self.device).manual_seed(job.request.seed)
        self._mbd(job)
        wav = codec.round_trip(codec_model, job.clip.to(self.device), job.mbd, job.generator)
        self._encode_later(job, wav[0], codec_model.sample_rate)

    def _finish(self, job: Job, model, tokens: torch.Tensor, generator: torch.Generator | None) -> None:
        """All tokens are there: the rest of the stream, the final decode, then the encode pool."""
        while job.segments is not None and job.segments.due(tokens.shape[-1]):
            job.run.emit(job.segments.decode_next(tokens, tokens.shape[-1]))
        self._room_to_decode(job.key, tokens.shape[-1] / model.frame_rate, model.audio_channels)
        with _autocast(self.device):
            wav = codec.decode(model, job.mbd, tokens, generator)  # [1, C, T]
        self._encode_later(job, wav[0], model.sample_rate)

    def _room_to_decode(self, model_version: str, seconds: float, streams: int) -> None:
        """The codec decodes a whole clip at once: past the one window every model keeps room for, make
        room by evicting idle models (if it still does not fit, out of memory fails this request alone)."""
        beyond = memory.codec_bytes(seconds, streams, self.dtype_bytes) - memory.codec_bytes(
            memory.WINDOW_S, streams, self.dtype_bytes
        )
        if beyond > 0:
            self._room_for(model_version, beyond)

    def _encode_later(self, job: Job, wav: torch.Tensor, sample_rate: int) -> None:
        self.encode_pool.submit(self._encode, job, wav.float().cpu(), sample_rate)

    def _encode(self, job: Job, wav: torch.Tensor, sample_rate: int) -> None:
        """In the encode pool: normalise, encode, hand over the file."""
        request = job.request
        try:
            if job.run.canceled.is_set():
                raise Cancelled()
            with torch.inference_mode():
                data = audio.encode(wav, sample_rate, request.output_format, request.normalization_strategy)
            event = Done(Result(data, request.output_format, request.seed, sample_rate, wav.shape[0], wav.shape[-1]))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's terminal event
            event = _failure(exc, job)
        self._end(job, event)

    # ---------------------------------------------------------------------------------- models

    def _wait_for_model(self, job: Job) -> None:
        """The job's model is not here: have it read (once) by the loader pool; the job waits."""
        model_version = job.key
        waiting = self.loading.setdefault(model_version, [])
        waiting.append(job)
        job.log(f"Loading model {model_version}...")
        if len(waiting) == 1 and model_version not in self.read:
            self.loader_pool.submit(self._read_in_pool, model_version)

    def _read_in_pool(self, model_version: str) -> None:
        """In the loader pool: the checkpoint into host memory, then back to the loop through its inbox."""
        try:
            self.inbox.put(_Read(model_version, host=self._read(model_version)))
        except Exception as exc:  # noqa: BLE001 - reported to the jobs waiting for the model
            self.inbox.put(_Read(model_version, error=exc))

    def _model_read(self, read: _Read) -> None:
        if read.error is not None:
            for job in self.loading.pop(read.model_version, []):
                self._end(job, _failure(read.error, job))
            return
        self.read[read.model_version] = read.host
        self._place(read.model_version)

    def _place_waiting_models(self) -> None:
        """Models read but not placed wait for busy models to finish: try again when that changed."""
        busy = self._busy()
        if self.read and busy != self._busy_before:
            for model_version in list(self.read):
                self._place(model_version)
        self._busy_before = busy

    def _place(self, model_version: str) -> None:
        """Build a read model on the device if the plan has room for it (making room by evicting idle
        models); else it waits for a busy one to finish, or, when nothing else holds the device, its
        jobs fail with what it needs."""
        jobs = [j for j in self.loading.get(model_version, []) if not j.run.canceled.is_set()]
        for job in self.loading.get(model_version, []):
            if job.run.canceled.is_set():
                self._end(job, Canceled())
        self.loading[model_version] = jobs
        if not jobs:
            self.read.pop(model_version, None)
            self.loading.pop(model_version, None)
            return
        try:
            placed = self._activate(model_version, self.read[model_version], jobs[0].log)
        except faults.DeviceLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the model could not be built: its jobs fail, the device goes on
            reach = faults.classify(exc, self.device)
            if reach == faults.FATAL:
                raise faults.DeviceLost(self.device, exc) from exc
            if reach == faults.OUT_OF_MEMORY:
                exc = self._out_of_memory(exc, f"loading {model_version}")
            placed = exc
        if placed is False:
            return  # waits for room
        self.read.pop(model_version, None)
        for job in self.loading.pop(model_version, []):
            if isinstance(placed, Exception):
                self._end(job, _failure(placed, job))
            else:
                self._guard(job, self._start, job, self.models[model_version].model)

    def _activate(self, model_version: str, host, say) -> bool | Exception:
        """Build, size, warm and check one model. False: not now (busy models hold the room it needs)."""
        dtype_bytes = self.dtype_bytes
        preset = registry.PRESETS[base_of(model_version)]
        lm = preset.lm
        estimate = _estimate(host, dtype_bytes, MELODY_PREFIX if preset.melody else 0)
        if estimate is not None and not self._room_for(model_version, estimate.total(1 if lm else 0)):
            return self._cannot_place(model_version, estimate)
        start = time.monotonic()
        before = _allocated(self.device)
        model = self._build(host, self.device)
        self.model_loads += 1
        weights = (
            _allocated(self.device) - before
            if self.device.startswith("cuda")
            else (
                memory.module_bytes(model.lm) + memory.module_bytes(model.compression_model)
                if lm
                else memory.module_bytes(model)
            )
        )
        if lm:
            fp = memory.footprint_of(model, weights, dtype_bytes, self._prefix(model))
        else:
            fp = memory.Footprint(weights, 0, 0, 1, 0, 0, 0, dtype_bytes, streams=2, cross=False)
        slots = self._slots_for(model_version, fp) if lm else 0
        if lm and slots == 0:
            del model
            faults.free_cached(self.device)
            return self._cannot_place(model_version, fp)
        say(f"Model {model_version} loaded in {time.monotonic() - start:.1f}s.")
        if lm and slots < self.settings.max_batch and self.settings.decoder == "fast":
            say(
                f"{model_version} decodes at most {slots} requests at once on {self.device}: that is what fits in "
                f"its memory plan (MUSICGEN_MAX_BATCH={self.settings.max_batch})."
            )
        batch = self._new_batch(model, slots) if lm else None
        if batch is not None:
            with _autocast(self.device):
                graphs = batch.warm_up()  # every (slots, cache length) bucket, before any slot is live
            if graphs:
                say(f"Captured {graphs} decode-step graphs for {model_version}.")
            batch = self._check(model_version, model, batch)
        self.models[model_version] = Resident(model, batch)
        self.plan.models[model_version] = memory.Resident(fp, slots)
        self._evict_beyond_count()
        return True

    def _check(self, model_version: str, model, batch: SlotBatch) -> SlotBatch | None:
        """The fast decoder against audiocraft's on this device and dtype; None (audiocraft's loop
        serves the model) when they disagree."""
        start = time.monotonic()
        with _autocast(self.device):
            verdict = selfcheck.compare(model, batch)
        took = time.monotonic() - start
        if verdict.ok:
            self.fast_decoder[model_version] = f"enabled ({verdict.summary}; checked in {took:.2f} s)"
            log.info("%s on %s: fast decoder agrees with audiocraft's: %s", model_version, self.device, verdict.summary)
            return batch
        self.fast_decoder[model_version] = f"disabled ({verdict.summary})"
        log.error(
            "!!! %s on %s: the fast decoder DISAGREES with audiocraft's reference (%s). This model is served "
            "by audiocraft's own loop instead (one request at a time). Please report it with this line.",
            model_version,
            self.device,
            verdict.summary,
        )
        return None

    def _cannot_place(self, model_version: str, fp: memory.Footprint) -> bool | Exception:
        """Wait (False) while a resident model is busy: its room comes back when it is idle. Models still
        loading hold no room, so they do not count."""
        if (self._busy() & set(self.models)) - {model_version}:
            return False
        return EngineError(self.plan.too_big(model_version, fp))

    def _room_for(self, model_version: str, needed: int) -> bool:
        """Evict idle models, least recently used first, until `needed` bytes are free."""
        while self.plan.free < needed:
            idle = [v for v in self.models if v not in self._busy() and v != model_version]
            if not idle:
                return False
            self._unload(idle[0], "to make room")
        return True

    def _slots_for(self, model_version: str, fp: memory.Footprint) -> int:
        """MUSICGEN_MAX_BATCH slots when they fit (evicting idle models for them), else as many as fit."""
        want = self.settings.max_batch if self.settings.decoder == "fast" else 1
        self._room_for(model_version, fp.total(want) - fp.weights)
        return fp.slots_within(self.plan.free + fp.weights, want)  # its weights are loaded, not yet in the plan

    def _busy(self) -> set[str]:
        return (
            {j.request.model_version for j in self.waiting}
            | {v for v, jobs in self.decoding.items() if jobs}
            | set(self.loading)
        )

    def _unload(self, model_version: str, why: str) -> None:
        del self.models[model_version]
        self.evictions += 1
        self.decoding.pop(model_version, None)
        self.plan.models.pop(model_version, None)
        self.fast_decoder.pop(model_version, None)
        log.info("evicted %s from %s %s", model_version, self.device, why)
        faults.free_cached(self.device)

    def _evict_beyond_count(self) -> None:
        """MUSICGEN_MAX_MODELS, when set, caps the count too (least recently used idle models go)."""
        busy = self._busy()
        while self.settings.max_models and len(self.models) > self.settings.max_models:
            idle = [v for v in self.models if v not in busy][:1]
            if not idle:
                return
            self._unload(idle[0], f"(MUSICGEN_MAX_MODELS={self.settings.max_models})")

    def _out_of_memory(self, exc: Exception, doing: str) -> EngineError:
        """After the allocator refused: free its cache and say what failed, readably. The device goes on."""
        self.out_of_memory += 1
        faults.free_cached(self.device)
        log.warning("out of memory on %s while %s: %s", self.device, doing, str(exc).splitlines()[0][:300])
        return EngineError(
            f"Out of memory on {self.device} while {doing}. The server goes on serving; try a "
            "shorter `duration`, fewer requests at once (MUSICGEN_MAX_BATCH), or fewer models on this "
            "device (MUSICGEN_DEVICE_MEMORY)."
        )

    def _prefix(self, model) -> int:
        return MELODY_PREFIX if "self_wav" in model.lm.condition_provider.conditioners else 0

    def _new_batch(self, model, slots: int) -> SlotBatch | None:
        reason = unsupported_reason(model.lm)
        if self.settings.decoder == "reference" or reason:
            if reason:
                log.info("%s decodes with audiocraft's loop: %s", model.name, reason)
                self.fast_decoder[model.name] = f"disabled ({reason})"
            return None
        return SlotBatch(
            model.lm,
            slots,
            int(model.max_duration * model.frame_rate),
            self._prefix(model),
            self.settings.step_mode,
            self.settings.cpu_products,
        )

    def _mbd(self, job: Job) -> None:
        if job.request.multi_band_diffusion:
            job.mbd = self.mbd.get()
            self.plan.shared.setdefault("mbd", self.mbd.bytes())

    def _warm_up(self) -> None:
        """Load the models MUSICGEN_WARMUP names (capturing their step graphs and checking their fast
        decoder) before saying ready. Nothing else runs yet, so they are read here."""
        for model_version in warmup_models(self.settings):
            with torch.inference_mode():
                try:
                    placed = self._activate(model_version, self._read(model_version), log.info)
                except Exception as exc:
                    if faults.classify(exc, self.device) == faults.FATAL:
                        raise faults.DeviceLost(self.device, exc) from exc
                    raise
            if placed is not True:
                log.error("warm-up: %s", placed if isinstance(placed, Exception) else f"{model_version} does not fit")

    # ---------------------------------------------------------------------------------- training

    def _train(self) -> None:
        """One unit of the first training (see training_job): its base read first, by the loader pool."""
        if not self.trainings:
            return
        job = self.trainings[0]
        if job.work is None:
            if job.run.canceled.is_set():
                self._training_ended(job, Canceled())
            elif not job.reading:
                job.reading = True
                job.log(f"Loading {job.params.model_version} for training...")
                self.loader_pool.submit(self._read_for_training, job)
            return
        try:
            ended = training_job.advance(job)
        except Exception as exc:  # noqa: BLE001 - the training fails alone; predictions go on
            reach = faults.classify(exc, self.device)
            if reach == faults.FATAL:
                raise faults.DeviceLost(self.device, exc) from exc
            if reach == faults.OUT_OF_MEMORY:
                exc = self._out_of_memory(exc, f"training {job.params.model_version} at batch {job.params.batch_size}")
            else:
                log.exception("training on %s failed", self.device)
            self._training_ended(job, _failure(exc, job))
            return
        if ended:
            self._training_ended(job, None)

    def _read_for_training(self, job: training_job.TrainJob) -> None:
        try:
            self.inbox.put(training_job.TrainRead(job, host=self._read(job.params.model_version)))
        except Exception as exc:  # noqa: BLE001 - reported to the training
            self.inbox.put(training_job.TrainRead(job, error=exc))

    def _training_read(self, read: training_job.TrainRead) -> None:
        """Build the trainer's own copy of the model (outside inference mode: it is trained)."""
        job = read.job
        if job not in self.trainings:  # canceled while its checkpoint was read
            return
        try:
            if read.error is not None:
                raise read.error
            if torch.device(self.device).type == "cuda":  # room for it: idle models go first
                for model_version in [v for v in self.models if v not in self._busy()]:
                    self._unload(model_version, "(room for a training)")
            with torch.inference_mode(False):
                model = self._build(read.host, self.device)
                training_job.start_trainer(job, model, self.device, read.host)
        except Exception as exc:  # noqa: BLE001 - the training fails alone
            reach = faults.classify(exc, self.device)
            if reach == faults.FATAL:
                raise faults.DeviceLost(self.device, exc) from exc
            if reach == faults.OUT_OF_MEMORY:
                exc = self._out_of_memory(exc, f"loading {job.params.model_version} for training")
            self._training_ended(job, _failure(exc, job))

    def _training_ended(self, job: training_job.TrainJob, event) -> None:
        if job in self.trainings:
            self.trainings.remove(job)
        job.trainer = job.work = None
        faults.free_cached(self.device)
        if event is None:  # advance() emitted the terminal event itself
            with self._count:
                self.jobs -= 1
        else:
            self._end(job, event)

    # ---------------------------------------------------------------------------------- endings

    def _guard(self, job: Job, fn, *args) -> None:
        """Run one stage of a job; whatever it raises ends that job alone, with a readable message,
        unless the device itself failed (then everything here ends: DeviceLost)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's terminal event
            reach = faults.classify(exc, self.device)
            if reach == faults.FATAL:
                raise faults.DeviceLost(self.device, exc, job) from exc
            if reach == faults.OUT_OF_MEMORY:
                exc = self._out_of_memory(exc, f"generating this {job.request.duration} s request")
            batch = self.models.get(job.key)
            if batch is not None and batch.batch is not None and job.slot is not None:
                self._release(job, batch.batch)
            if job in self.waiting:
                self.waiting.remove(job)
            self._end(job, _failure(exc, job))

    def _end(self, job: Job, event) -> None:
        if job.run.emit(event):
            with self._count:
                self.jobs -= 1


def warmup_models(settings: Settings) -> list[str]:
    """The models MUSICGEN_WARMUP names, among those whose weights are on disk."""
    lm_versions = list(registry.LM_VERSIONS)
    choice = settings.warmup.strip()
    names = {"none": [], "": [], "default": lm_versions[:1], "all": lm_versions}.get(
        choice, [v.strip() for v in choice.split(",") if v.strip()]
    )
    return [v for v in names if v in registry.PRESETS and not W.missing(settings.weights_dir, W.required_files(v))]


def _not_started(device: str, message: str) -> Failed:
    """A job that never started on a lost device: a server keeps its prediction queued for the restart."""
    return Failed(message, kind="device")


def _estimate(host, dtype_bytes: int, prefix: int) -> memory.Footprint | None:
    """The footprint a read checkpoint will have on the device, before building it (None: unknown)."""
    estimate = getattr(host, "footprint", None)
    return estimate(dtype_bytes, prefix) if callable(estimate) else None


def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated(torch.device(device)) if device.startswith("cuda") else 0


def _failure(exc: Exception, job: Job):
    if not isinstance(exc, MusicgenError):
        log.error("request %s failed", job.request, exc_info=exc)
    return failure(exc)


def _autocast(device: str):
    """What `MusicGen.autocast` does (float16 autocast off the CPU), as a fresh context."""
    if torch.device(device).type == "cpu":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(torch.device(device).type, dtype=torch.float16)
