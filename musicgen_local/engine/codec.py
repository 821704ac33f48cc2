"""From tokens to audio: EnCodec or MultiBand Diffusion, for the whole clip or segment by segment
while it generates. Runs on the device loop (it owns the codec's device)."""

from __future__ import annotations

import torch

from .. import audio
from . import mbd as MBD
from .api import Audio

LEFT_CONTEXT = 50  # frames decoded before a segment: the codec's LSTM and convolutions settle on them
RIGHT_CONTEXT = 8  # frames after it: the non-causal convolutions look this far ahead


def to_wav(model, mbd, tokens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Tokens [1, K, T] -> waveform [1, C, T * 640], by EnCodec, or by MBD when `mbd` is given."""
    if mbd is None:
        return model.compression_model.decode(tokens, None)
    return MBD.tokens_to_wav(mbd, tokens, stereo=model.audio_channels == 2, generator=generator)


def round_trip(codec, wav: torch.Tensor, mbd, generator: torch.Generator | None) -> torch.Tensor:
    """encode-decode: wav [C, T] at 32 kHz through EnCodec (or MBD's decoder), each channel on its
    own, trimmed back to its length: [1, C, T]."""
    if mbd is not None:
        return MBD.encode_decode(mbd, wav[None], codec.sample_rate, generator)
    x = wav[:, None, :].to(next(codec.parameters()).device)  # channels as a batch of mono: [C, 1, T]
    codes, scale = codec.encode(x)
    return codec.decode(codes, scale)[:, 0, : x.shape[-1]][None]


class SegmentStream:
    """Audio segments of a clip as its frames become final, decoded with just the context the codec
    needs (never the whole clip again): segment [a, b) is decoded from frames
    [a - LEFT_CONTEXT, b + RIGHT_CONTEXT) and cut to its own samples."""

    def __init__(self, compression_model, total_frames: int, seconds: float):
        self.codec = compression_model
        self.total = total_frames
        self.frame_rate = compression_model.frame_rate
        self.size = max(1, round(seconds * self.frame_rate))
        self.hop = int(compression_model.sample_rate // self.frame_rate)
        self.next = 0  # first frame not streamed yet
        self.index = 0

    def due(self, final: int) -> bool:
        """Whether a segment can be decoded now that `final` frames are final."""
        end = min(self.next + self.size, self.total)
        return self.next < self.total and (end + RIGHT_CONTEXT <= final or final >= self.total)

    def decode_next(self, tokens: torch.Tensor, final: int) -> Audio:
        """The next segment; `tokens` [1, K, >= its right context] are the clip's codes from frame 0."""
        a = self.next
        b = min(a + self.size, self.total)
        lo, hi = max(0, a - LEFT_CONTEXT), min(final, b + RIGHT_CONTEXT)
        wav = self.codec.decode(tokens[..., lo:hi], None)[0, :, (a - lo) * self.hop : (b - lo) * self.hop]  # [C, T]
        samples = wav.float().t().contiguous().cpu().numpy()
        self.next, self.index = b, self.index + 1
        return Audio(
            self.index - 1,
            a / self.frame_rate,
            audio.float_wav(samples, self.codec.sample_rate),
            self.codec.sample_rate,
            samples.shape[1],
            samples.shape[0],
        )
