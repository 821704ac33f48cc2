"""Benchmark: our fast decoder against audiocraft's eager `LMModel.generate` and Hugging Face
transformers' `MusicgenForConditionalGeneration.generate`, in one run.

    PYTHONPATH=. .venv/bin/python -m bench.decoder            # defaults for the device found
    PYTHONPATH=. .venv/bin/python -m bench.decoder --models small --durations 4 --batches 1 8 --threads 1

Random weights (decode speed does not depend on their values) in the real architectures: audiocraft's
MusicGen LM structure (musicgen_lm.yaml) at the model_scale sizes, and a transformers MusicGen decoder
of the same size (layers, width, heads, 4x feed-forward, K codebooks of 2048). All three decode with
classifier-free guidance 3 and top_k 250, timed the same way (wall time / decoding steps). Text
conditioning uses the tiny real-format T5 from musicgen_local.testing.tiny (transformers: a T5 of the
same tiny size), so nothing is downloaded and the text encoder costs nothing next to the decoder.
Prints a table and appends it, with the device named, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import decoder_adapters, results

log = logging.getLogger("bench")
FRAME_RATE = 50
# audiocraft config/model/lm/model_scale/{small,medium,large}.yaml; "tiny"/"mini" are ours for CPU runs
SCALES = {
    "tiny": (32, 2, 2),
    "mini": (256, 8, 8),
    "small": (1024, 16, 24),
    "medium": (1536, 24, 48),
    "large": (2048, 32, 48),
}
MODELS = {  # name -> (scale, stereo, melody)
    "tiny": ("tiny", False, False),
    "tiny-stereo-melody": ("tiny", True, True),
    "mini": ("mini", False, False),
    "small": ("small", False, False),
    "medium": ("medium", False, False),
    "large": ("large", False, False),
    "stereo-large": ("large", True, False),
    "melody-large": ("large", False, True),
    "stereo-melody-large": ("large", True, True),
}


@dataclass
class Row:
    model: str
    decoder: str
    duration: int
    batch: int
    wall_s: float
    steps: int
    peak_gib: float
    floor_ms: float

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.wall_s / self.steps

    def cells(self) -> list[str]:
        audio = self.duration * self.batch
        return [
            self.model,
            self.decoder,
            f"{self.duration}",
            f"{self.batch}",
            f"{self.wall_s:.2f}",
            f"{self.ms_per_step:.2f}",
            f"{self.steps / self.wall_s:.1f}",
            f"{audio / self.wall_s:.2f}",
            f"{self.peak_gib:.2f}",
            f"{self.floor_ms / self.ms_per_step:.1%}",
        ]


HEADER = [
    "model",
    "decoder",
    "audio s",
    "batch",
    "wall s",
    "ms/step",
    "steps/s",
    "audio-s per wall-s",
    "peak GiB",
    "of floor",
]


def build_lm(name: str, device: str, dtype: torch.dtype):
    from audiocraft.models.builders import get_lm_model

    from musicgen_local.testing.tiny import lm_cfg

    scale, stereo, melody = MODELS[name]
    dim, heads, layers = SCALES[scale]
    cfg = lm_cfg(stereo, melody)
    cfg.device, cfg.dtype = device, str(dtype).removeprefix("torch.")
    cfg.transformer_lm.update(dim=dim, num_heads=heads, num_layers=layers, hidden_scale=4, activation="gelu")
    torch.manual_seed(0)
    return get_lm_model(cfg).eval()


def step_bytes(lm) -> int:
    """Weight bytes one decode step must read: everything but the embedding tables (a gather) and,
    on our path, the cross-attention key/value projections (computed once at prefill)."""
    total = sum(
        p.numel() * p.element_size()
        for n, p in lm.named_parameters()
        if not n.startswith(("emb.", "condition_provider."))
    )
    for layer in lm.transformer.layers:
        if layer.cross_attention is not None:
            w = layer.cross_attention.in_proj_weight
            total -= 2 * w.numel() * w.element_size() // 3
    return total


def copy_bandwidth(device: str) -> float:
    """Bytes per second moved by a large device-to-device copy (read + write), best of 5."""
    n = (1 << 30) if device == "cuda" else (1 << 28)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n / best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


def attributes(n: int, melody: bool):
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    from musicgen_local.testing.tiny import SENTENCES

    out = []
    for i in range(n):
        attr = ConditioningAttributes(text={"description": SENTENCES[i % len(SENTENCES)]})
        if melody:
            attr.wav["self_wav"] = WavCondition(
                torch.zeros(1, 1, 1), torch.tensor([0]), sample_rate=[32000], path=[None]
            )
        out.append(attr)
    return out


def run_one(lm, decoder: str, duration: int, batch: int, device: str, melody: bool, mode: str) -> tuple[float, int]:
    """One timed generation; returns (wall seconds, decode steps)."""
    frames = duration * FRAME_RATE
    steps = lm.pattern_provider.get_pattern(frames).num_sequence_steps - 1  # frames + the largest delay
    with torch.no_grad():
        if decoder == "transformers":
            return timed(device, lambda: _hf_generate(lm, batch, steps)), steps
        if decoder == "audiocraft":
            conditions = attributes(batch, melody)
            return timed(
                device, lambda: lm.generate(None, conditions, max_gen_len=frames, use_sampling=True, top_k=250)
            ), steps
        slots = fast_batch(lm, batch, frames, melody, mode)  # each request its own slot and seed stream
        windows = fast_windows(lm, batch, frames, melody, device)
        return timed(device, lambda: decode(slots, windows)), steps


def timed(device: str, fn) -> float:
    """Seconds `fn()` takes, the device's queued work included."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


_BATCHES: dict = {}
_FAST_LM: dict = {}  # on CPU our decoder lays the weights out its own way: the peers keep theirs


def fast_batch(lm, slots: int, frames: int, melody: bool, mode: str):
    """A SlotBatch for this LM, kept across runs (allocated and, on CUDA, its graphs captured once,
    as the engine does at warm-up)."""
    from musicgen_local.engine.fast import SlotBatch

    key = (id(lm), slots, frames, mode)
    if key not in _BATCHES:
        _BATCHES.clear()
        if id(lm) not in _FAST_LM:
            _FAST_LM[id(lm)] = copy.deepcopy(lm) if device_of(lm) == "cpu" else lm
        own = _FAST_LM[id(lm)]
        _BATCHES[key] = SlotBatch(own, slots, frames, prefix=300 if melody else 0, mode=mode)
        with autocast(device_of(lm)):
            _BATCHES[key].warm_up()
    return _BATCHES[key]


def fast_windows(lm, batch: int, frames: int, melody: bool, device: str) -> list:
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    from musicgen_local.engine.fast import SamplingParams, Window

    out = []
    for i, attr in enumerate(attributes(batch, melody)):
        provider = lm.condition_provider
        conditions = provider(provider.tokenize([attr] + ClassifierFreeGuidanceDropout(p=1.0)([attr])))
        out.append(Window(conditions, None, frames, SamplingParams(), torch.Generator(device).manual_seed(i)))
    return out


def decode(slots, windows) -> None:
    from musicgen_local.engine.fast import decode as fast_decode

    with autocast(device_of(slots.lm)):
        fast_decode(slots, windows)


def device_of(lm) -> str:
    return next(lm.parameters()).device.type


def autocast(device: str):
    """float16 autocast on CUDA, as MusicGen decodes there; nothing elsewhere."""
    import contextlib

    return torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda") else contextlib.nullcontext()


# ------------------------------------------------------------------------------------ transformers

_HF: dict = {}


def hf_model(lm):
    """transformers' MusicGen with a decoder the size of `lm` (random weights), cached per LM."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    key = id(lm)
    if key not in _HF:
        _HF.clear()
        first = next(lm.parameters())
        layer = lm.transformer.layers[0]
        decoder = MusicgenDecoderConfig(
            hidden_size=lm.dim,
            num_attention_heads=layer.self_attn.num_heads,
            num_hidden_layers=len(lm.transformer.layers),
            ffn_dim=layer.linear1.out_features,
            num_codebooks=lm.num_codebooks,
            vocab_size=lm.card,
            max_position_embeddings=4096,
        )
        text = T5Config(vocab_size=64, d_model=768, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
        codec = EncodecConfig(
            target_bandwidths=[2.2],
            sampling_rate=32000,
            audio_channels=1,
            normalize=False,
            chunk_length_s=None,
            overlap=None,
            hidden_size=16,
            num_filters=2,
            num_residual_layers=1,
            upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048,
            codebook_dim=16,
            num_lstm_layers=1,
            use_causal_conv=False,
        )
        config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())
        torch.manual_seed(0)
        _HF[key] = MusicgenForConditionalGeneration(config).to(first.device, first.dtype).eval()
    return _HF[key]


def _hf_generate(lm, batch: int, steps: int) -> None:
    model = hf_model(lm)
    device = next(model.parameters()).device
    ids = torch.randint(0, 64, (batch, 12), generator=torch.Generator().manual_seed(0)).to(device)
    with autocast(device.type):
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            do_sample=True,
            top_k=250,
            guidance_scale=3.0,
        )


def bench(args) -> tuple[list[Row], list, float]:
    device = args.device
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    from musicgen_local.engine.fast import resolve_mode

    label = f"fast/{resolve_mode(args.mode, torch.device(device))}"
    bandwidth = copy_bandwidth(device)
    log.info("copy bandwidth %.1f GB/s", bandwidth / 1e9)
    rows, adapter_rows = [], []
    for name in args.models:
        lm = build_lm(name, device, dtype)
        floor_ms = 1000 * step_bytes(lm) / bandwidth
        melody = MODELS[name][2]
        for decoder in args.decoders:  # warm-up: allocators, T5, the transformers model
            run_one(lm, decoder, 1, 1, device, melody, args.mode)
        for duration in args.durations:
            for batch in args.batches:
                for decoder in args.decoders:
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    wall, steps = run_one(lm, decoder, duration, batch, device, melody, args.mode)
                    row = Row(
                        name,
                        label if decoder == "fast" else decoder,
                        duration,
                        batch,
                        wall,
                        steps,
                        peak_gib(device),
                        floor_ms,
                    )
                    log.info(" | ".join(row.cells()))
                    rows.append(row)
        if args.adapters and "fast" in args.decoders:
            adapter_rows += decoder_adapters.run(
                lm,
                name,
                args.adapters,
                args.adapter_rank,
                args.adapter_batch,
                args.durations[0],
                device,
                args.mode,
                args.adapter_repeats,
            )
        del lm
        _FAST_LM.clear()
        _BATCHES.clear()
    return rows, adapter_rows, bandwidth


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def speedups(rows: list[Row]) -> str:
    """Per-step speed of the fast decoder over each peer measured in the same run (> 1: ours is faster)."""
    peers = {(r.model, r.duration, r.batch, r.decoder): r.ms_per_step for r in rows if not r.decoder.startswith("fast")}
    out = []
    for r in rows:
        if not r.decoder.startswith("fast"):
            continue
        ratios = [
            f"{peer} {peers[(r.model, r.duration, r.batch, peer)] / r.ms_per_step:.2f}x"
            for peer in ("audiocraft", "transformers")
            if (r.model, r.duration, r.batch, peer) in peers
        ]
        out.append(f"- {r.model} {r.duration} s batch {r.batch}: " + ", ".join(ratios))
    return "\n".join(out)


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", default="float16" if cuda else "float32")
    p.add_argument(
        "--models",
        nargs="+",
        default=["large", "stereo-large", "melody-large"] if cuda else ["tiny", "mini"],
        choices=list(MODELS),
    )
    p.add_argument("--durations", nargs="+", type=int, default=[8, 30])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32] if cuda else [1, 8])
    p.add_argument(
        "--decoders",
        nargs="+",
        default=["audiocraft", "transformers", "fast"],
        choices=["audiocraft", "transformers", "fast"],
    )
    p.add_argument(
        "--adapters",
        nargs="*",
        type=int,
        default=[0, 1, 4],
        help="fast decoder: also decode one batch with each of these numbers of LoRA adapters (none: skip)",
    )
    p.add_argument("--adapter-rank", type=int, default=16)
    p.add_argument("--adapter-batch", type=int, default=8)
    p.add_argument("--adapter-repeats", type=int, default=3, help="rounds of the adapter counts; each row's best")
    p.add_argument("--mode", default="auto", help="fast decoder step: auto | eager | graph | compile")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument(
        "--weights",
        type=Path,
        default=Path(__file__).with_name(".weights"),
        help="where the tiny T5/demucs used for conditioning are written",
    )
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    prepare_conditioning(args.weights)
    rows, adapter_rows, bandwidth = bench(args)
    report = (
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — {device_name(args.device)}, {args.dtype}, "
        f"mode {args.mode}\n\nCopy bandwidth {bandwidth / 1e9:.1f} GB/s. 'of floor' = (weight bytes per step "
        f"/ copy bandwidth) / measured ms per step.\n\n{table(rows)}\n\nSpeed of the fast decoder per step, as "
        f"a ratio to each peer in the same run:\n{speedups(rows)}\n"
    )
    if adapter_rows:
        report += (
            "\nLoRA adapters in the batch (with k adapters every request uses one, round-robin over k):\n\n"
            f"{decoder_adapters.table(adapter_rows)}\n\n{decoder_adapters.ratios(adapter_rows)}\n"
        )
    print(report)
    if not args.no_append:
        results.append("# Part 1", report)


def prepare_conditioning(weights: Path) -> None:
    from musicgen_local.testing.tiny import write_tiny_weights
    from musicgen_local.weights import configure_environment

    if not (weights / ".complete").exists():
        write_tiny_weights(weights)
        (weights / ".complete").touch()
    configure_environment(weights)


if __name__ == "__main__":
    main()
