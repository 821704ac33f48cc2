"""`SlotBatch`: the requests of one LM decoding together on one device (continuous batching).

A request takes a free slot for each of its windows: its prompt is prefilled into the slot's two
cache rows and its first token sampled; from then on every `step()` advances every live slot by
one token, and a slot whose window is complete is read back and freed between two steps. Nothing
is reallocated when requests come and go. The host mirrors each slot's offset, so choosing the
step's shape never waits on the device.

How a step runs is the step mode (`resolve_mode`). "eager" runs `decode_step` at the exact shape of the
live slots. The other modes run it at the shape of a bucket, (slots, cache length) rounded up to the
next of a few fixed sizes, through a `Capture`: "graph" replays a CUDA graph per bucket, "compile" runs
`torch.compile(decode_step)`, inside those graphs on CUDA and called directly on CPU. `warm_up`
captures every bucket while no slot is live; a window too long for the caches (`_make_room`) grows
them and drops every captured step, and each bucket is captured again at its first step after that,
live slots and all. A `Capture` of one's own (`musicgen_local.testing.capture.RecordingCapture`)
runs the bucketed path on CPU, which is how the CUDA path is tested without a GPU.

LoRA fine-tunes of the model decode in the same batch (`adapters.py`): a request's adapter takes one of
the model's adapter slots at admission (`has_room(lora)` says whether one is free), and each bucket has
two captured steps, chosen on the host at every step: the base alone while no live row has an adapter,
and the base with the adapters' products while some does. A base-only batch so pays nothing for them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ...settings import Settings
from . import rows_kernel
from .model import StaticLM
from .step import PLAIN, TOP_K, TOP_P, UNKNOWN, SamplingParams, SlotState, decode_step, guide, sample, write

log = logging.getLogger(__name__)
ALL_MODES = frozenset({PLAIN, TOP_K, TOP_P})
MODES = ("auto", "eager", "graph", "compile")


@dataclass
class Window:
    """One window of one request: what to decode, how, and with whose random stream."""

    conditions: dict  # condition_tensors of [conditional, unconditional] (LMModel's CFG layout)
    prompt: torch.Tensor | None  # [1, K, P] codes the window starts from
    frames: int  # frames in the window, prompt included
    params: SamplingParams
    generator: torch.Generator  # the request's own: its tokens never depend on its neighbours
    lora: Lora | None = None  # a fine-tune of this model to decode with (its rows apply its adapter)


@dataclass(frozen=True)
class Lora:
    key: str  # names the fine-tune (its folder)
    tensors: dict  # parameter name -> (A [r, in], B [out, r]), as `tuned.Tuned.adapters` reads them
    scale: float  # alpha / r


@dataclass
class _Slot:
    window: Window
    offset: int  # next pattern step to sample (host mirror of SlotState.offset)
    end: int  # pattern steps in the window
    start: int  # first sampled step
    prefix: int  # prepended condition positions
    cross: int  # cross-attention positions (text conditions) of this slot's rows


def resolve_mode(mode: str, device: torch.device, capture: Capture | None = None) -> str:
    """The step mode that runs: "graph" needs CUDA or a `capture` of one's own, "compile" CUDA or the CPU;
    "auto" is "graph" on CUDA or with a capture, "eager" elsewhere."""
    if mode not in MODES:
        raise ValueError(f"step mode must be one of {MODES}, not {mode!r}")
    if mode == "auto":
        return "graph" if device.type == "cuda" or capture is not None else "eager"
    if mode == "graph" and device.type != "cuda" and capture is None:
        log.info("step mode graph needs CUDA; stepping eagerly")
        return "eager"
    if mode == "compile" and device.type not in ("cuda", "cpu") and capture is None:
        log.info("step mode compile runs on CUDA or the CPU, not %s; stepping eagerly", device.type)
        return "eager"
    return mode


class Replayable(Protocol):
    def replay(self) -> None: ...


class Capture(Protocol):
    """How a SlotBatch makes the step at one bucket into something it replays at every step of that
    bucket. `step` is the step at the bucket's shape (masked form), reading and writing only the batch's
    preallocated tensors; `capture` is called with no slot marked live, so each run of `step` it makes
    writes nothing that matters."""

    def capture(self, rows: int, length: int, step: Callable[[], None], adapters: bool = False) -> Replayable: ...


class CudaGraphs:
    """The step as a CUDA graph per bucket, every graph in one memory pool.

    Warm-up runs and capture happen on the batch's device, on a side stream of this object's own: no
    device loop sets its thread's current device (the loop of cuda:1 runs with cuda:0 current), and
    `torch.cuda.graph`'s default capture stream is one per process, made on whichever device was
    current at its first use. Capture errors are thread-local, so that the loop of another device
    keeps running, and capturing, meanwhile (global mode forbids its allocations and syncs)."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        self._pool = None
        self._stream: torch.cuda.Stream | None = None

    def capture(self, rows: int, length: int, step: Callable[[], None], adapters: bool = False) -> torch.cuda.CUDAGraph:
        with torch.cuda.device(self.device):
            self._stream = self._stream or torch.cuda.Stream()
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream), _autocast_without_cache():
                for _ in range(2):  # warm-up runs off the current stream, as capture wants
                    step()
            torch.cuda.current_stream().wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()  # replays on the current stream of the device it was captured on
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            with (
                torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"),
                _autocast_without_cache(),
            ):
                step()
        return graph


@dataclass
class Call:
    """A replay that runs the step function again."""

    step: Callable[[], None]

    def replay(self) -> None:
        self.step()


class Direct:
    """No capture: each replay calls the step (the compiled step, compiling at capture time, off CUDA)."""

    def capture(self, rows: int, length: int, step: Callable[[], None], adapters: bool = False) -> Call:
        step()
        return Call(step)


def _buckets(limit: int, first: int) -> list[int]:
    out, size = [], first
    while size < limit:
        out.append(size)
        size *= 2
    return [*out, limit]


class SlotBatch:
    """`capture`: how the bucketed modes capture the step (see `Capture`); None for the default: CUDA
    graphs on CUDA, and on CPU the compiled step called as it is. `loras`, `lora_rank`: the adapter
    slots (MUSICGEN_MAX_LORAS, MUSICGEN_MAX_LORA_RANK)."""

    def __init__(
        self,
        lm,
        slots: int,
        max_frames: int,
        prefix: int = 0,
        mode: str = "auto",
        products: str = "rows",
        capture: Capture | None = None,
        loras: int = Settings.max_loras,
        lora_rank: int = Settings.max_lora_rank,
    ):
        self.lm = lm
        self.delays = list(lm.pattern_provider.delays)
        self.max_delay = max(self.delays)
        self.K, self.card = lm.num_codebooks, lm.card
        max_steps = 1 + max_frames + self.max_delay
        self.static = StaticLM(lm, 2 * slots, prefix + max_steps, products=products, loras=loras, lora_rank=lora_rank)
        logits_dtype = self.static.dtype
        self.state = SlotState(
            slots, self.K, self.card, max_steps, self.delays, lm.special_token_id, logits_dtype, self.static.device
        )
        self.slots: list[_Slot | None] = [None] * slots
        self.mode = resolve_mode(mode, self.static.device, capture)
        if capture is None and self.mode != "eager":
            capture = CudaGraphs(self.static.device) if self.static.device.type == "cuda" else Direct()
        self.capture = capture
        if self.mode == "compile" and self.static.linear is rows_kernel.linear:
            self.static.linear = _rows_linear  # dynamo cannot trace a ctypes call: one opaque op instead
            self.static.adapters.kernel = _rows_lora_add
        self._graphs: dict[tuple[int, int, bool], Replayable] = {}  # (slots, cache length, adapters) -> step
        self._compiled = None

    # -------------------------------------------------------------------------------- slots

    @property
    def live(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is not None]

    def has_room(self, lora: Lora | None = None) -> bool:
        """Whether `admit` can take a window now: a slot is free and, for a fine-tune, its adapter is
        resident or an adapter slot is free of live rows (else it waits). Also True for an adapter the slots
        can never hold (see `refusal`): `admit` then fails it at once with the reason."""
        if None not in self.slots:
            return False
        adapters = self.static.adapters
        return lora is None or adapters.refusal(lora) is not None or adapters.can_take(lora.key)

    def refusal(self, lora: Lora) -> str | None:
        """Why this batch can never decode with this adapter (rank above MUSICGEN_MAX_LORA_RANK, weights its
        slots do not hold, no slots at all), for people; None when it can."""
        return self.static.adapters.refusal(lora)

    def resident_adapters(self) -> list[str]:
        """The keys of the adapters in this batch's slots, most recently used first (live or kept)."""
        return self.static.adapters.resident()

    def pin_adapter(self, name: str, lora: Lora) -> None:
        """Keep `lora` in an adapter slot for deployment `name` until `unpin_adapter(name)` (see AdapterSlots.pin);
        raises UserError where it cannot."""
        self.static.adapters.pin(name, lora)

    def unpin_adapter(self, name: str) -> None:
        self.static.adapters.unpin(name)

    def pinned_adapters(self) -> dict[str, str]:
        """Deployment -> the adapter it keeps in this batch's slots."""
        return self.static.adapters.pinned_keys()

    @torch.no_grad()
    def admit(self, window: Window) -> int:
        """Prefill a window into a free slot and sample its first token; returns the slot. Raises UserError
        for an adapter the slots cannot hold; ask `has_room(window.lora)` first."""
        slot = self.slots.index(None)
        adapter = None if window.lora is None else self.static.adapters.acquire(window.lora)
        prompt = window.prompt
        if prompt is None:
            prompt = torch.zeros((1, self.K, 0), dtype=torch.long, device=self.static.device)
        sequence = self._sequence(prompt[0], window.frames)  # [K, S]
        start = prompt.shape[-1] + 1  # the first step holding an unknown frame (delay pattern)
        x, cross = self._fused_input(sequence[:, :start], window.conditions)  # [2, prefix + start, C]
        prefix = x.shape[1] - start
        self._make_room(prefix + sequence.shape[-1], 0 if cross is None else cross.shape[1])
        rows = slice(2 * slot, 2 * slot + 2)
        self.static.adapters.assign(rows, adapter)
        try:
            logits = self.static.prefill(rows, x, cross)  # [2, K, card]
        except BaseException:
            self.static.adapters.assign(rows, None)  # e.g. out of memory: no free slot's rows keep the adapter
            raise
        self.state.load(slot, sequence, start, window.frames, prefix, window.params)
        self._draw_noise(slot, window)
        one = slice(slot, slot + 1)
        tokens = sample(guide(logits, self.state.cfg[one]), _view(self.state, one), 1, {window.params.mode})
        write(_view(self.state, one), tokens, 1)
        self.slots[slot] = _Slot(
            window, start + 1, sequence.shape[-1], start, prefix, 0 if cross is None else cross.shape[1]
        )
        return slot

    def release(self, slot: int) -> None:
        self.slots[slot] = None
        self.state.clear(slot)
        self.static.adapters.assign(slice(2 * slot, 2 * slot + 2), None)  # the adapter stays in its slot

    def done(self, slot: int) -> bool:
        s = self.slots[slot]
        return s.offset >= s.end

    def steps(self, slot: int) -> tuple[int, int]:
        """(steps sampled, steps in the window) for progress: the reference's callback counts."""
        s = self.slots[slot]
        return s.offset - s.start, s.end - s.start

    def final_frames(self, slot: int) -> int:
        """Frames of the window whose every codebook is sampled (the delay pattern finalises frame t
        once step t + 1 + max delay is sampled)."""
        s = self.slots[slot]
        return max(0, min(s.window.frames, s.offset - 1 - self.max_delay))

    def codes(self, slot: int, frames: int | None = None) -> torch.Tensor:
        """The window's codes [1, K, frames] (prompt included), read back from the pattern sequence."""
        s = self.slots[slot]
        frames = s.window.frames if frames is None else frames
        index = torch.arange(frames, device=self.static.device)[None] + 1 + self.state.delays[:, None]  # [K, T]
        return self.state.seq[slot].gather(1, index)[None]

    # -------------------------------------------------------------------------------- steps

    @torch.no_grad()
    def step(self) -> None:
        """One token for every live slot."""
        live = self.live
        for slot in live:
            self._draw_noise(slot, self.slots[slot].window)
        n = live[-1] + 1
        length = max(self.slots[i].prefix + self.slots[i].offset for i in live)
        adapters = self.static.adapters.live  # the host knows: no row has one, no adapter products
        if self.mode == "eager":
            self._eager(live, n, length, adapters)
        else:
            self._replay(n, length, adapters)
        for slot in live:
            self.slots[slot].offset += 1

    def _eager(self, live: list[int], n: int, length: int, adapters: bool) -> None:
        positions = {self.slots[i].prefix + self.slots[i].offset - 1 for i in live}
        cross = [self.slots[i].cross for i in live]
        exact = len(positions) == 1 and length - 1 in positions and len(set(cross)) == 1 and len(live) == n
        modes = frozenset(self.slots[i].window.params.mode for i in live)
        decode_step(self.static, self.state, n, length, max(cross), not exact, modes, adapters)

    def _bucket(self, n: int, length: int) -> tuple[int, int]:
        rows = next(b for b in _buckets(len(self.slots), 1) if b >= n)
        return rows, next(b for b in _buckets(self.static.max_len, 256) if b >= length)

    def _replay(self, n: int, length: int, adapters: bool) -> None:
        key = (*self._bucket(n, length), adapters)
        graph = self._graphs.get(key) or self._capture(*key)
        graph.replay()

    @torch.no_grad()
    def warm_up(self) -> int:
        """Capture the step for every bucket while no slot is live, with and without the adapters' products
        (the latter only where there are adapter slots); returns how many (0 when eager)."""
        if self.mode == "eager":
            return 0
        assert not self.live, "warm up only while no slot is live: then nothing needs capturing while decoding"
        variants = (False, True) if self.static.adapters.slots else (False,)
        for rows in _buckets(len(self.slots), 1):
            for length in _buckets(self.static.max_len, 256):
                for adapters in variants:
                    self._capture(rows, length, adapters)
        return len(self._graphs)

    def _capture(self, n: int, length: int, adapters: bool = False) -> Replayable:
        """The step at this bucket, captured; also at a step while slots are live (after `_make_room`).
        The runs of the step capturing makes write nothing that matters: with no slot marked live no
        token is written and no offset moves, and the only cache position written in each row is the
        one the row's next step (or a free slot's prefill) writes again before reading it."""
        live = self.state.live.clone()
        self.state.live.zero_()
        try:
            graph = self.capture.capture(n, length, self._step_fn(n, length, adapters), adapters=adapters)
        finally:
            self.state.live.copy_(live)
        self._graphs[(n, length, adapters)] = graph
        return graph

    def _step_fn(self, n: int, length: int, adapters: bool) -> Callable[[], None]:
        """The step at a bucket: its rows and cache length, every cross position the caches hold (so
        it is captured again when they grow), masked, every sampling mode; with or without the adapters'
        products (which read the slots' tables and each row's slot on the device, whatever they hold)."""
        cross = self.static.cross_len
        step = decode_step
        if self.mode == "compile":
            self._compiled = self._compiled or torch.compile(decode_step)  # on CUDA: its kernels, in our graphs
            step = self._compiled

        return lambda: step(self.static, self.state, n, length, cross, True, ALL_MODES, adapters)

    # -------------------------------------------------------------------------------- pieces

    def _sequence(self, prompt: torch.Tensor, frames: int) -> torch.Tensor:
        """The delay-pattern sequence [K, 1 + frames + max delay] of a window: codebook k of frame t
        at step t + 1 + delay_k, the prompt's codes known, the rest UNKNOWN, empty places special."""
        codes = torch.full((self.K, frames), UNKNOWN, dtype=torch.long, device=self.static.device)
        codes[:, : prompt.shape[-1]] = prompt
        sequence = torch.full(
            (self.K, 1 + frames + self.max_delay), self.lm.special_token_id, dtype=torch.long, device=self.static.device
        )
        index = torch.arange(frames, device=self.static.device)[None] + 1 + self.state.delays[:, None]
        return sequence.scatter_(1, index, codes)

    def _fused_input(self, columns: torch.Tensor, conditions: dict):
        """Embedded prompt columns [K, S0] for both rows, fused with the conditions as LMModel.forward
        fuses them: (x [2, prefix + S0, C], cross-attention source [2, Tc, C] or None)."""
        seq = columns[None].expand(2, -1, -1)
        x = sum(self.lm.emb[k](seq[:, k]) for k in range(self.K))  # [2, S0, C]
        return self.lm.fuser(x, conditions)

    def _make_room(self, length: int, cross_length: int) -> None:
        """A window longer than the caches (a very long prompt): reallocate them and drop every captured
        step (a CUDA graph replays on the buffers it was captured over); each bucket is captured again at
        its next step."""
        grown = False
        if length > self.static.max_len:
            self.static.grow(_round_up(length))
            grown = True
        if cross_length > self.static.cross_len:
            self.static.grow_cross(_round_up(cross_length))
            grown = True
        if grown:
            self._graphs.clear()
            log.info(
                "decode caches grown to %d positions, %d cross positions", self.static.max_len, self.static.cross_len
            )

    def _draw_noise(self, slot: int, window: Window) -> None:
        """The Exp(1) noise `torch.multinomial` would draw for this slot's step, from its generator."""
        self.state.noise[slot].exponential_(1, generator=window.generator)


@torch.library.custom_op("musicgen_local::rows_linear", mutates_args=())
def _rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`rows_kernel.linear` as an operator: torch.compile keeps it whole in the compiled step."""
    return rows_kernel.linear(x, weight, bias)


@_rows_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("musicgen_local::rows_lora_add", mutates_args=("y",))
def _rows_lora_add(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slot: torch.Tensor, rank: torch.Tensor
) -> None:
    """`rows_kernel.lora_add` as an operator that writes y in place, for the compiled step."""
    rows_kernel.lora_add(y, x, a, b, slot, rank)


@_rows_lora_add.register_fake
def _(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slot: torch.Tensor, rank: torch.Tensor):
    return None


def _round_up(n: int) -> int:
    return 1 << (n - 1).bit_length()


class _view:  # noqa: N801 - reads like a function: the state of some slots, as the step functions take it
    """SlotState restricted to a slice of slots (slot `s` becomes slot 0)."""

    def __init__(self, state: SlotState, slots: slice) -> None:
        for name, value in vars(state).items():  # every field, so a new one cannot escape the view
            setattr(self, name, value if name in SlotState.SHARED else value[slots])


def _autocast_without_cache():
    """The step runs in the fp16 autocast MusicGen decodes in; a graph capture must not fill autocast's
    cast cache (its tensors would be freed under the graph), so the same dtype with the cache off."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
