"""The memory plan of one device: what each resident model holds, and what is left.

The device loop asks the plan before it loads a model or grows anything: a model that would not fit
evicts the least recently used idle ones, a model alone on its device gets as many slots as fit (at
most MUSICGEN_MAX_BATCH), and a request that cannot be placed yet waits. Sizes are exact where they
can be counted (a checkpoint's tensors, a slot's caches from the architecture) and measured where
they cannot (on CUDA, what loading really allocated replaces the count).

The same arithmetic makes the tables of what fits on which card (`card_table`: the README's, and both in
docs/gpu.md), from the published architectures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..settings import Settings

GIB = 2**30
CROSS_POSITIONS = 64  # cross-attention positions a slot starts with (StaticLM's default)
STEP_LENGTH = 256  # the smallest cache-length bucket a step runs at
# Codec (EnCodec 32 kHz) decode of the whole clip at once, as audiocraft does it: measured peak on CPU
# in float32, 37 MiB per second of audio per codebook stream plus ~100 MiB (`bench/RESULTS.md`,
# "Memory"); under CUDA's float16 autocast the activations are half that.
CODEC_BYTES_PER_SECOND = 37 * 2**20
CODEC_BYTES_FIXED = 100 * 2**20
WINDOW_S = 30  # one window of generation: the codec reserve every resident model keeps
CUDA_MARGIN = 512 * 2**20  # cuBLAS workspaces, the CUDA context's own growth, fragmentation
MARGIN_FRACTION = 0.05


@dataclass(frozen=True)
class Footprint:
    """What one MusicGen needs on its device, from its architecture and its weights."""

    weights: int  # bytes: LM, codec, T5 (and htdemucs for melody), as loaded on the device
    dim: int
    layers: int
    heads: int
    codebooks: int
    card: int
    max_len: int  # cache positions per row: prefix + 1 + 30 s of frames + the largest delay
    dtype_bytes: int  # the LM's compute dtype: 2 (float16) on CUDA, 4 on CPU
    streams: int = 1  # codebook streams the codec decodes (2 for stereo)
    cross: bool = True
    hidden: int = 0  # the feed-forward's width (0: 4 x dim, as every MusicGen)
    lora_slots: int = 0  # adapter slots the fast decoder keeps (MUSICGEN_MAX_LORAS)
    lora_rank: int = 0  # and their rank (MUSICGEN_MAX_LORA_RANK)

    def slot(self) -> int:
        """One slot: its conditional and unconditional rows of self- and cross-attention cache, its
        pattern sequence, sampling noise and logits."""
        head_dim = self.dim // self.heads
        per_position = self.layers * 2 * self.heads * head_dim * 2 * self.dtype_bytes  # rows x (k, v)
        cross = per_position * CROSS_POSITIONS if self.cross else 0
        state = self.codebooks * (self.max_len * 8 + self.card * 4 * 3)
        return per_position * self.max_len + cross + state

    def adapters(self) -> int:
        """The adapter slots (`fast/adapters.py`): for each weight a LoRA may adapt, slots x rank x (in + out)
        numbers, whatever the number of batch slots."""
        d, hidden = self.dim, self.hidden or 4 * self.dim
        per_layer = 4 * d + 2 * d + (6 * d if self.cross else 0) + 2 * (d + hidden)  # attention(s), feed-forward
        features = self.layers * per_layer + self.codebooks * (d + self.card)  # and the output heads
        return self.lora_slots * self.lora_rank * features * self.dtype_bytes

    def workspace(self, slots: int) -> int:
        """Transient memory around the caches: a prefill of the longest window (activations of both
        rows, attention scores of one layer), the step at the widest bucket, and the codec decode of
        one window."""
        prefill = 2 * self.max_len * (self.dim * 8 * self.dtype_bytes + self.heads * self.max_len * 4)
        step = 2 * slots * (self.dim * 8 * self.dtype_bytes + self.codebooks * self.card * 4 * 4)
        return prefill + step + codec_bytes(WINDOW_S, self.streams, self.dtype_bytes)

    def total(self, slots: int) -> int:
        return self.weights + slots * self.slot() + self.adapters() + self.workspace(slots)

    def slots_within(self, room: int, max_slots: int) -> int:
        """The most slots (at most `max_slots`) whose total fits in `room` bytes; 0 when not even one does."""
        return next((n for n in range(max_slots, 0, -1) if self.total(n) <= room), 0)


def codec_bytes(seconds: float, streams: int = 1, dtype_bytes: int = 4) -> int:
    """Peak memory of decoding `seconds` of tokens to audio at once."""
    return int(CODEC_BYTES_FIXED + streams * seconds * CODEC_BYTES_PER_SECOND * dtype_bytes / 4)


def footprint_of(
    model,
    weights: int,
    dtype_bytes: int,
    prefix: int,
    loras: int = Settings.max_loras,
    lora_rank: int = Settings.max_lora_rank,
) -> Footprint:
    """The footprint of a loaded audiocraft MusicGen (weights counted or measured by the caller), with
    `loras` adapter slots of rank `lora_rank`."""
    lm = model.lm
    layer = lm.transformer.layers[0]
    frames = int(model.max_duration * model.frame_rate)
    max_len = prefix + 1 + frames + max(lm.pattern_provider.delays)
    return Footprint(
        weights,
        lm.dim,
        len(lm.transformer.layers),
        layer.self_attn.num_heads,
        lm.num_codebooks,
        lm.card,
        max_len,
        dtype_bytes,
        streams=max(1, model.audio_channels),
        cross=layer.cross_attention is not None,
        hidden=layer.linear1.out_features,
        lora_slots=loras,
        lora_rank=lora_rank,
    )


def module_bytes(module) -> int:
    """Parameters and buffers of a module, and of the models audiocraft's conditioners keep out of
    their `state_dict` (T5, htdemucs: stored in `__dict__`)."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(m) -> None:
        nonlocal total
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        for sub in m.modules():
            for hidden in vars(sub).values():
                if isinstance(hidden, torch.nn.Module) and id(hidden) not in seen:
                    seen.add(id(hidden))
                    add(hidden)

    add(module)
    return total


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class Holding:
    """What one resident model holds of its device's plan."""

    footprint: Footprint
    slots: int

    @property
    def bytes(self) -> int:
        return self.footprint.total(self.slots)


@dataclass
class DevicePlan:
    """Bytes this device may use (its free memory at start, or MUSICGEN_DEVICE_MEMORY), minus a margin,
    and what the resident models and shared components hold of it."""

    device: str
    budget: int  # free bytes when the loop started, or the setting
    margin: int
    source: str  # where the budget came from, for messages
    models: dict = field(default_factory=dict)  # model (residency.ModelKey) -> what it holds
    shared: dict[str, int] = field(default_factory=dict)  # MBD, once loaded

    @property
    def usable(self) -> int:
        return max(0, self.budget - self.margin)

    @property
    def used(self) -> int:
        return sum(r.bytes for r in self.models.values()) + sum(self.shared.values())

    @property
    def free(self) -> int:
        return self.usable - self.used

    def slots_alone(self, fp: Footprint, max_slots: int) -> int:
        """Slots the model gets if it had the device to itself (shared components kept): 0 = does not fit."""
        return fp.slots_within(self.usable - sum(self.shared.values()), max_slots)

    def too_big(self, name: str, fp: Footprint, kept: dict[str, int] | None = None) -> str:
        """Why `name` cannot be placed; `kept`: what deployments keep resident here (label -> bytes), if any."""
        needs = (
            f"`{name}` needs {gib(fp.total(1))} on {self.device} with a single batch slot (weights "
            f"{gib(fp.weights)}, {gib(fp.slot())} per slot), but this device's plan has {gib(self.usable)} "
            f"({self.source} {gib(self.budget)}, less a {gib(self.margin)} margin)"
        )
        if kept:
            held = "; ".join(f"{label}: {gib(size)}" for label, size in kept.items())
            return (
                f"{needs}, of which {gib(sum(kept.values()))} is kept resident by deployments ({held}) and "
                f"{gib(self.free)} is free. Set min_instances to 0 on one of those deployments, or deploy to "
                "another device (GET /v1/hardware)."
            )
        more = "Give it more with MUSICGEN_DEVICE_MEMORY, or serve this model on a larger device (MUSICGEN_DEVICES)."
        return f"{needs}. {more}"

    def as_dict(self) -> dict:
        """For /health-check: sizes in bytes, and a line for people."""
        return {
            "summary": (
                f"{gib(self.used)} of {gib(self.usable)} planned ({self.source} {gib(self.budget)}, less "
                f"a {gib(self.margin)} margin); {gib(self.free)} free"
            ),
            "budget_bytes": self.budget,
            "margin_bytes": self.margin,
            "used_bytes": self.used,
            "free_bytes": self.free,
            "source": self.source,
            "models": {
                str(name): {
                    "slots": r.slots,
                    "weights_bytes": r.footprint.weights,
                    "slot_bytes": r.footprint.slot(),
                    "adapter_bytes": r.footprint.adapters(),
                    "total_bytes": r.bytes,
                }
                for name, r in self.models.items()
            },
            "shared_bytes": dict(self.shared),
            "longest_clip_s": self.longest_clip(),
        }

    def longest_clip(self, streams: int = 2) -> int:
        """Seconds of audio the codec can decode at once with what is left plus one window's reserve."""
        dtype_bytes = 2 if self.device.startswith("cuda") else 4
        per_second = streams * CODEC_BYTES_PER_SECOND * dtype_bytes / 4
        room = self.free + codec_bytes(WINDOW_S, streams, dtype_bytes) - CODEC_BYTES_FIXED
        return max(0, int(room // per_second))


def new_plan(device: str, setting: int | None) -> DevicePlan:
    """The plan of a device at start: its free memory now (before any model), or the setting."""
    if setting is not None:
        budget, source = setting, "MUSICGEN_DEVICE_MEMORY"
    else:
        budget, source = free_memory(device), "free memory at start"
    cuda = device.startswith("cuda")
    margin = int(MARGIN_FRACTION * budget) + (CUDA_MARGIN if cuda else 0)
    return DevicePlan(device, budget, margin, source)


def estimate_of(host, dtype_bytes: int, prefix: int) -> Footprint | None:
    """The footprint a read checkpoint will have on the device, before building it (None: unknown)."""
    estimate = getattr(host, "footprint", None)
    return estimate(dtype_bytes, prefix) if callable(estimate) else None


def allocated(device: str) -> int:
    import torch

    return torch.cuda.memory_allocated(torch.device(device)) if device.startswith("cuda") else 0


def free_memory(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 16 * GIB


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.2f} MiB"


# ------------------------------------------------------------------------------------------ cards

# The published checkpoints (each preset's scale, e.g. `large`: dim 2048, 48 layers, 32 heads; 4 codebooks
# mono, 8 stereo; 2048 codes) and what loads with them. Counts, not guesses: parameters from the
# architecture, files at their published sizes.
T5_BASE_ENCODER = 109_628_544 * 4  # t5-base's encoder, float32
ENCODEC_32KHZ = 59_000_000 * 4  # facebook/encodec_32khz, float32
HTDEMUCS = 42_000_000 * 4  # adefossez/HTDemucs, float32


def published(
    model_version: str,
    dtype_bytes: int = 2,
    loras: int = Settings.max_loras,
    lora_rank: int = Settings.max_lora_rank,
) -> Footprint:
    from .. import registry

    preset = registry.PRESETS[model_version]
    dim, layers, heads, card = preset.dim, preset.layers, preset.heads, 2048
    codebooks = 8 if preset.channels == 2 else 4
    lm_params = layers * 16 * dim * dim + 2 * codebooks * (card + 1) * dim + 768 * dim
    weights = lm_params * dtype_bytes + T5_BASE_ENCODER + ENCODEC_32KHZ + (HTDEMUCS if preset.melody else 0)
    prefix = 300 if preset.melody else 0
    return Footprint(
        weights,
        dim,
        layers,
        heads,
        codebooks,
        card,
        prefix + 1 + 1500 + codebooks - 1,
        dtype_bytes,
        streams=preset.channels,
        lora_slots=loras,
        lora_rank=lora_rank,
    )


def card_table(
    cards_gb=(12, 16, 24, 48, 80, 141), model_version: str = "stereo-melody-large", max_batch: int = 8
) -> list[dict]:
    """What fits on a CUDA card of each size (GB as sold, less the CUDA context's ~0.5 GiB)."""
    rows = []
    fp = published(model_version)
    for gb in cards_gb:
        plan = new_plan("cuda", int(gb * 10**9 - 0.5 * GIB))
        plan.source = f"a {gb} GB card"
        slots = plan.slots_alone(fp, 256)
        resident = 0
        while plan.free >= fp.total(max_batch):
            plan.models[f"m{resident}"] = Holding(fp, max_batch)
            resident += 1
        alone = replace(plan, models={})
        if slots:
            alone.models["one"] = Holding(fp, min(slots, max_batch))
        rows.append(
            {
                "card_gb": gb,
                "models": resident,
                "slots_alone": slots,
                "longest_clip_s": alone.longest_clip(fp.streams) if slots else 0,
            }
        )
    return rows


def card_table_markdown(model_version: str = "stereo-melody-large", max_batch: int = 8) -> str:
    fp = published(model_version)
    lines = [
        f"| card | `{model_version}` resident at {max_batch} slots | slots for one model | longest clip |",
        "|---|---|---|---|",
    ]
    for row in card_table(model_version=model_version, max_batch=max_batch):
        clip = row["longest_clip_s"]
        lines.append(
            f"| {row['card_gb']} GB | {row['models']} | {row['slots_alone']} | {clip // 60} min {clip % 60:02d} s |"
            if row["slots_alone"]
            else f"| {row['card_gb']} GB | 0 | 0 (needs {math.ceil(fp.total(1) / 1e9)} GB) | - |"
        )
    return "\n".join(lines)
