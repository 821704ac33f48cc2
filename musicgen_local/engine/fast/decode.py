"""The decoding loop: one or many requests over one static cache, the seam the engine calls.

`fast_generate` has the signature and semantics of `audiocraft.models.lm.LMModel.generate` as the
engine uses it. `generate_batch` decodes several requests together; each keeps its own sampling
parameters and its own torch.Generator, so a request's tokens do not depend on its neighbours.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby

import torch
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

from .graph import StepRunner
from .model import FastLM, unsupported_reason
from .sampling import SamplingParams, draw_noise, guide, sample

log = logging.getLogger(__name__)
UNKNOWN = -1  # placeholder for codes not generated yet, as in the reference


@dataclass
class DecodeJob:
    """One request: b rows sharing conditioning kind, sampling parameters and seed stream."""

    attributes: list  # ConditioningAttributes, one per row (empty list: unconditional)
    max_gen_len: int
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt: torch.Tensor | None = None  # [b, K, T] prompt codes
    generator: torch.Generator | None = None  # None: the device's default generator
    callback: Callable[[int, int], None] | None = None
    conditions: dict | None = None  # condition_tensors(lm, attributes), when computed ahead
    on_batch: Callable[[int], None] | None = None  # told how many jobs it decodes with (scheduler)
    on_done: Callable[[DecodeJob], None] | None = None  # called when it leaves the batch (output or error set)
    # filled in by the loop
    rows: int = 0
    cfg: bool = False
    sequence: torch.Tensor | None = None  # [b, K, S] pattern sequence
    mask: torch.Tensor | None = None  # [K, S] valid positions
    pattern: object = None
    offset: int = 0  # next pattern step to sample
    start: int = 0
    prefix: int = 0  # prepended condition positions (melody models)
    output: torch.Tensor | None = None
    error: BaseException | None = None  # what its callback raised, when errors are isolated


def _setup(lm, job: DecodeJob, device) -> None:
    """Pattern sequence and conditions, exactly as LMModel.generate builds them."""
    job.rows = len(job.attributes) if job.attributes else job.prompt.shape[0] if job.prompt is not None else 1
    if job.prompt is None:
        job.prompt = torch.zeros((job.rows, lm.num_codebooks, 0), dtype=torch.long, device=device)
    job.pattern = lm.pattern_provider.get_pattern(job.max_gen_len)
    codes = torch.full((job.rows, lm.num_codebooks, job.max_gen_len), UNKNOWN, dtype=torch.long, device=device)
    codes[..., : job.prompt.shape[-1]] = job.prompt
    job.sequence, _, job.mask = job.pattern.build_pattern_sequence(codes, lm.special_token_id)
    job.start = job.offset = job.pattern.get_first_step_with_timesteps(job.prompt.shape[-1])
    job.cfg = bool(job.attributes)


def condition_tensors(lm, attributes: list) -> dict:
    """The conditional then unconditional (CFG) condition tensors, as LMModel.generate computes them.

    Callable ahead of decoding, so a server can run the conditioners (T5, chroma, htdemucs) where it
    controls the process-wide RNG and the model's mutable state, and hand the result to a batch.
    """
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    return lm.condition_provider(lm.condition_provider.tokenize(attributes + null))


def _fused_input(lm, job: DecodeJob):
    """Embedded prompt steps fused with the conditions: (x [r, T0, C], cross source or None)."""
    conditions = {}
    if job.cfg:
        conditions = job.conditions if job.conditions is not None else condition_tensors(lm, job.attributes)
    seq = job.sequence[..., : job.start]  # [b, K, S0]
    if job.cfg:
        seq = torch.cat([seq, seq], dim=0)  # [2b, K, S0]: conditional rows, then unconditional
    x = sum(lm.emb[k](seq[:, k]) for k in range(lm.num_codebooks))  # [r, S0, C]
    fused, cross = lm.fuser(x, conditions)  # melody models prepend; text models cross-attend
    job.prefix = fused.shape[1] - x.shape[1]
    return fused, cross


def _emit(lm, jobs: list[DecodeJob], logits: torch.Tensor) -> None:
    """Sample pattern step job.offset for consecutive jobs sharing parameters and row count.

    logits [n * width, K, card]; sampling runs once for the group, only the noise is per job
    (each job's own generator), so a job's tokens do not depend on the group it sits in.
    """
    first = jobs[0]
    logits = logits.float()
    if first.cfg:
        # each job's rows are [cond (b); uncond (b)], as audiocraft lays out one request
        per_job = logits.view(len(jobs), 2, first.rows, *logits.shape[1:])  # [n, 2, b, K, card]
        logits = guide(per_job[:, 0].flatten(0, 1), per_job[:, 1].flatten(0, 1), first.params.cfg_coef)
    noise = None
    if first.params.draws_noise:
        noise = torch.cat([draw_noise(j.rows, lm.num_codebooks, lm.card, logits.device, j.generator) for j in jobs])
    tokens = sample(logits, first.params, noise)  # [n*b, K, 1]
    for job, token in zip(jobs, tokens.split(first.rows), strict=True):
        o = job.offset
        token[~job.mask[..., o : o + 1].expand(job.rows, -1, -1)] = lm.special_token_id
        column = job.sequence[..., o : o + 1]
        job.sequence[..., o : o + 1] = torch.where(column == UNKNOWN, token, column)
        job.offset += 1


def _groups(jobs: list[DecodeJob]):
    """Runs of consecutive jobs that can be sampled together, with their row counts."""
    for _, run in groupby(jobs, key=lambda j: (j.params, j.cfg, j.rows)):
        group = list(run)
        yield group, sum(_width(j) for j in group)


def _report(job: DecodeJob, every: int, isolate: bool) -> None:
    total = job.sequence.shape[-1] - job.start
    done = job.offset - job.start
    if job.callback is None or not (done % every == 0 or done == total):
        return
    try:
        job.callback(done, total)  # may raise: that is how a request is cancelled
    except Exception as exc:
        if not isolate:
            raise
        job.error = exc  # this job leaves the batch at the next step; the others go on


def _finish(job: DecodeJob) -> None:
    codes, _, _ = job.pattern.revert_pattern_sequence(job.sequence, special_token=UNKNOWN)
    job.output = codes[..., : job.max_gen_len]  # [b, K, T], prompt included as the reference returns


@torch.no_grad()
def generate_batch(
    lm, jobs: list[DecodeJob], *, progress_every: int = 1, mode: str = "auto", isolate_errors: bool = False,
    exclusive: threading.Lock | None = None,
    joining: Callable[[int], list[DecodeJob]] | None = None,
) -> list:
    """Decode jobs together; returns each job's codes [b, K, T]. mode: auto | eager | static | graph | compile.

    isolate_errors: a job whose callback raises is dropped (job.error set, output None) instead of
    aborting every job in the batch. exclusive: see StepRunner. joining: asked
    between steps, with the number of jobs decoding, for jobs to add to the batch (continuous
    batching); they are not in the returned list, `on_done` tells when each finishes.
    """
    fast = FastLM(lm, 0, 0)
    active = _join(lm, fast, [], jobs, progress_every, isolate_errors)
    runner = StepRunner(fast, mode, exclusive)
    while active := _drop_finished(fast, active):
        if joining is not None and (arrivals := joining(len(active))):
            active = _join(lm, fast, active, arrivals, progress_every, isolate_errors)
            active = _drop_finished(fast, active)  # a job may be done (or canceled) right after its prefill
            if not active:
                break
        positions = [job.prefix + job.offset - 1 for job in active]
        tokens = torch.cat([_input_column(job) for job in active])  # [R, K, 1]
        pos = torch.cat([torch.full((_width(j),), p, device=fast.device)
                         for j, p in zip(active, positions, strict=True)])
        same = positions.count(positions[0]) == len(positions)
        logits = runner(tokens, pos, positions[0] if same else None)  # [R, K, card]
        row = 0
        for group, width in _groups(active):
            _emit(lm, group, logits[row : row + width])
            row += width
        for job in active:
            _report(job, progress_every, isolate_errors)
    return [job.output for job in jobs]


def _join(lm, fast: FastLM, active: list[DecodeJob], jobs: list[DecodeJob], progress_every: int,
          isolate: bool) -> list[DecodeJob]:
    """Add jobs as new rows at the end of the cache: conditions, prefill and their first token."""
    for job in jobs:
        _setup(lm, job, fast.device)
    fused = [_fused_input(lm, job) for job in jobs]
    longest = max(x.shape[1] + job.sequence.shape[-1] - job.start for (x, _), job in zip(fused, jobs, strict=True))
    rows = fast.add_rows(sum(x.shape[0] for x, _ in fused), longest)
    fast.add_cross([cross for _, cross in fused if cross is not None])
    lo = rows.start
    for job, (x, _) in zip(jobs, fused, strict=True):
        _emit(lm, [job], fast.prefill(slice(lo, lo + x.shape[0]), x))
        _report(job, progress_every, isolate)
        lo += x.shape[0]
    return active + jobs


def _width(job: DecodeJob) -> int:
    return job.rows * (2 if job.cfg else 1)


def _input_column(job: DecodeJob) -> torch.Tensor:
    column = job.sequence[..., job.offset - 1 : job.offset]  # [b, K, 1]
    return torch.cat([column, column]) if job.cfg else column


def _drop_finished(fast: FastLM, active: list[DecodeJob]) -> list[DecodeJob]:
    """Finish jobs whose last step is sampled (or that failed) and take their rows out of the cache."""
    keep, rows, row = [], [], 0
    for job in active:
        width = _width(job)
        done = job.offset >= job.sequence.shape[-1]
        if done and job.error is None:
            _finish(job)
        if not done and job.error is None:
            keep.append(job)
            rows.extend(range(row, row + width))
        elif job.on_done is not None:
            job.on_done(job)  # its request goes on (EnCodec, the file) while the batch decodes
        row += width
    if keep and len(keep) != len(active):
        fast.keep(torch.tensor(rows, device=fast.device))
    return keep


@torch.no_grad()
def fast_generate(
    lm,
    prompt,
    attributes,
    *,
    max_gen_len: int,
    use_sampling: bool = True,
    temp: float = 1.0,
    top_k: int = 250,
    top_p: float = 0.0,
    cfg_coef: float | None = None,
    two_step_cfg: bool | None = None,
    callback=None,
    progress_every: int = 1,
    mode: str = "auto",
) -> torch.Tensor:
    """Drop-in for `lm.generate(prompt, attributes, ...)`: codes [B, K, max_gen_len], global RNG."""
    two_step = lm.two_step_cfg if two_step_cfg is None else two_step_cfg
    reason = "two-step CFG" if two_step and attributes else unsupported_reason(lm)
    if reason:
        log.info("fast decoder falls back to audiocraft's generate: %s", reason)
        return lm.generate(
            prompt,
            attributes,
            max_gen_len=max_gen_len,
            use_sampling=use_sampling,
            temp=temp,
            top_k=top_k,
            top_p=top_p,
            cfg_coef=cfg_coef,
            two_step_cfg=two_step_cfg,
            callback=callback,
        )
    job = decode_job(lm, prompt, attributes, max_gen_len=max_gen_len, use_sampling=use_sampling, temp=temp,
                     top_k=top_k, top_p=top_p, cfg_coef=cfg_coef, callback=callback)
    return generate_batch(lm, [job], progress_every=progress_every, mode=mode)[0]


def decode_job(lm, prompt, attributes, *, max_gen_len: int, use_sampling: bool = True, temp: float = 1.0,
               top_k: int = 250, top_p: float = 0.0, cfg_coef: float | None = None, callback=None,
               generator: torch.Generator | None = None, conditions: dict | None = None,
               on_batch: Callable[[int], None] | None = None) -> DecodeJob:
    """A DecodeJob from `LMModel.generate`'s arguments (one-step CFG), plus the batch-only extras."""
    params = SamplingParams(use_sampling, temp, top_k, top_p, lm.cfg_coef if cfg_coef is None else cfg_coef)
    return DecodeJob(list(attributes), max_gen_len, params, prompt=prompt, generator=generator, callback=callback,
                     conditions=conditions, on_batch=on_batch)
