"""The engine: a validated request in, an encoded audio file out."""

from __future__ import annotations

import logging
import tempfile
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .. import audio
from ..schema import check_semantics
from ..settings import Settings
from ..weights import configure_environment
from . import mbd as MBD
from .api import Hooks, Request, Result
from .batching import BatchedDecoding, RequestRng
from .generate import (
    encode_decode,
    generate_audio_tokens,
    plan_request,
    reference_decoder,
    resolve_seed,
    run_windows,
    sampling_params,
    seed_everything,
)
from .models import ModelCache, load_codec, load_musicgen, resolve_device, weights_check

log = logging.getLogger(__name__)
CODEC_KEY = "encode-decode"


def _pick_decoder(name: str):
    if name == "fast":
        from .fast import fast_generate

        return fast_generate
    return reference_decoder


class MusicgenEngine:
    def __init__(self, settings: Settings):
        self.settings = settings
        configure_environment(settings.weights_dir)
        self.device = resolve_device(settings.device)
        self.models = ModelCache(self._load, settings.max_models)
        self.decoder = _pick_decoder(settings.decoder)
        self.mbd = MBD.LazyMbd(settings.weights_dir, self.device)  # loaded on first use, then kept
        # Guards process-wide state (seeding, the hub env, model patches) and the GPU work outside
        # the LM decode. The reference decoder holds it for a whole request; the fast one batches.
        self._lock = threading.Lock()
        batch = settings.decoder == "fast" and settings.max_batch > 1
        self.batching = BatchedDecoding(self._lock, settings.max_batch) if batch else None
        self.concurrency = settings.max_batch if batch else 1  # requests worth running at once

    def _load(self, key: str, on_log) -> Any:
        """A cache miss: check (or fetch) the files, then load them."""
        weights_check(self.settings, key, False, on_log)
        if key == CODEC_KEY:
            return load_codec(self.settings, self.device)
        return load_musicgen(self.settings, key, self.device)

    def health(self) -> dict[str, Any]:
        return {"device": self.device, "decoder": self.settings.decoder, "max_batch": self.concurrency,
                "resident_models": self.models.resident()}

    def generate(self, request: Request, out_dir: Path, hooks: Hooks | None = None) -> Result:
        hooks = hooks or Hooks()
        check_semantics(request, self.settings.max_duration)
        out_dir.mkdir(parents=True, exist_ok=True)
        seed = resolve_seed(request.seed)
        hooks.on_log(f"Using seed {seed}")
        with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
            wav, sr = self._generate(request, seed, hooks, Path(tmp))
        path = audio.write(wav[0], sr, out_dir / f"out.{request.output_format}", request.normalization_strategy)
        return Result(path=path, seed=seed, sample_rate=sr, channels=wav.shape[1], num_samples=wav.shape[-1])

    def _generate(self, request: Request, seed: int, hooks: Hooks, tmp: Path) -> tuple[torch.Tensor, int]:
        """The waveform [1, C, T] and its rate. Alone under the lock from start to end, or, when
        batching, leaving the lock while the LM decodes (see batching.py)."""
        batching = self.batching if request.model_version != CODEC_KEY else None
        with batching.expect(request.model_version) if batching else nullcontext(), self._lock:
            configure_environment(self.settings.weights_dir)  # the hub env is process-wide: make it ours
            clip = self._read_input(request, tmp)
            model = self.models.get(request.model_version, hooks.on_log)
            mbd = self._mbd(request, hooks) if request.multi_band_diffusion else None
            if batching is None or not batching.supports(model):
                seed_everything(seed)
                if request.model_version == CODEC_KEY:
                    return (encode_decode(model, *clip) if mbd is None
                            else MBD.encode_decode(mbd, clip[0][None], clip[1])), model.sample_rate
                tokens = generate_audio_tokens(model, request, clip, self.decoder, hooks)
                return self._to_wav(model, mbd, tokens), model.sample_rate
            rng = RequestRng(seed, model.device)
            with rng.active():
                plan = plan_request(model, request, clip)
        decode = batching.window_decoder(plan, sampling_params(request), rng, request.model_version, hooks.on_log)
        tokens = run_windows(plan, decode, hooks)
        with self._lock, rng.active():
            return self._to_wav(model, mbd, tokens), model.sample_rate

    @staticmethod
    def _to_wav(model, mbd, tokens: torch.Tensor) -> torch.Tensor:
        if mbd is None:
            return model.generate_audio(tokens)
        return MBD.tokens_to_wav(mbd, tokens, stereo=model.audio_channels == 2)

    def _mbd(self, request: Request, hooks: Hooks):
        """MultiBand Diffusion, fetched first when allowed and still missing."""
        if self.mbd.loads == 0:
            weights_check(self.settings, request.model_version, True, hooks.on_log)
        return self.mbd.get()

    def _read_input(self, request: Request, work_dir: Path):
        """The cropped input audio as (wav [C, T], sr), or None; fetched before any model loads so
        a bad URL or file fails fast."""
        if request.input_audio is None:
            return None
        wav, sr = audio.read(audio.fetch_input(request.input_audio, work_dir))
        return audio.crop(wav, sr, request.continuation_start, request.continuation_end), sr
