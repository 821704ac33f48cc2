"""LoRA adapters as fixed slots of the fast decoder (`engine/fast/adapters.py`), through `SlotBatch`'s public
seams: a batch mixing the base model and four fine-tunes replays its captured buckets (the CUDA-graph path,
through the recording stand-in, and `torch.compile` for real), and each request gives, byte for byte, the
codes it gives alone, whichever adapter slot its adapter sits in and whatever decodes beside it; the slots
are a cache (least recently used replaced, a request whose adapter cannot get a slot waits); adapters the
slots cannot hold are refused with a message naming the setting.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from musicgen_local.engine.fast import Lora, SamplingParams, SlotBatch, Window, decode
from musicgen_local.engine.fast.adapters import target_names
from musicgen_local.engine.memory import Footprint
from musicgen_local.errors import UserError
from musicgen_local.testing.capture import RecordingCapture
from tests.engine.test_fast_decoder import conditions
from tests.engine.test_step_modes import recording_logits

FRAMES = 30
TEXTS = ["lofi", "jazz trio", "epic orchestral soundtrack with brass", "ambient pads", "drum and bass"]


@pytest.fixture(scope="module")
def lm(tiny_weights):
    from audiocraft.models.builders import get_lm_model

    from musicgen_local.engine.fast.model import lay_out_for_cpu
    from musicgen_local.testing.tiny import lm_cfg

    torch.manual_seed(1)
    lm = get_lm_model(lm_cfg(False, False)).eval()
    lay_out_for_cpu(lm)
    return lm


def random_lora(lm, seed: int, rank: int, strength: float = 0.5, names=None) -> Lora:
    """An adapter with B far from zero on every target (or on `names`): it changes what the model says."""
    g = torch.Generator().manual_seed(seed)
    params = dict(lm.named_parameters())
    tensors = {}
    for name in names or target_names(lm):
        out_features, in_features = params[name].shape
        tensors[name] = (
            torch.randn(rank, in_features, generator=g),
            strength * torch.randn(out_features, rank, generator=g),
        )
    return Lora(f"adapter-{seed}", tensors, 2.0 / rank)


@pytest.fixture(scope="module")
def loras(lm) -> list[Lora]:
    return [random_lora(lm, seed, rank) for seed, rank in zip(range(1, 5), [4, 8, 16, 16], strict=True)]


def window(lm, i: int, lora: Lora | None, frames: int = FRAMES) -> Window:
    params = SamplingParams(1.0, 250, 0.0, 3.0) if i % 2 else SamplingParams(1.0, 0, 0.0, 3.0)
    text = TEXTS[i % len(TEXTS)]
    return Window(conditions(lm, "mono", text), None, frames, params, torch.Generator().manual_seed(i), lora)


def alone(lm, i: int, lora: Lora | None, frames: int = FRAMES, **batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The window's codes decoded alone, in a batch of its own (its adapter in slot 0), and the logits of its
    two rows at each step."""
    slots = SlotBatch(lm, 8, max_frames=FRAMES, **batch)
    slots.warm_up()
    logits = recording_logits(slots)
    return decode(slots, [window(lm, i, lora, frames)])[0], [step[:2] for step in logits]


def mixed(lm, loras) -> list[Lora | None]:
    """The base and four fine-tunes, the adapters admitted in another order than their seeds, two requests of
    one adapter side by side (their four rows share its slot: the kernel does them together)."""
    return [None, loras[3], loras[1], loras[1], None, loras[0], loras[2]]


@pytest.mark.parametrize("products", ["rows", "torch"])
def test_a_mixed_batch_replays_its_buckets_and_each_request_is_as_alone(lm, loras, products):
    """Base and four adapters in one batch: every step replays a captured bucket, the adapters' variant while
    an adapter row is live; each request's logits at every step, and so its codes, are bit for bit those it
    gives alone, where its adapter sat in slot 0 (here in slots 0 to 3), and the base requests' those the base
    gives."""
    capture = RecordingCapture()
    batch = SlotBatch(lm, 8, max_frames=FRAMES, mode="graph", products=products, capture=capture)
    batch.warm_up()
    warm = list(capture.captured)
    logits = recording_logits(batch)
    which = mixed(lm, loras)
    codes = decode(batch, [window(lm, i, lora) for i, lora in enumerate(which)])
    assert capture.captured == warm  # nothing captured while decoding: it replayed the warm buckets
    assert capture.replayed and all(bucket[-1] == "adapters" for bucket in capture.replayed)
    assert batch.resident_adapters() == [loras[2].key, loras[0].key, loras[1].key, loras[3].key]

    for i, lora in enumerate(which):
        own_codes, own_logits = alone(lm, i, lora, mode="graph", products=products, capture=RecordingCapture())
        assert torch.equal(codes[i], own_codes), i
        assert len(own_logits) == len(logits)
        assert all(torch.equal(step[2 * i : 2 * i + 2], own) for step, own in zip(logits, own_logits, strict=True)), i
        if lora is not None:  # else nothing is proven: the adapter changes what the request says
            assert not torch.equal(own_codes, alone(lm, i, None, mode="graph", capture=RecordingCapture())[0])


def test_a_slot_an_adapters_request_left_decodes_the_base(lm, loras):
    """A base request admitted into the slot an adapter's request left, while another adapter's request
    decodes beside it (the adapters' steps run): its rows have no adapter, it gives what it gives alone."""
    batch = SlotBatch(lm, 2, max_frames=FRAMES)
    windows = [window(lm, 0, loras[0], FRAMES), window(lm, 1, loras[1], 10), window(lm, 2, None, 15)]
    codes = decode(batch, windows)  # the third joins in slot 1 once the second is done; the first still decodes
    assert torch.equal(codes[2], alone(lm, 2, None, 15)[0])


def test_a_base_only_batch_replays_the_base_steps(lm, loras):
    """While no live row has an adapter the batch replays the steps without the adapters' products, also
    with adapters resident in its slots; and a slot an adapter's request left decodes the base again."""
    capture = RecordingCapture()
    batch = SlotBatch(lm, 2, max_frames=FRAMES, mode="graph", capture=capture)
    first = decode(batch, [window(lm, 0, loras[0])])[0]
    replays = len(capture.replayed)
    assert batch.resident_adapters() == [loras[0].key]
    again = decode(batch, [window(lm, 0, None)])[0]  # the same slot, its adapter still resident
    assert all(bucket[-1] == "adapters" for bucket in capture.replayed[:replays])
    assert all(len(bucket) == 2 for bucket in capture.replayed[replays:])
    assert torch.equal(again, alone(lm, 0, None, mode="graph", capture=RecordingCapture())[0])
    assert not torch.equal(first, again)


def first_step_logits(batch: SlotBatch, windows: list[Window]) -> torch.Tensor:
    """The logits [2 x windows, K, card] of the batch's first step after admitting the windows."""
    for w in windows:
        batch.admit(w)
    seen, step = [], batch.static.step
    batch.static.step = lambda *args, **kwargs: seen.append(step(*args, **kwargs)) or seen[-1]
    batch.step()
    return seen[0]


def test_an_adapter_in_a_slot_computes_what_its_merged_weights_do(lm, loras):
    """The first step's logits of an adapted request are those of the base with `W + scale B A` (to float32
    rounding): the slots apply each adapter, its scale and its zero-padded rank, to its own rows only."""
    lora = loras[0]  # rank 4, in rank-16 slots
    ours = first_step_logits(SlotBatch(lm, 2, max_frames=FRAMES), [window(lm, 1, None), window(lm, 2, lora)])
    params = dict(lm.named_parameters())
    saved = {name: params[name].detach().clone() for name in lora.tensors}
    try:
        with torch.no_grad():
            for name, (a, b) in lora.tensors.items():
                params[name].add_(lora.scale * b @ a)
        theirs = first_step_logits(
            SlotBatch(lm, 2, max_frames=FRAMES, loras=0), [window(lm, 1, None), window(lm, 2, None)]
        )
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
    torch.testing.assert_close(ours[2:], theirs[2:], rtol=1e-4, atol=1e-4)  # the adapted request's two rows
    assert (ours[:2] - theirs[:2]).abs().max() > 1e-2  # the base request's rows have no adapter


def test_the_slots_are_a_cache_least_recently_used_replaced(lm, loras):
    batch = SlotBatch(lm, 2, max_frames=FRAMES, loras=2)
    a, b, c = loras[:3]
    for lora in (a, b):
        batch.release(batch.admit(window(lm, 0, lora)))
    assert batch.resident_adapters() == [b.key, a.key]  # kept after their requests, most recent first
    batch.release(batch.admit(window(lm, 0, a)))  # resident: no slot changes hands
    assert batch.resident_adapters() == [a.key, b.key]
    batch.release(batch.admit(window(lm, 0, c)))  # b is the least recently used
    assert batch.resident_adapters() == [c.key, a.key]


def test_a_pinned_adapter_keeps_its_slot_and_one_slot_stays_for_the_others(lm, loras):
    """A deployment's adapter is loaded when pinned and never replaced while pinned, however long ago it was used;
    the other fine-tunes take turns in the slot left; a second deployment that would take that slot is refused
    naming the setting; unpinned, the adapter is replaced like any other."""
    batch = SlotBatch(lm, 2, max_frames=FRAMES, loras=2)
    a, b, c, d = loras
    batch.pin_adapter("alice/prod", a)
    assert batch.resident_adapters() == [a.key] and batch.pinned_adapters() == {"alice/prod": a.key}
    for lora in (b, c, d):
        batch.release(batch.admit(window(lm, 0, lora)))
    assert batch.resident_adapters() == [d.key, a.key]  # without the pin, b then c then d would have replaced a
    refused = r"MUSICGEN_MAX_LORAS=2\): one slot always stays free for other fine-tunes, .* Raise MUSICGEN_MAX_LORAS"
    with pytest.raises(UserError, match=refused):
        batch.pin_adapter("bob/prod", b)
    batch.pin_adapter("carol/prod", a)  # the same adapter: it takes no other slot
    batch.unpin_adapter("alice/prod")
    batch.unpin_adapter("carol/prod")
    batch.release(batch.admit(window(lm, 0, b)))  # d was used last: a is the least recently used now
    assert batch.resident_adapters() == [b.key, d.key]


def test_an_adapter_pinned_while_every_slot_is_busy_takes_the_first_one_freed(lm, loras):
    batch = SlotBatch(lm, 3, max_frames=FRAMES, loras=2)
    a, b, c, d = loras
    live = [batch.admit(window(lm, i, lora)) for i, lora in enumerate((b, c))]
    batch.pin_adapter("alice/prod", a)  # no free slot: it waits for one, before any other adapter
    assert a.key not in batch.resident_adapters() and not batch.has_room(d)
    batch.release(live[0])
    assert set(batch.resident_adapters()) == {a.key, c.key} and not batch.has_room(d)
    batch.release(live[1])
    codes = decode(batch, [window(lm, 2, a)])[0]  # its requests decode in the slot it keeps, as alone
    assert torch.equal(codes, alone(lm, 2, a, loras=2)[0])


def test_a_request_whose_adapter_cannot_get_a_slot_waits(lm, loras):
    """One adapter slot, three fine-tunes: `has_room` says no while another adapter's request is live, yes to
    the base and to the resident adapter; `decode` (which asks it) finishes them all, each as alone."""
    batch = SlotBatch(lm, 3, max_frames=FRAMES, loras=1)
    batch.admit(window(lm, 0, loras[0]))
    assert not batch.has_room(loras[1]) and batch.has_room(loras[0]) and batch.has_room(None)
    with pytest.raises(RuntimeError, match="can_take"):
        batch.admit(window(lm, 1, loras[1]))  # a loop that did not ask
    assert batch.live == [0]  # and nothing changed
    batch.release(0)
    assert batch.has_room(loras[1])

    which = [loras[0], loras[1], None, loras[2]]
    codes = decode(SlotBatch(lm, 3, max_frames=FRAMES, loras=1), [window(lm, i, lora) for i, lora in enumerate(which)])
    assert [c.tolist() for c in codes] == [alone(lm, i, lora, loras=1)[0].tolist() for i, lora in enumerate(which)]


def test_a_failed_admission_leaves_its_adapter_slot_free(lm, loras):
    batch = SlotBatch(lm, 2, max_frames=FRAMES, loras=1)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("no room for the prefill")

    prefill, batch.static.prefill = batch.static.prefill, out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        batch.admit(window(lm, 0, loras[0]))
    batch.static.prefill = prefill
    assert batch.live == [] and batch.has_room(loras[1])  # its adapter stays resident, in a slot nobody uses
    codes = decode(batch, [window(lm, 1, loras[1])])[0]
    assert batch.resident_adapters() == [loras[1].key]
    assert torch.equal(codes, alone(lm, 1, loras[1], loras=1)[0])


def test_adapters_the_slots_cannot_hold_are_refused_with_the_setting_named(lm, loras):
    batch = SlotBatch(lm, 2, max_frames=FRAMES, loras=2, lora_rank=8)
    linear1 = dict(lm.named_parameters())["transformer.layers.0.linear1.weight"]
    hidden, dim = linear1.shape
    cases = [
        (loras[2], "rank 16; the fast decoder's adapter slots hold rank 8 at most (MUSICGEN_MAX_LORA_RANK=8)"),
        (
            Lora("bogus", {"transformer.layers.7.linear1.weight": (torch.randn(4, dim), torch.randn(hidden, 4))}, 1.0),
            "adapts `transformer.layers.7.linear1.weight`, which this model's adapter slots do not hold",
        ),
        (
            Lora("other", {"transformer.layers.0.linear1.weight": (torch.randn(4, 99), torch.randn(hidden, 4))}, 1.0),
            f"has A [4, 99] and B [{hidden}, 4]; this model needs A [r, {dim}] and B [{hidden}, r]",
        ),
    ]
    for lora, message in cases:
        assert batch.has_room(lora)  # admission goes ahead, and fails it at once rather than making it wait
        assert message in batch.refusal(lora)
        with pytest.raises(UserError) as refused:
            batch.admit(window(lm, 0, lora))
        assert message in str(refused.value)
        assert batch.live == [] and batch.resident_adapters() == []
    with pytest.raises(UserError, match="MUSICGEN_MAX_LORAS=0"):
        SlotBatch(lm, 2, max_frames=FRAMES, loras=0).admit(window(lm, 0, loras[0]))
    assert batch.refusal(loras[0]) is None


def test_the_memory_plan_counts_the_adapter_slots(lm):
    """`Footprint.adapters()` (slots x rank x (in + out) of every weight an adapter may adapt x dtype bytes),
    from the architecture alone, is what a batch allocates for its slots; and `total` counts it."""
    layer = lm.transformer.layers[0]
    batch = SlotBatch(lm, 2, max_frames=FRAMES, loras=3, lora_rank=5)
    fp = Footprint(
        0, lm.dim, len(lm.transformer.layers), layer.self_attn.num_heads, lm.num_codebooks, lm.card, 100, 4,
        hidden=layer.linear1.out_features, lora_slots=3, lora_rank=5,
    )  # fmt: skip
    assert fp.adapters() == batch.static.adapters.bytes() > 0
    assert fp.total(2) - replace(fp, lora_slots=0).total(2) == fp.adapters()


@pytest.mark.slow
def test_compile_mode_mixed_batch_each_request_as_alone(lm, loras):
    """`torch.compile(decode_step)` at the bucket shapes, with the adapters' kernel as one operator in it."""
    torch._dynamo.reset()
    batch = SlotBatch(lm, 8, max_frames=FRAMES, mode="compile")
    batch.warm_up()
    which = mixed(lm, loras)
    with torch.compiler.set_stance("fail_on_recompile"):  # every step runs what warm-up compiled
        codes = decode(batch, [window(lm, i, lora) for i, lora in enumerate(which)])
        by_itself = [decode(batch, [window(lm, i, lora)])[0] for i, lora in enumerate(which)]
    assert [c.tolist() for c in codes] == [c.tolist() for c in by_itself]
    assert not torch.equal(by_itself[1], alone(lm, 1, None)[0])
