"""Merge concurrent decode requests for the same LM into one batch.

A batch starts when the first request waits, once no other request for the same key is still on
its way (announced with `expect`, e.g. loading its input or computing its conditions) and at least
`window_s` has passed, or when `max_batch` requests wait, or after `max_wait_s` at most. Requests
arriving while it decodes join it between two steps, up to `max_batch` at once (continuous
batching). Each request brings its own torch.Generator, so its tokens are the ones it would get
alone; a request that finishes leaves the batch and gets its codes at once, and one whose callback
raises (cancellation) leaves it without disturbing the others.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from .decode import DecodeJob, decode_job, generate_batch


@dataclass(eq=False)  # compared by identity: a job holds tensors
class _Waiting:
    key: Hashable
    lm: object
    job: DecodeJob
    future: Future
    since: float  # time.monotonic() when submitted


def musicgen_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """What `MusicGen.autocast` does (float16 autocast off the CPU), as a fresh context: autocast
    state is per thread, and MusicGen's own object must not be entered from two threads at once."""
    if device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16)


class Ticket:
    """A promise that a request for `key` is about to be submitted: batches for `key` wait for it."""

    def __init__(self, scheduler: BatchScheduler, key: Hashable) -> None:
        self.scheduler, self.key, self.open = scheduler, key, True

    def submit(self, lm, job: DecodeJob) -> Future:
        return self.scheduler._submit(lm, job, self)


class BatchScheduler:
    def __init__(self, max_batch: int = 32, window_s: float = 0.005, max_wait_s: float = 2.0, mode: str = "auto",
                 exclusive: threading.Lock | None = None):
        """exclusive: the lock other threads hold while they use the GPU (the engine's); CUDA graphs
        are captured only while holding it (see StepRunner)."""
        self.max_batch, self.window_s, self.max_wait_s, self.mode = max_batch, window_s, max_wait_s, mode
        self.exclusive = exclusive
        self._cond = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._expected: Counter = Counter()
        self.batch_sizes: list[int] = []  # requests each batch started with, for metrics and tests
        self.joined = 0  # requests that joined a batch already decoding
        threading.Thread(target=self._serve, name="decode-batcher", daemon=True).start()

    # -------------------------------------------------------------------------------- requests

    @contextlib.contextmanager
    def expect(self, key: Hashable) -> Iterator[Ticket]:
        """Announce a request for `key`; `ticket.submit` inside the block hands it over. Leaving the
        block without submitting (an error, a request that needs no LM) withdraws the announcement."""
        ticket = Ticket(self, key)
        with self._cond:
            self._expected[key] += 1
        try:
            yield ticket
        finally:
            self._withdraw(ticket)

    def expected(self, key: Hashable) -> int:
        """Requests for `key` announced and not yet submitted."""
        with self._cond:
            return self._expected[key]

    def generate(self, lm, prompt, attributes, *, generator: torch.Generator, key: Hashable | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """The decoder seam plus a per-request generator; blocks until this request's codes are ready."""
        job = decode_job(lm, prompt, attributes, generator=generator, **generate_kwargs)
        with self.expect(id(lm) if key is None else key) as ticket:
            future = ticket.submit(lm, job)
        return future.result()

    def _submit(self, lm, job: DecodeJob, ticket: Ticket) -> Future:
        future: Future = Future()
        with self._cond:
            self._withdraw_locked(ticket)
            self._waiting.append(_Waiting(ticket.key, lm, job, future, time.monotonic()))
            self._cond.notify_all()
        return future

    def _withdraw(self, ticket: Ticket) -> None:
        with self._cond:
            self._withdraw_locked(ticket)

    def _withdraw_locked(self, ticket: Ticket) -> None:
        if ticket.open:
            ticket.open = False
            self._expected[ticket.key] -= 1
            self._cond.notify_all()

    # -------------------------------------------------------------------------------- batching

    def _serve(self) -> None:
        while True:
            batch = self._gather()
            self._run(batch[0].key, batch[0].lm, batch)

    def _mates(self, key: Hashable, lm, limit: int) -> list[_Waiting]:
        return [w for w in self._waiting if w.key == key and w.lm is lm][:limit]

    def _gather(self) -> list[_Waiting]:
        """Block until a batch is due; take its requests (same key and LM as the oldest waiting)."""
        with self._cond:
            self._cond.wait_for(lambda: self._waiting)
            first = self._waiting[0]
            start = time.monotonic()
            while len(self._mates(first.key, first.lm, self.max_batch)) < self.max_batch:
                waited = time.monotonic() - start
                if waited >= self.max_wait_s or (waited >= self.window_s and self._expected[first.key] <= 0):
                    break
                deadline = self.max_wait_s if self._expected[first.key] > 0 else self.window_s
                self._cond.wait(timeout=deadline - waited)
            return self._take(self._mates(first.key, first.lm, self.max_batch))

    def _take(self, entries: list[_Waiting]) -> list[_Waiting]:
        """Remove entries from the waiting list (under self._cond) and arrange for their futures."""
        self._waiting = [w for w in self._waiting if w not in entries]
        for w in entries:
            w.job.on_done = lambda job, future=w.future: _resolve(future, job)
        return entries

    def _joining(self, key: Hashable, lm, running: int, members: list[_Waiting]) -> list[DecodeJob]:
        """Between steps of a running batch: requests for the same LM that may join it now."""
        if running >= self.max_batch or not self._waiting:  # unlocked peek: a list's truth is atomic
            return []
        with self._cond:
            arrivals = self._mates(key, lm, self.max_batch - running)
            # a join costs a cache copy (and, on CUDA, a graph capture): let announced requests
            # that are about to arrive join in the same step, as a new batch would wait for them
            if not arrivals or (self._expected[key] > 0 and time.monotonic() - arrivals[0].since < self.max_wait_s):
                return []
            arrivals = self._take(arrivals)
        members.extend(arrivals)
        for w in arrivals:
            if w.job.on_batch is not None:
                w.job.on_batch(running + len(arrivals))
        self.joined += len(arrivals)
        return [w.job for w in arrivals]

    def _run(self, key: Hashable, lm, batch: list[_Waiting]) -> None:
        self.batch_sizes.append(len(batch))
        members = list(batch)  # and those that join it
        try:
            for w in batch:
                if w.job.on_batch is not None:
                    w.job.on_batch(len(batch))
            with musicgen_autocast(next(lm.parameters()).device):
                generate_batch(lm, [w.job for w in batch], mode=self.mode, isolate_errors=True,
                               exclusive=self.exclusive,
                               joining=lambda running: self._joining(key, lm, running, members))
        except Exception as exc:  # noqa: BLE001 - handed to every request still waiting, not swallowed
            for w in members:
                if not w.future.done():
                    w.future.set_exception(exc)


def _resolve(future: Future, job: DecodeJob) -> None:
    if job.error is not None:
        future.set_exception(job.error)
    else:
        future.set_result(job.output)
