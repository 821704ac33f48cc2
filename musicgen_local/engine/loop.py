"""The device loop: the one thread that owns a device, its models, their caches and every generator.

A turn: take what arrived (requests, read checkpoints, trainings); apply what model residency answers (a model
placed: its requests start; refused: they fail); admit waiting windows into free slots of their model's batch
(conditions, prefill, first token); run one decode step for every model with live slots (all models in turn, so
none starves another), reporting progress and streaming audio as frames become final; retire finished windows (the
request's next window, or the codec and then the encode pool); give a training its share. Other threads only ever
hand it work and read its events.

Which models are here, being read, or may be evicted is `Residency`'s business (`residency.py`); trainings are
`Trainings`' (`training_job.py`); how far a failure reaches is `faults.py`'s: a request's error ends that request;
running out of memory frees the cache and ends what needed the memory; a fatal device error ends every job here
(those not started yet end `Failed(kind="device")`, so that a server keeps them queued for its next start), marks
the device lost and tells the engine, whose owner exits.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from concurrent.futures import Executor
from typing import Any

import torch

from .. import audio, registry
from .. import weights as W
from ..errors import Cancelled, EngineError, MusicgenError
from ..settings import Settings
from . import codec, faults, reference
from .api import Canceled, Done, Event, Failed, Progress, Result, Started, failure
from .fast import SamplingParams, SlotBatch, Window
from .job import Job
from .plan import plan_request
from .residency import ModelKey, ModelRead, Outcome, Pin, Placed, Residency, Resident, Unpin, autocast
from .training_job import Trainings, TrainJob, TrainRead

log = logging.getLogger(__name__)
CODEC_KEY = ModelKey(registry.ENCODE_DECODE)


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
        """read(ModelKey) -> host copy (the loader pool); build(host copy, device) -> model (here);
        on_lost(device, message): called once if the device fails for good."""
        self.device, self.settings, self.encode_pool, self.mbd, self._on_lost = (
            device,
            settings,
            encode_pool,
            mbd,
            on_lost,
        )
        self.inbox: queue.SimpleQueue[Job | TrainJob | ModelRead | TrainRead | Pin | Unpin | None] = queue.SimpleQueue()
        self.faults = faults.Containment(device)
        self.residency = Residency(
            device, settings, read, build, loader_pool, self.inbox.put, self.faults, _still_wanted
        )
        self.trainings = Trainings(
            device, settings.training_share, self.residency, read, build, loader_pool, self.inbox.put, self._end
        )
        self.decoded: dict[ModelKey, list[int]] = {}  # [decode steps, frames (rows x steps; one token per codebook)]
        self.waiting: list[Job] = []  # windows waiting for a slot, oldest first (a next window goes first)
        self.decoding: dict[ModelKey, dict[int, Job]] = {}  # model -> slot -> job
        self.lost: str | None = None  # why the device can serve nothing more
        self.ready = threading.Event()
        self.jobs = 0  # routed here and not ended: how loaded this device is
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"device-loop-{device}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- other threads

    def put(self, job: Job | TrainJob) -> None:
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

    def holds(self, key: ModelKey) -> bool:
        return key in self.residency.models

    def health(self) -> dict[str, Any]:
        status = "UNHEALTHY" if self.lost else "READY" if self.ready.is_set() else "STARTING"
        models = self.residency.models
        out = {
            "device": self.device,
            "status": status,
            "ready": self.ready.is_set(),
            **self.residency.health(),
            "mbd_loads": self.mbd.loads,
            "jobs": self.jobs,
            "decoding": sum(len(jobs) for jobs in self.decoding.values()),
            "out_of_memory_errors": self.faults.out_of_memory,
            "trainings": len(self.trainings),
            "decoded": {str(key): {"steps": s, "frames": f} for key, (s, f) in list(self.decoded.items())},
            "batches": {
                str(key): {
                    "rows_in_use": len(self.decoding.get(key) or ()),
                    "rows_allocated": len(getattr(resident.batch, "slots", ()) or ()),
                }
                for key, resident in list(models.items())
            },
        }
        if self.device.startswith("cuda") and not self.lost:
            out["memory_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
        if self.lost:
            out["error"] = self.lost
        return out

    # ---------------------------------------------------------------------------------- the turn

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self.residency.warm_up([ModelKey(v) for v in warmup_models(self.settings)])
        except faults.DeviceLost as lost:
            self._lose(lost)
        except Exception:  # noqa: BLE001 - a model that cannot warm up still serves the others, logged
            log.exception("warm-up failed on %s", self.device)
        finally:
            self.ready.set()
        with torch.inference_mode():
            while not self.lost:
                try:
                    if not self._turn():
                        break
                except faults.DeviceLost as lost:
                    self._lose(lost)
        self._refuse_forever()

    def _turn(self) -> bool:
        """One turn; False when told to stop."""
        try:
            if not self._receive(block=self._idle()):
                return False
            self._apply(self.residency.retry())
            self._admit()
            self._step()
            self.trainings.turn(predictions_busy=bool(self.waiting or any(self.decoding.values())))
        except faults.DeviceLost:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: end what was running, go on
            exc = self.faults.contain(exc, "decoding")
            log.exception("device loop %s: a turn failed", self.device)
            self._fail_all(exc)
        return True

    def _idle(self) -> bool:
        """Nothing to do until something arrives: no window waits or decodes, no read model can be placed now
        that could not be before, no training has a unit to run."""
        busy = self.waiting or any(self.decoding.values()) or self.residency.placeable() or self.trainings.ready
        return not busy

    def _receive(self, block: bool) -> bool:
        """Take what arrived (waiting for something when idle); False when told to stop."""
        while True:
            try:
                item = self.inbox.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            block = False
            if isinstance(item, ModelRead):
                self._apply(self.residency.read_done(item))
            elif isinstance(item, TrainJob):
                self.trainings.add(item)
            elif isinstance(item, TrainRead):
                self.trainings.read_done(item)
            elif isinstance(item, Pin | Unpin):  # a deployment's: its model kept resident here, or let go
                self.residency.keep(item)
            else:
                self._guard(item, self._arrive, item)

    def _arrive(self, job: Job) -> None:
        if job.run.canceled.is_set():
            raise Cancelled()
        self.residency.hold(job.key)
        job.held = True
        resident = self.residency.want(job.key, job)
        if resident is None:
            job.log(f"Loading model {job.key}...")
        else:
            self._start(job, resident)

    def _apply(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.residency.answer_pins(outcome)  # deployments' pins among the waiters
            if isinstance(outcome, Placed):
                for note in outcome.notes if outcome.waiters else ():
                    outcome.waiters[0].log(note)
                for job in outcome.waiters:
                    self._guard(job, self._start, job, outcome.resident)
            else:
                for job in outcome.waiters:
                    self._end(job, outcome.error)

    def _start(self, job: Job, resident: Resident) -> None:
        """A job whose model is resident: the codec round trip, audiocraft's loop, or a slot's wait."""
        if job.run.canceled.is_set():
            raise Cancelled()
        model = resident.model
        if job.key == CODEC_KEY:
            return self._round_trip(job, model)
        if self.settings.decoder == "reference" or resident.batch is None:
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
            batch = self.residency.models[job.key].batch  # held: never evicted while the job lives
            if batch.has_room(job.lora):  # a slot, and one for its adapter (else it waits)
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
        with autocast(self.device):
            job.slot = batch.admit(window)
        self.decoding.setdefault(job.key, {})[job.slot] = job
        if not job.started:
            job.started = True
            job.run.emit(Started())
        self._after_step(job, batch)

    def _step(self) -> None:
        for key, jobs in list(self.decoding.items()):
            if not jobs:
                continue
            batch = self.residency.models[key].batch
            try:
                with autocast(self.device):
                    batch.step()
            except Exception as exc:  # noqa: BLE001 - e.g. out of device memory: this batch's requests fail
                exc = self.faults.contain(exc, f"decoding a batch of {len(jobs)} {key} requests")
                log.error("device loop %s: %s step failed", self.device, key, exc_info=exc)
                for job in list(jobs.values()):
                    self._release(job, batch)
                    self._end(job, exc)
                continue
            counts = self.decoded.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += len(jobs)
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
            tokens = reference.generate_tokens(plan, job.request, on_step)
        else:
            from ..training.lora import applied

            with applied(model.lm, job.lora.tensors, job.lora.scale):
                tokens = reference.generate_tokens(plan, job.request, on_step)
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
        self.residency.room_to_decode(job.key, tokens.shape[-1] / model.frame_rate, model.audio_channels)
        with autocast(self.device):
            wav = codec.to_wav(model, job.mbd, tokens, generator)  # [1, C, T]
        self._encode_later(job, wav[0], model.sample_rate)

    def _mbd(self, job: Job) -> None:
        if job.request.multi_band_diffusion:
            job.mbd = self.mbd.get()
            self.residency.memory.shared.setdefault("mbd", self.mbd.bytes())

    def _encode_later(self, job: Job, wav: torch.Tensor, sample_rate: int) -> None:
        self._let_go(job)  # the device is done with it
        self.encode_pool.submit(self._encode, job, wav.float().cpu(), sample_rate)

    def _encode(self, job: Job, wav: torch.Tensor, sample_rate: int) -> None:
        """In the encode pool: normalise, encode, hand over the file."""
        request = job.request
        try:
            if job.run.canceled.is_set():
                raise Cancelled()
            if request.raw:  # the samples as decoded, for the engine's own use
                data, fmt = wav.numpy().astype("float32").tobytes(), "f32"
            else:
                with torch.inference_mode():
                    data = audio.encode(wav, sample_rate, request.output_format, request.normalization_strategy)
                fmt = request.output_format
            event = Done(Result(data, fmt, request.seed, sample_rate, wav.shape[0], wav.shape[-1]))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's terminal event
            event = exc
        self._end(job, event)

    # ---------------------------------------------------------------------------------- endings

    def _guard(self, job: Job, fn, *args) -> None:
        """Run one stage of a job; whatever it raises ends that job alone, with a readable message, unless the
        device itself failed (then everything here ends: DeviceLost)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's terminal event
            exc = self.faults.contain(exc, f"generating this {job.request.duration} s request", job)
            resident = self.residency.models.get(job.key)
            if resident is not None and resident.batch is not None and job.slot is not None:
                self._release(job, resident.batch)
            if job in self.waiting:
                self.waiting.remove(job)
            self._end(job, exc)

    def _end(self, job: Job | TrainJob, event: Event | Exception) -> None:
        """The job's terminal event (an exception becomes its failure); the model it held is let go."""
        if isinstance(event, Exception):
            event = _failure(event, job)
        self._let_go(job)
        if job.run.emit(event):
            with self._count:
                self.jobs -= 1

    def _let_go(self, job: Job | TrainJob) -> None:
        if isinstance(job, Job) and job.held:  # only ever True on the loop's own thread
            job.held = False
            self.residency.release(job.key)

    def _fail_all(self, exc: Exception) -> None:
        for job in [*self.waiting, *(j for jobs in self.decoding.values() for j in jobs.values())]:
            self._end(job, exc)
        for training in self.trainings.take_all():
            self._end(training, exc)
        self.waiting.clear()
        for key, jobs in self.decoding.items():
            for slot in jobs:
                self.residency.models[key].batch.release(slot)
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
            *self.residency.waiters(message),
            *([lost.job] if lost.job else []),
        ]
        for job in held:
            self._end(job, Failed(message, kind="internal") if job.started else _not_started(self.device, message))
        for training in self.trainings.take_all():  # a training resumes from its checkpoint
            self._end(training, _not_started(self.device, message))
        self.waiting.clear()
        self.decoding.clear()
        if self._on_lost is not None:
            self._on_lost(self.device, message)

    def _refuse_forever(self) -> None:
        """After a lost device: whatever still arrives ends at once, until the loop is stopped."""
        while self.lost:
            item = self.inbox.get()
            if item is None:
                return
            if isinstance(item, Job | TrainJob):
                self._end(item, _not_started(self.device, self.lost))
            elif isinstance(item, Pin):
                self.residency.pin_refused(item, EngineError(self.lost))


def warmup_models(settings: Settings) -> list[str]:
    """The models MUSICGEN_WARMUP names, among those whose weights are on disk."""
    lm_versions = list(registry.LM_VERSIONS)
    choice = settings.warmup.strip()
    names = {"none": [], "": [], "default": lm_versions[:1], "all": lm_versions}.get(
        choice, [v.strip() for v in choice.split(",") if v.strip()]
    )
    return [v for v in names if v in registry.PRESETS and not W.missing(settings.weights_dir, W.required_files(v))]


def _still_wanted(job: Job | Pin) -> bool:
    return isinstance(job, Pin) or not job.run.canceled.is_set()


def _not_started(device: str, message: str) -> Failed:
    """A job that never started on a lost device: a server keeps its prediction queued for the restart."""
    return Failed(message, kind="device")


def _failure(exc: Exception, job: Job | TrainJob):
    if not isinstance(exc, MusicgenError):
        log.error("%s failed", getattr(job, "request", job), exc_info=exc)
    return failure(exc)
