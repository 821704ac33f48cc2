"""The engine: a validated request in, an encoded audio file out."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from .. import audio
from ..schema import check_semantics
from ..settings import Settings
from ..weights import configure_environment
from . import mbd as MBD
from .api import Hooks, Request, Result
from .generate import encode_decode, generate_audio_tokens, reference_decoder, resolve_seed, seed_everything
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
        # One generation at a time: seeding is process-global, and one GPU serves one request.
        self._lock = threading.Lock()

    def _load(self, key: str, on_log) -> Any:
        """A cache miss: check (or fetch) the files, then load them."""
        weights_check(self.settings, key, False, on_log)
        if key == CODEC_KEY:
            return load_codec(self.settings, self.device)
        return load_musicgen(self.settings, key, self.device)

    def health(self) -> dict[str, Any]:
        return {"device": self.device, "decoder": self.settings.decoder, "resident_models": self.models.resident()}

    def generate(self, request: Request, out_dir: Path, hooks: Hooks | None = None) -> Result:
        hooks = hooks or Hooks()
        check_semantics(request, self.settings.max_duration)
        out_dir.mkdir(parents=True, exist_ok=True)
        seed = resolve_seed(request.seed)
        hooks.on_log(f"Using seed {seed}")
        with self._lock, torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
            configure_environment(self.settings.weights_dir)  # the hub env is process-wide: make it ours
            clip = self._read_input(request, Path(tmp))
            model = self.models.get(request.model_version, hooks.on_log)
            mbd = self._mbd(request, hooks) if request.multi_band_diffusion else None
            seed_everything(seed)
            if request.model_version == CODEC_KEY:
                wav = encode_decode(model, *clip) if mbd is None else MBD.encode_decode(mbd, clip[0][None], clip[1])
            else:
                tokens = generate_audio_tokens(model, request, clip, self.decoder, hooks)
                wav = model.generate_audio(tokens) if mbd is None else MBD.tokens_to_wav(
                    mbd, tokens, stereo=model.audio_channels == 2)
            sr = model.sample_rate
        path = audio.write(wav[0], sr, out_dir / f"out.{request.output_format}", request.normalization_strategy)
        return Result(path=path, seed=seed, sample_rate=sr, channels=wav.shape[1], num_samples=wav.shape[-1])

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
