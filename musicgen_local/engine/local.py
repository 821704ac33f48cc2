"""`LocalEngine`: the engine in this process. Prepare, download and decode pools, a loader pool, one
device loop per device, an encode pool.

submit() checks the request and returns its Run at once. The prepare pool then makes sure the
weights are there (fetching them when allowed); a request with input audio is prepared instead by the
download pool (many threads waiting on other servers), then decoded within its limits by the small
decode pool, so no download ever holds up a text-only request. The request goes to the device that
already holds its model, else to the least loaded one. A model the
device does not hold is read from disk by the loader pool while that device's loop goes on
decoding; the loop builds it on the device, generates, and hands the waveform to the encode pool.

What still runs on a device loop besides decoding is device work that has to be there: moving a
read model onto the device, capturing its step graphs, its self-check, MultiBand Diffusion's first
build, and a request's conditioning (T5, htdemucs) and codec decode. A request decoded by
audiocraft's own loop (MUSICGEN_DECODER=reference, or a model whose fast decoder failed its
self-check) holds the loop for its whole generation.

`train()` prepares a dataset in the training pool, then hands the training to the device loop with
the fewest trainings, which runs it between decode steps (see `training_job`).

`keep()` keeps a deployment's model resident on one device (a `Pin` its loop's residency holds until `let_go`).

When a device fails for good (`faults.py`), health says UNHEALTHY and `lost` is set, so that
whoever runs the engine can exit and be restarted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from .. import inputs, registry
from ..errors import Cancelled, MusicgenError, UserError
from ..schema import check_semantics
from ..settings import Settings
from .api import Failed, Log, LoopRequest, Request, Started, TrainingRequest, failure
from .fine_tunes import FineTunes
from .job import Job
from .loop import DeviceLoop
from .looping import AudioOf, LoopDriver
from .mbd import LazyMbd
from .models import build_model, device_name, read_checkpoint, resolve_devices, weights_check
from .residency import ModelKey, Pin, Unpin
from .run import EventQueue
from .training_job import TrainJob

log = logging.getLogger(__name__)
PREPARE_WORKERS = 4  # requests having their weights checked at once (text-only ones go straight on from here)
# input_audio downloads at once: threads that wait on other servers. Past it, inputs queue behind inputs; a
# request without input_audio never waits for a download (it is prepared in the prepare pool).
DOWNLOAD_WORKERS = 32
DECODE_WORKERS = 2  # inputs decoded at once: CPU, and up to MUSICGEN_MAX_INPUT_SAMPLES floats each
LOADER_WORKERS = 1  # checkpoints read at once: one disk, and each is gigabytes of host memory
ENCODE_WORKERS = 2  # ffmpeg processes at once


class LocalEngine:
    def __init__(
        self, settings: Settings, load: Callable[[str, str], Any] | None = None, loop_audio: AudioOf | None = None
    ) -> None:
        """load(model_version, device) -> model: how the device loops load models (default: read from
        MUSICGEN_WEIGHTS by the loader pool, built by the loop; the GPU check builds random full-size
        ones, all of it on the loop). loop_audio: the looper's test seam (see looping.py)."""
        self.settings = settings
        self.scratch = Path(settings.data_dir) / "scratch"  # downloads in progress: a crash leaves them here
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.limits = inputs.Limits(
            settings.input_timeout,
            settings.max_input_bytes,
            settings.max_duration,
            max_samples=settings.max_input_samples,
            check_url=inputs.input_url_check(settings.block_private_urls),
        )
        self.prepare_pool = ThreadPoolExecutor(PREPARE_WORKERS, thread_name_prefix="prepare")
        self.download_pool = ThreadPoolExecutor(DOWNLOAD_WORKERS, thread_name_prefix="download")
        self.decode_pool = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="decode")
        self.loader_pool = ThreadPoolExecutor(LOADER_WORKERS, thread_name_prefix="loader")
        self.encode_pool = ThreadPoolExecutor(ENCODE_WORKERS, thread_name_prefix="encode")
        # Deployments' pins and their ends, one at a time: a let_go never overtakes the keep before it.
        self.pin_pool = ThreadPoolExecutor(1, thread_name_prefix="pins")
        devices = resolve_devices(settings.devices)
        self.training_capacity = len(devices)  # trainings worth having at once: one per device
        # Datasets are fetched, decoded and cut here: minutes of work that must not hold the prepare pool.
        self.training_pool = ThreadPoolExecutor(self.training_capacity, thread_name_prefix="training")
        self.lost = threading.Event()  # a device failed for good: the process should exit (see `faults`)
        if load is None:
            read, build = partial(read_checkpoint, settings), partial(build_model, settings)
        else:
            read, build = _as_is, load
        self.loops = [
            DeviceLoop(
                device,
                settings,
                self.encode_pool,
                self.loader_pool,
                read,
                build,
                LazyMbd(settings.weights_dir, device),
                self._device_lost,
            )
            for device in devices
        ]
        self._weights_found: set[tuple[str, bool]] = set()
        self.fine_tunes = FineTunes(settings)  # the host tier of fine-tunes
        self._own_loader = load is not None
        per_loop = settings.max_batch if settings.decoder == "fast" else 1
        self.capacity = 2 * per_loop * len(self.loops)  # runs worth having in flight: a batch, and one being prepared
        # Each loop request waits here for its variations, then cuts them (seconds of CPU): never on a device loop.
        self.looper_pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="looper")
        self._loops = LoopDriver(self.submit, loop_audio)

    def submit(self, request: Request | LoopRequest, *, stream: bool = False) -> EventQueue:
        request = request.with_seed()
        run = EventQueue()
        if isinstance(request, LoopRequest):
            self.looper_pool.submit(self._loops.drive, request, run)
            return run
        try:
            check_semantics(request, self.settings.max_duration)
        except UserError as exc:
            run.emit(Failed(str(exc)))
            return run
        run.emit(Log(f"Using seed {request.seed}"))
        job = Job(request, run, stream)
        if request.input_audio:
            self.download_pool.submit(self._download, job)
        else:
            self.prepare_pool.submit(self._prepare, job)
        return run

    def _prepare(self, job: Job) -> None:
        with self._failing(job):
            self._weights_and_tune(job)
            self._route(job.key).put(job)

    def _download(self, job: Job) -> None:
        """input_audio onto the scratch disk, then into the decode pool."""
        with self._failing(job):
            self._weights_and_tune(job)
            work_dir = Path(tempfile.mkdtemp(dir=self.scratch))
            try:
                path = inputs.fetch(job.request.input_audio, work_dir, self.limits, job.run.canceled)
                self.decode_pool.submit(self._decode, job, path, work_dir)
            except BaseException:
                shutil.rmtree(work_dir, ignore_errors=True)
                raise

    def _decode(self, job: Job, path: Path, work_dir: Path) -> None:
        with self._failing(job):
            try:
                if job.run.canceled.is_set():
                    raise Cancelled()
                clip = inputs.read_clip(
                    job.request, path, registry.PRESETS[job.request.model_version].channels, self.limits
                )
            finally:
                shutil.rmtree(work_dir, ignore_errors=True)
            job.clip = clip.wav
            for note in clip.notes:
                job.log(note)
            self._route(job.key).put(job)

    @contextmanager
    def _failing(self, job: Job) -> Iterator[None]:
        """Every failure while preparing becomes the run's terminal event."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, MusicgenError):  # ours say what to do in the run's own message
                log.warning("preparing a %s request failed: %s", job.request.model_version, exc, exc_info=exc)
            job.run.emit(failure(exc))

    def _weights_and_tune(self, job: Job) -> None:
        if job.run.canceled.is_set():
            raise Cancelled()
        if job.request.weights:
            self.fine_tunes.apply(job)
        self._weights_there(job.request, job)

    def train(self, request: TrainingRequest) -> EventQueue:
        run = EventQueue()
        self.training_pool.submit(self._prepare_training, request, run)
        return run

    def _prepare_training(self, request: TrainingRequest, run: EventQueue) -> None:
        """The dataset into pieces (resumed trainings find them already cut), then onto a device loop."""
        from ..training import dataset

        try:
            if run.canceled.is_set():
                raise Cancelled()
            params = request.params
            run.emit(Started())
            say = lambda line: run.emit(Log(line))  # noqa: E731
            weights_check(self.settings, params.model_version, False, say)
            if params.drop_vocals:
                _htdemucs_there(self.settings, say)
            work = Path(request.work_dir)
            pieces = dataset.prepare_once(
                request.dataset,
                work / "dataset",
                params,
                registry.PRESETS[params.model_version].channels,
                dataset.limits_from(self.settings),
                run.canceled,
                say,
            )
            min(self.loops, key=lambda loop: (len(loop.trainings), loop.jobs)).put(TrainJob(request, run, pieces))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the run's terminal event
            if not isinstance(exc, UserError | Cancelled):
                log.warning("preparing a training failed: %s", exc, exc_info=exc)
            run.emit(failure(exc))

    def _weights_there(self, request: Request, job: Job) -> None:
        """Check (or fetch) a model's files the first time a request names it; once found, they stay."""
        key = (job.key, request.multi_band_diffusion)
        if self._own_loader:  # the loader given to the engine brings its models' weights
            return
        if key not in self._weights_found:
            settings = self.settings
            if job.full_tune is not None:  # its own LM: the published one is not needed
                settings = settings.with_(checkpoints={**settings.checkpoints, request.model_version: job.full_tune})
            weights_check(settings, request.model_version, request.multi_band_diffusion, job.log)
            self._weights_found.add(key)

    def hardware(self) -> list[dict[str, str]]:
        """This engine's devices, as Replicate's GET /v1/hardware lists SKUs: {"sku": "cuda:0", "name": ...}."""
        return [{"sku": loop.device, "name": device_name(loop.device)} for loop in self.loops]

    def keep(self, name: str, model_version: str, weights: str | None, device: str, tune: str | None = None) -> Future:
        """Keep deployment `name`'s model (model_version, with a fine-tune's `weights`, called `tune`) resident on
        `device` until `let_go(name)`, replacing what `name` kept before once it is resident; a LoRA fine-tune's
        adapter is kept in one of the model's adapter slots too. The future resolves to a note once it is, or
        raises why it cannot be (an unknown device, missing weights, not enough memory or adapter slots)."""
        done: Future = Future()
        self.pin_pool.submit(self._keep, name, model_version, weights, device, tune, done)
        return done

    def let_go(self, name: str) -> None:
        self.pin_pool.submit(self._let_go, name)

    def _keep(self, name: str, model_version: str, weights: str | None, device: str, tune, done: Future) -> None:
        try:
            loop = next((loop for loop in self.loops if loop.device == device), None)
            if loop is None:
                have = ", ".join(loop.device for loop in self.loops)
                raise UserError(f"This server has no device {device!r}; it has {have} (GET /v1/hardware).")
            lora, full_tune = self.fine_tunes.of(weights, model_version, tune) if weights else (None, None)
            pin_settings = self.settings
            if full_tune is not None:
                pin_settings = pin_settings.with_(checkpoints={**pin_settings.checkpoints, model_version: full_tune})
            weights_check(pin_settings, model_version, False, log.info)
            for other in self.loops:  # a deployment moved to another device lets go where it was
                if other is not loop:
                    done.add_done_callback(lambda f, other=other: f.exception() or other.inbox.put(Unpin(name)))
            loop.inbox.put(Pin(name, ModelKey(model_version, full_tune), done, lora))
        except Exception as exc:  # noqa: BLE001 - every failure is the caller's answer
            done.set_exception(exc)

    def _let_go(self, name: str) -> None:
        for loop in self.loops:
            loop.inbox.put(Unpin(name))

    def _route(self, key: ModelKey) -> DeviceLoop:
        """The least loaded device among those that already hold the model, else among all."""
        holding = [loop for loop in self.loops if loop.holds(key)]
        return min(holding or self.loops, key=lambda loop: loop.jobs)

    def health(self) -> dict[str, Any]:
        devices = [loop.health() for loop in self.loops]
        ready = all(loop.ready.is_set() for loop in self.loops)
        out = {
            "status": "READY" if ready else "STARTING",
            "decoder": self.settings.decoder,
            "max_batch": self.settings.max_batch,
            "devices": devices,
            "host_adapters": self.fine_tunes.resident(),  # each device's: devices[i]["adapters"]
        }
        lost = [d["error"] for d in devices if d["status"] == "UNHEALTHY"]
        if lost:
            out.update(status="UNHEALTHY", error=" ".join(lost))
        return out

    def _device_lost(self, device: str, message: str) -> None:
        log.critical("engine: %s is lost; whoever runs this engine should exit (%s)", device, message)
        self.lost.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return all(loop.ready.wait(timeout) for loop in self.loops)

    def close(self) -> None:
        for loop in self.loops:
            loop.stop()
        for pool in (self.prepare_pool, self.download_pool, self.decode_pool, self.looper_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self.training_pool.shutdown(wait=False, cancel_futures=True)
        self.pin_pool.shutdown(wait=False, cancel_futures=True)
        self.loader_pool.shutdown(wait=False, cancel_futures=True)
        self.encode_pool.shutdown(wait=True)


def _as_is(key: ModelKey) -> str:
    """The loader stage of a `load(model_version, device)` given to the engine: nothing to read first."""
    return key.model_version


def _htdemucs_there(settings: Settings, say) -> None:
    """drop_vocals separates with htdemucs: its files must be in MUSICGEN_WEIGHTS (fetched when allowed)."""
    from .. import weights as W

    W.configure_environment(settings.weights_dir)
    W.ensure_files(
        settings.weights_dir,
        W.HTDEMUCS_FILES,
        "htdemucs (`drop_vocals` separates the vocals with it) is",
        W.fetch_advice("melody-large") + " Or train with drop_vocals=false.",
        say,
        settings.auto_fetch,
        label="htdemucs",
    )
