"""The fast decoder's bucketed step modes on CPU: the CUDA-graph path through a recording stand-in
(`musicgen_local.testing.capture`), and `MUSICGEN_STEP_MODE=compile` for real.

What a CUDA graph would run is the step at its bucket's shape in the masked form; the stand-in runs
exactly that, eagerly, so which buckets `SlotBatch` captures and replays, and what it computes with
them, are checked here without a GPU: every bucket at warm-up, the smallest bucket that holds the live
slots at each step, the eager decoder's results, and every step captured again, at the new sizes,
after a long prompt grows the caches.

The bucketed step is the eager one's maths but not its bits: attention over 256 cache positions, most
of them masked, sums in another order than over the 23 in use (CPU SDPA's reductions depend on the
length), so logits differ in the last place (< 1e-6 on these models) and a sampled token can, rarely,
land the other side of a tie (1 in ~1500 on the stereo model below). So the bucketed batch is compared
with an eager one in lockstep: the same logits to 1e-5 at every step, the same tokens but for such
ties, each step fed the bucketed batch's tokens so that a tie does not change the rest of a window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

from musicgen_local.engine.fast import SamplingParams, SlotBatch, Window, resolve_mode
from musicgen_local.engine.fast.batch import _buckets
from musicgen_local.testing.capture import RecordingCapture
from tests.engine.test_fast_decoder import KINDS, conditions

LONG_TEXT = " ".join(["an epic orchestral soundtrack with soaring brass, strings and thundering drums"] * 6)


@pytest.fixture(scope="module")
def lms(tiny_weights):
    from audiocraft.models.builders import get_lm_model

    from musicgen_local.engine.fast.model import lay_out_for_cpu
    from musicgen_local.testing.tiny import lm_cfg

    torch.manual_seed(1)
    lms = {kind: get_lm_model(lm_cfg(*flags)).eval() for kind, flags in KINDS.items()}
    for lm in lms.values():
        lay_out_for_cpu(lm)
    return lms


def window(lm, kind, seed, frames, text="lofi", params=SamplingParams(), prompt=None) -> Window:  # noqa: B008
    return Window(conditions(lm, kind, text), prompt, frames, params, torch.Generator().manual_seed(seed))


def three_requests(lm, kind) -> list[tuple[int, Window]]:
    """Other texts, lengths, sampling and seeds: through two slots the third joins when the first leaves."""
    return [
        (0, window(lm, kind, 1, 60, "lofi", SamplingParams(1.0, 250, 0.0, 3.0))),
        (0, window(lm, kind, 2, 90, "epic orchestral soundtrack with brass", SamplingParams(0.7, 0, 0.9, 5.0))),
        (0, window(lm, kind, 3, 30, "jazz trio", SamplingParams(1.0, 0, 0.0, 1.0))),
    ]


def recording_logits(batch: SlotBatch) -> list[torch.Tensor]:
    """Every step's logits [rows of the step, K, card], as the batch's steps compute them."""
    seen, step = [], batch.static.step

    def recorded(*args, **kwargs):
        logits = step(*args, **kwargs)
        seen.append(logits.detach().clone())
        return logits

    batch.static.step = recorded
    return seen


@dataclass
class Lockstep:
    codes: list  # each window's codes from the batch under test
    worst: float | None  # largest difference of a live row's logits (None: not recorded)
    ties: int  # tokens sampled otherwise than by the eager batch
    tokens: int


def lockstep(batch: SlotBatch, eager: SlotBatch, arrivals: list, twins: list, logits: bool = True) -> Lockstep:
    """Both batches decode the same windows (`twins`: the same, with generators of their own), each
    (step, window) of `arrivals` admitted at that step or once a slot is free, each released once done;
    before each step the eager batch takes the other's tokens. `logits`: compare them too (not through
    a compiled step: recording them would be compiled into it)."""
    ours, theirs = (recording_logits(batch), recording_logits(eager)) if logits else (None, None)
    pending, running, codes, t = list(range(len(arrivals))), {}, [None] * len(arrivals), 0
    worst, ties, tokens = 0.0 if logits else None, 0, 0
    while pending or running:
        while pending and arrivals[pending[0]][0] <= t and batch.has_room():
            index = pending.pop(0)
            slot = batch.admit(arrivals[index][1])
            assert eager.admit(twins[index][1]) == slot
            running[slot] = index
        for slot in [s for s in running if batch.done(s)]:
            assert eager.done(slot)
            codes[running.pop(slot)] = batch.codes(slot)
            batch.release(slot)
            eager.release(slot)
        if running:
            live = batch.live
            assert eager.live == live
            eager.state.seq.copy_(batch.state.seq)
            batch.step()
            eager.step()
            if logits:
                rows = [r for s in live for r in (2 * s, 2 * s + 1)]
                worst = max(worst, float((ours[-1][rows] - theirs[-1][rows]).abs().max()))
            ties += int((batch.state.seq[live] != eager.state.seq[live]).sum())
            tokens += len(live) * batch.K
        t += 1
    return Lockstep(codes, worst, ties, tokens)


def assert_same_as_eager(run: Lockstep) -> None:
    assert run.worst is None or run.worst < 1e-5, run
    assert run.ties <= run.tokens // 500, run


def test_graph_mode_needs_cuda_or_a_capture(lms):
    cpu = torch.device("cpu")
    assert resolve_mode("graph", cpu) == "eager" and resolve_mode("auto", cpu) == "eager"
    assert resolve_mode("graph", cpu, RecordingCapture()) == "graph"
    assert resolve_mode("compile", cpu) == "compile"
    assert resolve_mode("auto", torch.device("cuda")) == "graph"
    batch = SlotBatch(lms["mono"], 2, max_frames=40, mode="graph")
    assert batch.mode == "eager" and batch.warm_up() == 0


@pytest.mark.parametrize(("slots", "loras"), [(3, 4), (8, 4), (3, 0)])
def test_warm_up_captures_every_bucket_once(lms, slots, loras):
    """Each bucket twice where there are adapter slots: the base alone, and with the adapters' products."""
    capture = RecordingCapture()
    batch = SlotBatch(lms["mono"], slots, max_frames=300, prefix=300, mode="graph", capture=capture, loras=loras)
    assert batch.static.max_len == 604
    seq, offset = batch.state.seq.clone(), batch.state.offset.clone()
    buckets = [(rows, length) for rows in _buckets(slots, 1) for length in _buckets(604, 256)]
    assert buckets[-1] == (slots, 604) and len(buckets) == {3: 9, 8: 12}[slots]
    variants = [()] + ([("adapters",)] if loras else [])
    expected = [(*bucket, *variant) for bucket in buckets for variant in variants]
    assert batch.warm_up() == len(expected)
    assert capture.captured == expected and capture.replayed == []
    assert torch.equal(batch.state.seq, seq) and torch.equal(batch.state.offset, offset)  # wrote nothing


def test_each_step_replays_the_smallest_bucket_holding_the_live_slots(lms):
    lm, capture = lms["mono"], RecordingCapture()
    batch = SlotBatch(lm, 8, max_frames=300, prefix=300, mode="graph", capture=capture)  # lengths 256, 512, 604
    prompt = torch.randint(0, 2048, (1, lm.num_codebooks, 254), generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        batch.admit(window(lm, "mono", seed, 300, prompt=prompt if seed == 0 else None))
    batch.step()  # slot 0 at position 255 (254 prompt frames, then one step): cache length 256
    batch.step()  # 257
    assert capture.replayed == [(4, 256), (4, 512)]  # 3 live slots of 8: the rows-4 bucket
    for seed in (3, 4):
        batch.admit(window(lm, "mono", seed, 300))
    batch.step()
    for slot in range(4):
        batch.release(slot)
    batch.step()  # slot 4 alone, near its start: still 5 rows, and the shortest length
    batch.release(4)
    batch.admit(window(lm, "mono", 5, 300))
    batch.step()
    assert capture.replayed[2:] == [(8, 512), (8, 256), (1, 256)]
    assert capture.captured == list(dict.fromkeys(capture.replayed))  # captured at first use (no warm-up)


@pytest.mark.parametrize("products", ["rows", "torch"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_captured_steps_compute_what_eager_steps_do(lms, kind, products):
    lm, capture = lms[kind], RecordingCapture()
    graphs = SlotBatch(lm, 2, max_frames=300, prefix=300, mode="graph", products=products, capture=capture)
    eager = SlotBatch(lm, 2, max_frames=300, prefix=300, mode="eager", products=products)
    warm = graphs.warm_up()
    assert_same_as_eager(lockstep(graphs, eager, three_requests(lm, kind), three_requests(lm, kind)))
    assert len(capture.captured) == warm and set(capture.replayed) <= set(capture.captured)
    assert {rows for rows, _ in capture.replayed} == {1, 2}  # both rows buckets were used


def test_a_longer_prefix_grows_the_cache_and_steps_are_captured_again(lms):
    """Melody LMs prepend their conditions: a longer description than the batch was sized for grows
    the self-attention cache while another request decodes."""
    lm, capture = lms["melody"], RecordingCapture()

    def arrivals():  # fresh generators per run
        return [
            (0, window(lm, "melody", 1, 40, "lofi")),
            (5, window(lm, "melody", 2, 40, "lofi hip hop beat with warm piano chords")),
            (100, window(lm, "melody", 3, 10, "lofi")),
        ]

    batch = SlotBatch(lm, 2, max_frames=40, prefix=240, mode="graph", capture=capture, loras=0)  # 284 positions
    warm = [(1, 256), (1, 284), (2, 256), (2, 284)]
    assert batch.warm_up() == 4 and capture.captured == warm
    eager = SlotBatch(lm, 2, max_frames=40, prefix=240, mode="eager")
    assert_same_as_eager(lockstep(batch, eager, arrivals(), arrivals()))
    assert batch.static.max_len == eager.static.max_len == 512
    # the second window (prefix 262) grew the cache: every step captured again, at the new lengths
    # (2 rows at length 512 while it decodes; the third window (prefix 240) at length 256 again)
    assert capture.captured == [*warm, (2, 512), (1, 256)]


def test_a_longer_text_grows_the_cross_attention_and_steps_are_captured_again(lms):
    lm, capture = lms["mono"], RecordingCapture()

    def arrivals():  # fresh generators per run
        return [
            (0, window(lm, "mono", 1, 40, "lofi")),
            (3, window(lm, "mono", 2, 20, LONG_TEXT)),
        ]

    batch = SlotBatch(lm, 2, max_frames=40, mode="graph", capture=capture, loras=0)  # 44 positions, 64 cross
    assert batch.warm_up() == 2 and batch.static.cross_len == 64
    eager = SlotBatch(lm, 2, max_frames=40, mode="eager")
    assert_same_as_eager(lockstep(batch, eager, arrivals(), arrivals()))
    assert batch.static.cross_len == eager.static.cross_len > 64
    # same buckets as before, captured again over the grown cross-attention: both rows, then the first
    # request alone once the second is done
    assert capture.captured == [(1, 44), (2, 44), (2, 44), (1, 44)]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "products"), [("melody", "torch"), ("stereo", "rows")])  # 30-60 s each
def test_compile_mode_on_cpu_computes_what_eager_does(lms, kind, products):
    """`torch.compile(decode_step)` called at the bucket shapes (inductor, C++ built with the machine's
    compiler); with the rows kernel as one opaque operator inside the compiled step."""
    lm = lms[kind]
    torch._dynamo.reset()
    prefix = 300 if kind == "melody" else 0  # room for the melody LM's prepended conditions
    compiled = SlotBatch(lm, 2, max_frames=100, prefix=prefix, mode="compile", products=products)
    assert compiled.mode == "compile"
    start = time.monotonic()
    warm = compiled.warm_up()
    print(f"compiled {warm} buckets in {time.monotonic() - start:.1f}s")
    eager = SlotBatch(lm, 2, max_frames=100, prefix=prefix, mode="eager", products=products)
    with torch.compiler.set_stance("fail_on_recompile"):  # every step runs what warm-up compiled
        run = lockstep(compiled, eager, three_requests(lm, kind), three_requests(lm, kind), logits=False)
    print(f"{run.ties} of {run.tokens} tokens sampled otherwise")
    assert_same_as_eager(run)
