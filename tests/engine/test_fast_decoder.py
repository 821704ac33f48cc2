"""The fast decoder against audiocraft's own `LMModel.generate` on tiny LMs (CPU, float32).

With one slot (two rows, the reference's own shapes), same checkpoint and seed: identical tokens for
every sampling mode, mono / stereo / melody, with and without guidance, from a continuation prompt,
across a re-prompted second window. With several slots, each request of a batch whose requests join
and leave at different steps (other texts, lengths, parameters and seeds) gets exactly the tokens it
gets alone in the same batch.
"""

from __future__ import annotations

import pytest
import torch

from musicgen_local.engine.fast import SamplingParams, SlotBatch, Window, decode

FRAMES = 100  # 2 s at 50 Hz
KINDS = {"mono": (False, False), "stereo": (True, False), "melody": (False, True)}
SAMPLING = {
    "top_k": SamplingParams(temp=1.0, top_k=250),
    "top_p": SamplingParams(temp=0.7, top_k=0, top_p=0.9, cfg_coef=5.0),
    "plain": SamplingParams(temp=1.2, top_k=0),
}


@pytest.fixture(scope="module")
def lms(tiny_weights):
    from audiocraft.models.builders import get_lm_model

    from musicgen_local.engine.fast.model import lay_out_for_cpu
    from musicgen_local.testing.tiny import lm_cfg

    torch.manual_seed(1)
    lms = {kind: get_lm_model(lm_cfg(*flags)).eval() for kind, flags in KINDS.items()}
    for lm in lms.values():
        lay_out_for_cpu(lm)  # as the engine loads them: both decoders compute with the same layout
    return lms


def attributes(kind: str, text: str = "lofi hip hop beat with warm piano chords"):
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    attr = ConditioningAttributes(text={"description": text})
    if kind == "melody":  # no melody given: the chroma conditioner's empty input, as the engine sends it
        attr.wav["self_wav"] = WavCondition(torch.zeros(1, 1, 1), torch.tensor([0]), sample_rate=[32000], path=[None])
    return [attr]


def conditions(lm, kind: str, text: str = "lofi hip hop beat with warm piano chords") -> dict:
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    attrs = attributes(kind, text)
    provider = lm.condition_provider
    return provider(provider.tokenize(attrs + ClassifierFreeGuidanceDropout(p=1.0)(attrs)))


def reference(lm, kind, seed, params: SamplingParams, frames=FRAMES, prompt=None, text=None):
    torch.manual_seed(seed)
    return lm.generate(
        prompt,
        attributes(kind, *([text] if text else [])),
        max_gen_len=frames,
        use_sampling=True,
        temp=params.temp,
        top_k=params.top_k,
        top_p=params.top_p,
        cfg_coef=params.cfg_coef,
    )


def window(lm, kind, seed, params: SamplingParams, frames=FRAMES, prompt=None, text=None) -> Window:
    return Window(
        conditions(lm, kind, *([text] if text else [])), prompt, frames, params, torch.Generator().manual_seed(seed)
    )


def batch_for(lm, slots: int = 1) -> SlotBatch:
    return SlotBatch(lm, slots, max_frames=300, prefix=300)


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("kind", KINDS)
def test_tokens_identical_to_reference(lms, kind, sampling):
    lm, params = lms[kind], SAMPLING[sampling]
    ours = decode(batch_for(lm), [window(lm, kind, 7, params)])[0]
    ref = reference(lm, kind, 7, params)
    assert ours.shape == ref.shape == (1, lm.num_codebooks, FRAMES)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["mono", "melody"])
def test_tokens_identical_without_guidance(lms, kind):
    params = SamplingParams(top_k=50, cfg_coef=1.0)  # only the conditional logits count
    assert torch.equal(
        decode(batch_for(lms[kind]), [window(lms[kind], kind, 3, params)])[0], reference(lms[kind], kind, 3, params)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_continuation_prompt_is_kept_and_tokens_identical(lms, kind):
    lm, params = lms[kind], SamplingParams(top_k=50)
    prompt = torch.randint(0, 2048, (1, lm.num_codebooks, 30), generator=torch.Generator().manual_seed(0))
    ours = decode(batch_for(lm), [window(lm, kind, 3, params, frames=80, prompt=prompt)])[0]
    assert torch.equal(ours[..., :30], prompt)
    assert torch.equal(ours, reference(lm, kind, 3, params, frames=80, prompt=prompt))


@pytest.mark.parametrize("kind", ["mono", "stereo"])
def test_windowed_generation_identical(lms, kind):
    """Two windows as the engine runs > 30 s: the second re-prompted with the tail of the first,
    continuing the same random stream."""
    lm, params = lms[kind], SamplingParams()
    torch.manual_seed(11)
    ref_first = lm.generate(None, attributes(kind), max_gen_len=FRAMES, use_sampling=True, top_k=250)
    ref_second = lm.generate(ref_first[..., -60:], attributes(kind), max_gen_len=120, use_sampling=True, top_k=250)
    generator = torch.Generator().manual_seed(11)
    batch = batch_for(lm)
    first = decode(batch, [Window(conditions(lm, kind), None, FRAMES, params, generator)])[0]
    second = decode(batch, [Window(conditions(lm, kind), first[..., -60:], 120, params, generator)])[0]
    assert torch.equal(first, ref_first) and torch.equal(second, ref_second)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_never_changes_a_requests_tokens(lms, kind):
    """Three requests with their own text, length, sampling and seed through two slots: the third
    joins when the shortest leaves, so rows sit at different positions and prompts differ in length.
    Each gets exactly the tokens it gets alone (in a batch of the same size, decoding nothing else)."""
    lm = lms[kind]
    specs = [
        ("lofi", 60, SamplingParams(1.0, 250, 0.0, 3.0), 1),
        (
            "epic orchestral soundtrack with brass, strings and thundering drums",
            90,
            SamplingParams(0.7, 0, 0.9, 5.0),
            2,
        ),
        ("jazz trio", 30, SamplingParams(1.0, 0, 0.0, 1.0), 3),
    ]
    windows = [(seed, p, n, t) for t, n, p, seed in specs]
    batched = decode(batch_for(lm, slots=2), [window(lm, kind, seed, p, frames=n, text=t) for seed, p, n, t in windows])
    for (seed, params, n, text), ours in zip(windows, batched, strict=True):
        alone = decode(batch_for(lm, slots=2), [window(lm, kind, seed, params, frames=n, text=text)])[0]
        assert torch.equal(ours, alone), text


def test_a_slot_reports_the_reference_progress_and_final_frames(lms):
    lm = lms["mono"]
    batch = batch_for(lm)
    slot = batch.admit(window(lm, "mono", 1, SamplingParams(), frames=20))
    seen = [batch.steps(slot)]
    finals = [batch.final_frames(slot)]
    while not batch.done(slot):
        batch.step()
        seen.append(batch.steps(slot))
        finals.append(batch.final_frames(slot))
    assert seen == [(d, 23) for d in range(1, 24)]  # 20 frames + 3 delay steps, as audiocraft's callback counts
    assert finals[:4] == [0, 0, 0, 1] and finals[-1] == 20  # frame t is final 3 steps after it starts
    assert batch.codes(slot).shape == (1, 4, 20)


def test_sampling_defaults_are_the_schemas():
    """SamplingParams() (used by these tests) samples as a request with no sampling inputs does."""
    from musicgen_local import schema
    from musicgen_local.engine import Request

    defaults = {name: field.default for name, field in schema.FIELDS_BY_NAME.items()}
    request = Request()
    assert SamplingParams() == SamplingParams(
        defaults["temperature"], defaults["top_k"], defaults["top_p"], defaults["classifier_free_guidance"]
    )
    assert SamplingParams() == SamplingParams(
        request.temperature, request.top_k, request.top_p, request.classifier_free_guidance
    )
