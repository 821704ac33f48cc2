"""The fast decoder against audiocraft's own `LMModel.generate` on tiny LMs (CPU, float32).

Same checkpoint, same seed: first-step logits within 1e-5 relative, and identical tokens for
greedy and seeded sampling, mono / stereo / melody, with and without guidance, across a
re-prompted second window, and inside a batch of requests with other parameters.
"""

from __future__ import annotations

import threading

import pytest
import torch

from musicgen_local.engine.fast import DecodeJob, SamplingParams, fast_generate, generate_batch
from musicgen_local.engine.fast.decode import _fused_input, _setup
from musicgen_local.engine.fast.model import FastLM

FRAMES = 100  # 2 s at 50 Hz
KINDS = {"mono": (False, False), "stereo": (True, False), "melody": (False, True)}
SAMPLING = {
    "greedy": {"use_sampling": False},
    "top_k": {"use_sampling": True, "top_k": 250, "temp": 1.0},
    "top_p": {"use_sampling": True, "top_p": 0.9, "temp": 0.7},
}


@pytest.fixture(scope="module")
def lms(tiny_weights):
    from audiocraft.models.builders import get_lm_model

    from musicgen_local.testing.tiny import lm_cfg

    torch.manual_seed(1)
    return {kind: get_lm_model(lm_cfg(*flags)).eval() for kind, flags in KINDS.items()}


def attributes(kind: str, text: str = "lofi hip hop beat with warm piano chords"):
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    attr = ConditioningAttributes(text={"description": text})
    if kind == "melody":  # no melody given: the chroma conditioner's empty input, as the engine sends it
        attr.wav["self_wav"] = WavCondition(torch.zeros(1, 1, 1), torch.tensor([0]), sample_rate=[32000], path=[None])
    return [attr]


def both(lm, kind, seed, prompt=None, max_gen_len=FRAMES, **kw):
    torch.manual_seed(seed)
    ref = lm.generate(prompt, attributes(kind), max_gen_len=max_gen_len, **kw)
    torch.manual_seed(seed)
    ours = fast_generate(lm, prompt, attributes(kind), max_gen_len=max_gen_len, **kw)
    return ref, ours


@pytest.mark.parametrize("kind", KINDS)
def test_first_step_logits_match_reference(lms, kind):
    lm = lms[kind]
    job = DecodeJob(attributes(kind), FRAMES)
    _setup(lm, job, torch.device("cpu"))
    x, cross = _fused_input(lm, job)
    fast = FastLM(lm, x.shape[0], x.shape[1] + 4)
    fast.add_cross([cross] if cross is not None else [])
    ours = fast.prefill(slice(None), x)  # [2, K, card]

    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    conds = attributes(kind)
    tensors = lm.condition_provider(lm.condition_provider.tokenize(conds + ClassifierFreeGuidanceDropout(1.0)(conds)))
    seq = job.sequence[..., : job.start].repeat(2, 1, 1)
    ref = lm(seq, [], condition_tensors=tensors)[:, :, -1]  # [2, K, card]
    assert ours.shape == ref.shape == (2, lm.num_codebooks, lm.card)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("kind", KINDS)
def test_tokens_identical_to_reference(lms, kind, sampling):
    ref, ours = both(lms[kind], kind, seed=7, **SAMPLING[sampling])
    assert ours.shape == ref.shape == (1, lms[kind].num_codebooks, FRAMES)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["mono", "melody"])
def test_tokens_identical_without_guidance(lms, kind):
    # cfg_coef=1 leaves only the conditional logits
    ref, ours = both(lms[kind], kind, seed=3, cfg_coef=1.0, use_sampling=True, top_k=50)
    assert torch.equal(ours, ref)


def test_unconditional_tokens_identical(lms):
    # no attributes: no guidance rows at all (melody LM: nothing cross-attends)
    lm = lms["melody"]
    torch.manual_seed(4)
    ref = lm.generate(None, [], num_samples=2, max_gen_len=FRAMES, use_sampling=True, top_k=250)
    torch.manual_seed(4)
    ours = fast_generate(
        lm,
        torch.zeros((2, lm.num_codebooks, 0), dtype=torch.long),
        [],
        max_gen_len=FRAMES,
        use_sampling=True,
        top_k=250,
    )
    assert ours.shape == (2, lm.num_codebooks, FRAMES)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["mono", "stereo"])
def test_windowed_generation_identical(lms, kind):
    """Two windows as the engine runs > 30 s: the second re-prompted with the tail of the first."""
    lm = lms[kind]
    outs = {}
    for name, decoder in {"ref": lm.generate, "fast": lambda *a, **k: fast_generate(lm, *a, **k)}.items():
        torch.manual_seed(11)
        first = decoder(None, attributes(kind), max_gen_len=FRAMES, use_sampling=True, top_k=250)
        second = decoder(first[..., -60:], attributes(kind), max_gen_len=120, use_sampling=True, top_k=250)
        outs[name] = (first, second)
    assert outs["fast"][1].shape == (1, lm.num_codebooks, 120)
    assert torch.equal(outs["fast"][1][..., :60], outs["fast"][0][..., -60:])  # the prompt is kept
    assert all(torch.equal(f, r) for f, r in zip(outs["fast"], outs["ref"], strict=True))


def test_progress_matches_reference_and_raising_aborts(lms):
    lm = lms["mono"]
    seen = {"ref": [], "fast": []}
    both_calls = {
        "ref": lambda **k: lm.generate(None, attributes("mono"), **k),
        "fast": lambda **k: fast_generate(lm, None, attributes("mono"), **k),
    }
    for name, call in both_calls.items():
        call(max_gen_len=20, use_sampling=False, callback=lambda d, t, n=name: seen[n].append((d, t)))
    assert seen["fast"] == seen["ref"] and seen["fast"][-1] == (23, 23)  # 20 frames + 3 delay steps

    class Stop(Exception):
        pass

    def stop_at_5(done, total):
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        fast_generate(lm, None, attributes("mono"), max_gen_len=FRAMES, callback=stop_at_5)
    torch.manual_seed(2)  # nothing is left behind: the next request matches the reference again
    ref, ours = both(lm, "mono", seed=2, max_gen_len=30)
    assert torch.equal(ours, ref)


def test_progress_every_n_steps(lms):
    calls = []
    fast_generate(
        lms["mono"],
        None,
        attributes("mono"),
        max_gen_len=20,
        use_sampling=False,
        callback=lambda d, t: calls.append(d),
        progress_every=10,
    )
    assert calls == [10, 20, 23]


def test_two_step_cfg_falls_back_to_reference(lms):
    ref, ours = both(lms["mono"], "mono", seed=5, max_gen_len=30, two_step_cfg=True)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["mono", "melody"])
def test_batch_never_changes_a_requests_tokens(lms, kind):
    """Requests with their own text, duration, sampling and seed: batched == each decoded alone."""
    lm = lms[kind]
    specs = [
        ("lofi hip hop beat", FRAMES, SamplingParams(True, 1.0, 250, 0.0, 3.0), 1),
        ("epic orchestral soundtrack with brass and drums", 40, SamplingParams(True, 0.7, 0, 0.9, 5.0), 2),
        ("jazz trio", 70, SamplingParams(False, 1.0, 250, 0.0, 1.0), 3),
    ]

    def jobs():
        return [
            DecodeJob(attributes(kind, text), n, params, generator=torch.Generator().manual_seed(seed))
            for text, n, params, seed in specs
        ]

    batched = generate_batch(lm, jobs())
    alone = [generate_batch(lm, [job])[0] for job in jobs()]
    assert [b.shape[-1] for b in batched] == [FRAMES, 40, 70]
    for b, a in zip(batched, alone, strict=True):
        assert torch.equal(b, a)
    # and the first request alone, on its own generator, is what the reference gives with that seed
    text, n, p, seed = specs[0]
    torch.manual_seed(seed)
    ref = lm.generate(
        None,
        attributes(kind, text),
        max_gen_len=n,
        use_sampling=p.use_sampling,
        temp=p.temp,
        top_k=p.top_k,
        top_p=p.top_p,
        cfg_coef=p.cfg_coef,
    )
    assert torch.equal(alone[0], ref)


@pytest.mark.parametrize("kind", ["mono", "melody"])
def test_jobs_joining_mid_flight_keep_their_tokens(lms, kind):
    """Continuous batching: jobs joining a running batch (longer texts, other lengths and parameters)
    decode exactly as alone, and so do the jobs already there; each job is handed back when it ends."""
    lm = lms[kind]
    specs = [
        ("lofi", 60, SamplingParams(True, 1.0, 250, 0.0, 3.0), 1),
        ("epic orchestral soundtrack with brass, strings and thundering drums", 70,
         SamplingParams(True, 0.7, 0, 0.9, 5.0), 2),
        ("jazz trio", 30, SamplingParams(False, 1.0, 250, 0.0, 1.0), 3),
    ]

    def job(i):
        text, n, params, seed = specs[i]
        return DecodeJob(attributes(kind, text), n, params, generator=torch.Generator().manual_seed(seed))

    alone = [generate_batch(lm, [job(i)])[0] for i in range(3)]
    first, late = job(0), [job(1), job(2)]
    finished, joins = [], []
    for j in [first, *late]:
        j.on_done = finished.append

    def joining(running):
        joins.append(running)
        return late if first.offset - first.start == 20 else []  # both join at step 20 of the first

    assert torch.equal(generate_batch(lm, [first], joining=joining)[0], alone[0])
    for j, expected in zip(late, alone[1:], strict=True):
        assert torch.equal(j.output, expected)
    assert finished == [late[1], first, late[0]]  # in the order they ended: 20 + 30 steps, 60, 20 + 70
    assert joins[0] == 1 and joins[21] == 3  # the batch grew from one job to three


def test_static_step_matches_exact_step(lms):
    """The static-shape masked step (what CUDA graphs capture) gives the reference's tokens on CPU."""
    lm = lms["stereo"]
    torch.manual_seed(9)
    ref = lm.generate(None, attributes("stereo"), max_gen_len=FRAMES, use_sampling=True, top_k=250)
    for mode in ("static", "graph"):  # graph without CUDA runs the static step eagerly
        torch.manual_seed(9)
        ours = fast_generate(
            lm, None, attributes("stereo"), max_gen_len=FRAMES, use_sampling=True, top_k=250, mode=mode
        )
        assert torch.equal(ours, ref), mode


def test_graph_capture_waits_for_the_gpu_lock_without_stalling_the_batch(lms, monkeypatch):
    """While another thread holds the engine's lock (its GPU work), steps run uncaptured instead of
    waiting; the capture happens at the first step the lock is free. (CPU has no CUDA graphs: the
    captured graph is stood in for by a replay of the same static step.)"""
    from musicgen_local.engine.fast.graph import StepRunner

    lm = lms["mono"]
    job = DecodeJob(attributes("mono"), FRAMES)
    _setup(lm, job, torch.device("cpu"))
    x, cross = _fused_input(lm, job)
    fast = FastLM(lm, x.shape[0], x.shape[1] + 4)
    fast.add_cross([cross])
    fast.prefill(slice(None), x)
    lock = threading.Lock()
    runner = StepRunner(fast, "static", exclusive=lock)
    runner.mode = "graph"

    class Replay:  # what a captured CUDA graph does: rerun the step on its own input buffers
        def __init__(self, tokens, pos, out):
            self.tokens, self.pos, self.out = tokens, pos, out

        def replay(self):
            self.out.copy_(fast.step(self.tokens, self.pos))

    def capture(tokens, pos):
        assert lock.locked()  # captured only while holding the GPU lock
        tokens_in, pos_in = tokens.clone(), pos.clone()
        out = fast.step(tokens_in, pos_in)
        return tokens.shape[0], fast.cache.k, Replay(tokens_in, pos_in, out), tokens_in, pos_in, out

    monkeypatch.setattr(runner, "_capture", capture)
    tokens = torch.zeros((x.shape[0], lm.num_codebooks, 1), dtype=torch.long)
    positions = [torch.full((x.shape[0],), x.shape[1] + i) for i in range(3)]
    expected = [fast.step(tokens, p).clone() for p in positions]  # the static step, eagerly

    with lock:  # another request is on the GPU
        first = runner(tokens, positions[0], None)
    assert (runner.captures, runner.uncaptured_steps) == (0, 1)
    later = [runner(tokens, p, None).clone() for p in positions[1:]]
    assert (runner.captures, runner.uncaptured_steps) == (1, 1) and not lock.locked()
    for ours, theirs in zip([first, *later], expected, strict=True):
        assert torch.equal(ours, theirs)


def test_engine_with_fast_decoder_writes_the_same_audio(settings, tmp_path):
    from musicgen_local.engine import Request, load_engine

    request = Request(model_version="stereo-melody-large", prompt="lofi", duration=2, seed=42, output_format="wav")
    files = {}
    for decoder in ("reference", "fast"):
        result = load_engine(settings.with_(decoder=decoder)).generate(request, tmp_path / decoder)
        assert (result.seed, result.channels, result.num_samples) == (42, 2, 2 * 32000)
        files[decoder] = result.path.read_bytes()
    assert files["fast"] == files["reference"]


def test_scheduler_merges_concurrent_requests_and_isolates_cancellation(lms):
    from concurrent.futures import ThreadPoolExecutor

    from musicgen_local.engine.fast import BatchScheduler

    lm = lms["mono"]
    scheduler = BatchScheduler(max_batch=8, window_s=0.5)
    texts = ["lofi hip hop beat", "jazz trio with walking bass", "ambient pads", "rock anthem"]

    def stop_early(done, total):
        if done == 10:
            raise RuntimeError("canceled")

    def request(i):
        return scheduler.generate(
            lm,
            None,
            attributes("mono", texts[i]),
            generator=torch.Generator().manual_seed(i),
            max_gen_len=30 + 10 * i,
            top_k=50,
            callback=stop_early if i == 3 else None,
        )

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(request, i) for i in range(4)]
    with pytest.raises(RuntimeError, match="canceled"):
        futures[3].result()
    assert scheduler.batch_sizes == [4]
    for i in range(3):
        torch.manual_seed(i)
        alone = lm.generate(None, attributes("mono", texts[i]), max_gen_len=30 + 10 * i, top_k=50)
        assert torch.equal(futures[i].result(), alone)


def test_scheduler_lets_a_late_request_join_and_returns_it_before_the_long_one(lms):
    from concurrent.futures import ThreadPoolExecutor

    from musicgen_local.engine.fast import BatchScheduler

    lm = lms["mono"]
    scheduler = BatchScheduler(max_batch=4)
    started = threading.Event()

    def decode(text, frames, seed, callback=None):
        return scheduler.generate(lm, None, attributes("mono", text), generator=torch.Generator().manual_seed(seed),
                                  max_gen_len=frames, top_k=50, callback=callback)

    def long_progress(done, total):
        if done == 5:
            started.set()

    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(decode, "lofi hip hop beat", 400, 1, long_progress)
        assert started.wait(30)
        short = decode("jazz trio", 20, 2)  # arrives while the long one decodes
        assert not long.done()  # handed back as soon as it ended, not when the batch did
        long_tokens = long.result()
    assert (scheduler.batch_sizes, scheduler.joined) == ([1], 1)
    for tokens, (text, frames, seed) in [(long_tokens, ("lofi hip hop beat", 400, 1)), (short, ("jazz trio", 20, 2))]:
        torch.manual_seed(seed)
        assert torch.equal(tokens, lm.generate(None, attributes("mono", text), max_gen_len=frames, top_k=50))


def test_benchmark_command_runs_and_reports_both_decoders(tiny_weights, capsys):
    from bench.decoder import main

    main(
        [
            "--device",
            "cpu",
            "--models",
            "tiny",
            "--durations",
            "1",
            "--batches",
            "1",
            "2",
            "--threads",
            "1",
            "--weights",
            str(tiny_weights),
            "--no-append",
        ]
    )
    out = capsys.readouterr().out
    assert "| tiny | audiocraft | 1 | 2 |" in out and "| tiny | fast/eager | 1 | 2 |" in out
    assert "Copy bandwidth" in out and "tiny 1 s batch 2:" in out
