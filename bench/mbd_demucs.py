"""Time MultiBand Diffusion decoding and htdemucs separation at their real sizes, random weights.

    python bench/mbd_demucs.py --device cuda --seconds 8 --dtypes float32 float16
    python bench/mbd_demucs.py --device cpu --seconds 1          # what a CPU-only machine can afford

MBD: four DiffusionUNets with audiocraft's `model/score/basic.yaml` sizes (hidden 48, depth 4,
stride 4, growth 4, emb_all_layers) conditioned on EnCodec 32 kHz latents (codec_dim 128), each
run through `generate_subsampled`'s default 20-step schedule: 80 full-waveform UNet passes per
clip, as `MultiBandDiffusion.generate` does. Timing covers the diffusion only (EnCodec decode
and the EQ match are small next to it). htdemucs: `HTDemucs` with its class defaults (the
released model's architecture) on stereo 44.1 kHz audio through demucs' `apply_model`, as
audiocraft's ChromaStemConditioner calls it.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

log = logging.getLogger("bench")
UNET = {
    "hidden": 48,
    "depth": 4,
    "res_blocks": 1,
    "norm_groups": 4,
    "kernel": 8,
    "stride": 4,
    "growth": 4,
    "max_channels": 10_000,
    "dropout": 0.0,
    "emb_all_layers": True,
    "bilstm": False,
    "codec_dim": 128,
    "transformer": False,
    "cross_attention": False,
}
SCHEDULE = {
    "beta_t0": 1.0e-5,
    "beta_t1": 2.9e-2,
    "beta_exp": 7.5,
    "num_steps": 1000,
    "variance": "beta",
    "clip": 5.0,
    "rescale": 1.0,
    "n_bands": None,
    "noise_scale": 1.0,
    "repartition": "power",
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_mbd(device: str, dtype: torch.dtype, seconds: float) -> float:
    from audiocraft.models.unet import DiffusionUnet
    from audiocraft.modules.diffusion_schedule import NoiseSchedule

    unets = [DiffusionUnet(chin=1, num_steps=1000, **UNET).to(device, dtype).eval() for _ in range(4)]
    schedules = [NoiseSchedule(**SCHEDULE, device=device) for _ in unets]
    samples = int(seconds * 32000)
    emb = torch.randn(1, 128, samples // 640, device=device, dtype=dtype)  # [B, codec_dim, frames]
    log.info("MBD UNet parameters: %.1f M per band", sum(p.numel() for p in unets[0].parameters()) / 1e6)

    def decode() -> torch.Tensor:
        out = torch.zeros(1, 1, samples, device=device, dtype=dtype)  # [B, 1, T]
        for unet, schedule in zip(unets, schedules, strict=True):
            out += schedule.generate_subsampled(unet, initial=torch.randn_like(out), condition=emb)
        return out

    with torch.inference_mode():
        decode()  # warm-up (cuDNN autotuning, allocator)
        _sync(device)
        start = time.perf_counter()
        decode()
        _sync(device)
    return time.perf_counter() - start


def time_htdemucs(device: str, seconds: float) -> float:
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100).to(device)
    model.eval()
    mix = torch.randn(1, 2, int(seconds * 44100), device=device) * 0.1  # [B, 2, T] at 44.1 kHz
    log.info("htdemucs parameters: %.1f M", sum(p.numel() for p in model.parameters()) / 1e6)
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        apply_model(model, mix, device=device)
        _sync(device)
    return time.perf_counter() - start


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=8.0, help="MBD clip length")
    parser.add_argument("--demucs-seconds", type=float, default=30.0)
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}"
    for name in args.dtypes:
        took = time_mbd(args.device, getattr(torch, name), args.seconds)
        log.info(
            "MBD %s, %.0f s clip, %s: %.2f s (%.2f x real time)",
            name,
            args.seconds,
            device_name,
            took,
            took / args.seconds,
        )
    took = time_htdemucs(args.device, args.demucs_seconds)
    log.info("htdemucs %.0f s, %s: %.2f s", args.demucs_seconds, device_name, took)


if __name__ == "__main__":
    main()
