"""The device loop: the one thread that owns a device, its models, their caches and every generator.

Each turn it takes the prepared requests that arrived, admits waiting windows into free slots of
their model's batch (conditions, prefill, first token), runs one decode step for every model that
has live slots (all models in turn, so none starves another), reports progress and streams audio
as frames become final, and retires finished windows: the next window of the request, or the codec
and then the encode pool. Other threads only ever hand it jobs and read its events.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from .. import audio
from .. import weights as W
from ..errors import Cancelled, MusicgenError
from ..settings import Settings
from . import codec, reference
from .api import Canceled, Done, Log, Progress, Request, Result, Started, failure
from .fast import SamplingParams, SlotBatch, Window, unsupported_reason
from .plan import Plan, plan_request
from .run import LocalRun

log = logging.getLogger(__name__)
CODEC_KEY = "encode-decode"
MELODY_PREFIX = 300  # cache positions kept for a melody model's prepended chroma (235) and prompt tokens


@dataclass(eq=False)
class Job:
    """One request inside the engine, from its preparation to its file."""

    request: Request  # its seed is fixed (Request.with_seed)
    run: LocalRun
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

    def log(self, line: str) -> None:
        self.run.emit(Log(line))


@dataclass
class Resident:
    model: Any  # audiocraft MusicGen, or the EnCodec of encode-decode
    batch: SlotBatch | None  # the fast decoder's slots for this LM


class DeviceLoop:
    def __init__(self, device: str, settings: Settings, encode_pool: Executor, load, mbd) -> None:
        self.device, self.settings, self.encode_pool = device, settings, encode_pool
        self._load, self.mbd = load, mbd  # load(model_version, device) -> model; mbd: LazyMbd
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.models: OrderedDict[str, Resident] = OrderedDict()
        self.model_loads = 0
        self.waiting: list[Job] = []  # windows waiting for a slot, oldest first (a next window goes first)
        self.decoding: dict[str, dict[int, Job]] = {}  # model_version -> slot -> job
        self.ready = threading.Event()
        self.jobs = 0  # routed here and not ended: how loaded this device is
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"device-loop-{device}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- other threads

    def put(self, job: Job) -> None:
        with self._count:
            self.jobs += 1
        self.inbox.put(job)

    def stop(self) -> None:
        self.inbox.put(None)
        self._thread.join(timeout=30)

    def health(self) -> dict[str, Any]:
        return {"device": self.device, "ready": self.ready.is_set(), "resident_models": list(self.models),
                "model_loads": self.model_loads, "mbd_loads": self.mbd.loads, "jobs": self.jobs,
                "decoding": sum(len(jobs) for jobs in self.decoding.values())}

    # ---------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._warm_up()
        except Exception:  # noqa: BLE001 - a model that cannot warm up still serves the others, logged
            log.exception("warm-up failed on %s", self.device)
        finally:
            self.ready.set()
        with torch.inference_mode():
            while self._receive(block=not self.waiting and not any(self.decoding.values())):
                try:
                    self._admit()
                    self._step()
                except Exception as exc:  # noqa: BLE001 - a bug or a device error: end what was running, go on
                    log.exception("device loop %s: step failed", self.device)
                    self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        for job in [*self.waiting, *(j for jobs in self.decoding.values() for j in jobs.values())]:
            self._end(job, _failure(exc, job))
        self.waiting.clear()
        for model_version, jobs in self.decoding.items():
            for slot in jobs:
                self.models[model_version].batch.release(slot)
            jobs.clear()

    def _receive(self, block: bool) -> bool:
        """Take the jobs that arrived (waiting for one when idle); False when told to stop."""
        while True:
            try:
                job = self.inbox.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            block = False
            self._guard(job, self._arrive, job)

    def _arrive(self, job: Job) -> None:
        if job.run.canceled.is_set():
            raise Cancelled()
        model = self._model(job.request.model_version, job)
        if job.request.model_version == CODEC_KEY:
            return self._round_trip(job, model)
        if self.settings.decoder == "reference" or self.models[job.request.model_version].batch is None:
            return self._reference(job, model)
        job.generator = torch.Generator(self.device).manual_seed(job.request.seed)
        job.plan = plan_request(model, job.request, job.clip, random.Random(job.request.seed))
        self._mbd(job)
        job.prompt = job.plan.prompt_tokens
        job.codes = job.prompt if job.prompt is not None else torch.zeros(
            (1, model.lm.num_codebooks, 0), dtype=torch.long, device=model.device)
        if job.stream:
            job.segments = codec.SegmentStream(model.compression_model, int(job.request.duration * model.frame_rate),
                                               self.settings.stream_seconds)
        self.waiting.append(job)

    def _admit(self) -> None:
        for job in list(self.waiting):
            if job.run.canceled.is_set():
                self.waiting.remove(job)
                self._end(job, Canceled())
                continue
            batch = self.models[job.request.model_version].batch
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
        params = SamplingParams(request.temperature, request.top_k, request.top_p,
                                float(request.classifier_free_guidance))
        window = Window(plan.window_conditions(job.window), job.prompt, plan.windows[job.window][2], params,
                        job.generator)
        with _autocast(self.device):
            job.slot = batch.admit(window)
        self.decoding.setdefault(request.model_version, {})[job.slot] = job
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
            except Exception as exc:  # noqa: BLE001 - e.g. out of device memory: this batch's requests fail
                log.exception("device loop %s: %s step failed", self.device, model_version)
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
        prompt_frames = plan.windows[job.window][1]
        if job.segments is not None:
            final = job.codes.shape[-1] + max(0, batch.final_frames(slot) - prompt_frames)
            while job.segments.due(final):
                window_codes = batch.codes(slot, prompt_frames + final - job.codes.shape[-1])[..., prompt_frames:]
                job.run.emit(job.segments.emit(torch.cat([job.codes, window_codes], dim=-1), final))
        if not batch.done(slot):
            return
        codes = batch.codes(slot)  # [1, K, frames]
        self._release(job, batch)
        _, p, gen = plan.windows[job.window]
        job.codes = torch.cat([job.codes, codes[..., p:]], dim=-1)
        job.steps_before += gen - p + plan.max_delay
        job.prompt = codes[..., plan.stride:]
        job.window += 1
        if job.window < len(plan.windows):
            self.waiting.insert(0, job)
        else:
            self._finish(job, plan.model, job.codes, job.generator)

    def _release(self, job: Job, batch: SlotBatch) -> None:
        if job.slot is not None:
            batch.release(job.slot)
            del self.decoding[job.request.model_version][job.slot]
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
            job.run.emit(job.segments.emit(tokens, tokens.shape[-1]))
        with _autocast(self.device):
            wav = codec.decode(model, job.mbd, tokens, generator)  # [1, C, T]
        self._encode_later(job, wav[0], model.sample_rate)

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

    def _model(self, model_version: str, job: Job | None = None):
        """The resident model, loaded on first use; beyond MUSICGEN_MAX_MODELS the least recently used
        model that no request is using is dropped, and its device memory returned."""
        if model_version in self.models:
            self.models.move_to_end(model_version)
            return self.models[model_version].model
        say = job.log if job is not None else log.info
        say(f"Loading model {model_version}...")
        start = time.monotonic()
        model = self._load(model_version, self.device)
        self.model_loads += 1
        say(f"Model {model_version} loaded in {time.monotonic() - start:.1f}s.")
        batch = self._new_batch(model) if W.PRESETS[model_version].lm else None
        if batch is not None:
            with _autocast(self.device):
                graphs = batch.warm_up()  # every (slots, cache length) bucket, before any slot is live
            if graphs:
                say(f"Captured {graphs} decode-step graphs for {model_version}.")
        self.models[model_version] = Resident(model, batch)
        self._evict()
        return model

    def _new_batch(self, model) -> SlotBatch | None:
        reason = unsupported_reason(model.lm)
        if self.settings.decoder == "reference" or reason:
            if reason:
                log.info("%s decodes with audiocraft's loop: %s", model.name, reason)
            return None
        prefix = MELODY_PREFIX if "self_wav" in model.lm.condition_provider.conditioners else 0
        return SlotBatch(model.lm, self.settings.max_batch, int(model.max_duration * model.frame_rate), prefix,
                         self.settings.step_mode, self.settings.cpu_products)

    def _evict(self) -> None:
        busy = {j.request.model_version for j in self.waiting} | {v for v, jobs in self.decoding.items() if jobs}
        while self.settings.max_models and len(self.models) > self.settings.max_models:
            idle = [v for v in self.models if v not in busy][:1]
            if not idle:
                return
            del self.models[idle[0]]
            self.decoding.pop(idle[0], None)
            log.info("evicted %s from %s", idle[0], self.device)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _mbd(self, job: Job) -> None:
        if job.request.multi_band_diffusion:
            job.mbd = self.mbd.get()

    def _warm_up(self) -> None:
        """Load the models MUSICGEN_WARMUP names (capturing their step graphs) before saying ready."""
        for model_version in warmup_models(self.settings):
            with torch.inference_mode():
                self._model(model_version)

    # ---------------------------------------------------------------------------------- endings

    def _guard(self, job: Job, fn, *args) -> None:
        """Run one stage of a job; whatever it raises ends that job alone, with a readable message."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's terminal event
            batch = self.models.get(job.request.model_version)
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
    lm_versions = [v for v, p in W.PRESETS.items() if p.lm]
    choice = settings.warmup.strip()
    names = {"none": [], "": [], "default": lm_versions[:1], "all": lm_versions}.get(
        choice, [v.strip() for v in choice.split(",") if v.strip()])
    return [v for v in names if v in W.PRESETS and not W.missing(settings.weights_dir, W.required_files(v))]


def _failure(exc: Exception, job: Job):
    if not isinstance(exc, MusicgenError):
        log.error("request %s failed", job.request, exc_info=exc)
    return failure(exc)


def _autocast(device: str):
    """What `MusicGen.autocast` does (float16 autocast off the CPU), as a fresh context."""
    if torch.device(device).type == "cpu":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(torch.device(device).type, dtype=torch.float16)
