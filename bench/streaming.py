"""Benchmark: time to first audio and the real-time factor of the stream (issue 12).

    PYTHONPATH=. .venv/bin/python -m bench.streaming                                   # CPU: tiny and mini
    PYTHONPATH=. .venv/bin/python -m bench.streaming --device cuda --weights weights --models large

One request at a time through the real engine (`load_engine`, fast decoder, `submit(stream=True)`),
as the server runs it, after one warm-up request of the same shape (model loaded, graphs captured).
Timed from `submit` to each `Audio` segment and to the final file. Without --weights it writes two
checkpoints of its own: `tiny` (musicgen_local.testing.tiny: the test checkpoints) and `mini`, a
MusicGen at bench/decoder.py's `mini` scale (LM 256 wide, 8 layers, random weights) whose codec is
EnCodec 32 kHz's real architecture (SEANet 128/64, 2 LSTM layers, random weights: the codec's cost
is what streaming adds), conditioned by the tiny T5. Appends its table, with the device named, to
bench/RESULTS.md, Part 4.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import results
from bench.decoder import SCALES, device_name, prepare_conditioning

PART = "# Part 4: streaming (`bench/streaming.py`, issue 12)"
HEADER = [
    "model",
    "segment s",
    "first audio s",
    "file s",
    "audio-s per wall-s",
    "playback margin s",
    "segments",
    "seam max diff (16-bit steps)",
]
PROMPT = "lofi hip hop beat with warm piano chords"
HERE = Path(__file__).parent


@dataclass
class Timing:
    first_audio: float  # submit -> first segment
    file: float  # submit -> the final (normalised, encoded) file
    arrivals: list[tuple[float, float]]  # (seconds after submit, segment start in the audio)
    seam: float  # largest difference between the joined segments and the final file, in 16-bit steps

    @property
    def margin(self) -> float:
        """Playback that starts when the first segment arrives: how early the latest of the others came
        before it was needed (negative: playback would have stalled that long in all)."""
        start = self.arrivals[0][0]
        return min((start + audio_s - t for t, audio_s in self.arrivals[1:]), default=0.0)


def stream_once(engine, model: str, duration: int, seed: int) -> Timing:
    from musicgen_local.engine import Request
    from musicgen_local.engine.api import Audio, Done, Failed

    request = Request(model_version=model, prompt=PROMPT, duration=duration, seed=seed, normalization_strategy="peak")
    t0 = time.perf_counter()
    arrivals, segments = [], []
    for event in engine.submit(request, stream=True):
        now = time.perf_counter() - t0
        if isinstance(event, Audio):
            arrivals.append((now, event.start_s))
            segments.append(event.wav)
        elif isinstance(event, Done):
            return Timing(arrivals[0][0], now, arrivals, seam_error(segments, event.result.audio))
        elif isinstance(event, Failed):
            raise RuntimeError(event.message)
    raise RuntimeError("the run ended without a file")


def seam_error(segments: list[bytes], final: bytes) -> float:
    """How far the joined segments are from the final file (peak-normalised: one gain, then 16-bit
    rounding, so 0.5 is a perfect join), as tests/engine/test_streaming.py measures it."""
    import numpy as np
    import soundfile

    def read(data: bytes) -> np.ndarray:
        return soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]

    joined, out = np.concatenate([read(s) for s in segments]), read(final)
    gain = float((joined * out).sum() / (joined * joined).sum())
    return float(np.abs(out - gain * joined).max() * 32768)


def bench(args, checkpoints: dict[str, tuple[Path, str]]) -> list[list[str]]:
    """checkpoints: label -> (weights dir, model_version to ask for)."""
    from musicgen_local.engine import load_engine
    from musicgen_local.settings import Settings

    rows = []
    for label, (weights, model) in checkpoints.items():
        for seconds in args.segments:
            with tempfile.TemporaryDirectory() as data:
                settings = Settings(
                    weights_dir=weights.resolve(),
                    devices=args.device,
                    decoder="fast",
                    warmup="none",
                    stream_seconds=seconds,
                    data_dir=Path(data),
                )
                engine = load_engine(settings)
                try:
                    stream_once(engine, model, args.duration, seed=1)  # warm-up: load, allocate, capture
                    t = stream_once(engine, model, args.duration, seed=2)
                finally:
                    engine.close()
            rows.append(
                [
                    label,
                    f"{seconds:g}",
                    f"{t.first_audio:.2f}",
                    f"{t.file:.2f}",
                    f"{args.duration / t.arrivals[-1][0]:.2f}",
                    f"{t.margin:+.2f}",
                    str(len(t.arrivals)),
                    f"{t.seam:.1f}",
                ]
            )
            logging.info("%s", " | ".join(rows[-1]))
    return rows


def write_mini(root: Path, scale: str = "mini") -> Path:
    """`large` in `root` is the mini MusicGen (see the module's docstring), or one at another of
    bench.decoder's scales; T5 is the tiny one."""
    from audiocraft.models import builders

    from musicgen_local import weights as W
    from musicgen_local.testing import tiny

    if (root / ".complete").exists():
        return root
    tiny.write_tiny_weights(root, parts=["t5"])
    torch.manual_seed(0)
    cfg = tiny.lm_cfg(stereo=False, melody=False)
    dim, heads, layers = SCALES[scale]
    cfg.transformer_lm.update(dim=dim, num_heads=heads, num_layers=layers, hidden_scale=4)
    lm = builders.get_lm_model(cfg)
    tiny._export(tiny.hub_path(root, W.lm_repo("large"), "state_dict.bin"), cfg, lm.state_dict())
    codec = tiny._encodec_cfg()
    codec.seanet.update(dimension=128, n_filters=64, lstm=2)  # EnCodec 32 kHz's sizes
    tiny._export(
        tiny.hub_path(root, W.lm_repo("large"), "compression_state_dict.bin"),
        codec,
        builders.get_compression_model(codec).state_dict(),
    )
    (root / ".complete").touch()
    return root


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--weights", type=Path, help="a weights/ directory of real checkpoints (default: tiny and mini)")
    p.add_argument("--models", nargs="+", default=["large"], help="model_versions to time with --weights")
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--segments", nargs="+", type=float, default=[0.5, 1.0], help="MUSICGEN_STREAM_SECONDS values")
    p.add_argument("--left-context", type=int, help="codec frames decoded before each segment (engine/codec.py)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from musicgen_local.engine import codec

    if args.left_context is not None:  # to see how much context a real codec needs: the seam column
        codec.LEFT_CONTEXT = args.left_context
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights:
        checkpoints = {model: (args.weights, model) for model in args.models}
    else:
        tiny_dir = HERE / ".weights"
        prepare_conditioning(tiny_dir)
        checkpoints = {"tiny": (tiny_dir, "large"), "mini": (write_mini(HERE / ".weights-mini"), "large")}
    rows = bench(args, checkpoints)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in rows]
    report = (
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — {device_name(args.device)}, "
        f"{args.weights.name if args.weights else 'bench checkpoints'}, {args.duration} s requests, "
        f"codec context {codec.LEFT_CONTEXT} + {codec.RIGHT_CONTEXT} frames\n\n" + "\n".join(lines) + "\n"
    )
    print(report)
    if not args.no_append:
        results.append(PART, report)


if __name__ == "__main__":
    main()
