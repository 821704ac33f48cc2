"""Merge concurrent decode requests for the same LM into one batch.

Requests that arrive within `window_s` of the first one waiting (up to `max_batch`) are decoded
together by `generate_batch`. Each request brings its own torch.Generator, so its tokens are the
ones it would get alone; a request that finishes early leaves the batch, and one whose callback
raises (cancellation) leaves it without disturbing the others. Requests arriving while a batch
runs wait for the next batch (no joining mid-flight yet).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import torch

from .decode import DecodeJob, generate_batch
from .sampling import SamplingParams


class BatchScheduler:
    def __init__(self, max_batch: int = 32, window_s: float = 0.01, mode: str = "auto"):
        self.max_batch, self.window_s, self.mode = max_batch, window_s, mode
        self._queue: queue.Queue = queue.Queue()
        self.batch_sizes: list[int] = []  # what was merged, for logs and tests
        threading.Thread(target=self._serve, name="decode-batcher", daemon=True).start()

    def generate(
        self,
        lm,
        prompt,
        attributes,
        *,
        generator: torch.Generator,
        max_gen_len: int,
        use_sampling: bool = True,
        temp: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        cfg_coef: float | None = None,
        callback=None,
        **_ignored,
    ) -> torch.Tensor:
        """The decoder seam plus a per-request generator; blocks until this request's codes are ready."""
        params = SamplingParams(use_sampling, temp, top_k, top_p, lm.cfg_coef if cfg_coef is None else cfg_coef)
        job = DecodeJob(list(attributes), max_gen_len, params, prompt=prompt, generator=generator, callback=callback)
        future: Future = Future()
        self._queue.put((lm, job, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            waiting = [self._queue.get()]
            deadline = time.monotonic() + self.window_s
            while len(waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    waiting.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            for lm in {id(lm): lm for lm, _, _ in waiting}.values():
                self._run(lm, [(job, fut) for other, job, fut in waiting if other is lm])

    def _run(self, lm, entries) -> None:
        self.batch_sizes.append(len(entries))
        try:
            generate_batch(lm, [job for job, _ in entries], mode=self.mode, isolate_errors=True)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, not swallowed
            for _, fut in entries:
                fut.set_exception(exc)
            return
        for job, fut in entries:
            if job.error is not None:
                fut.set_exception(job.error)
            else:
                fut.set_result(job.output)
