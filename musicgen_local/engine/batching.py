"""Concurrent requests for one model decoded together, each getting the audio it would get alone.

The engine's lock still guards everything that touches process-wide state (the hub environment,
the model cache, the melody conditioner's bypass) and the GPU work of preparing and finishing a
request. Only the LM decode leaves the lock, merged with other requests' by the fast decoder's
`BatchScheduler`.

What makes batching invisible in the output is `RequestRng`: a request owns a copy of every
process-wide random state (Python's `random` drives htdemucs' shift, torch's global generator MBD's
noise) and swaps it in while it holds the lock; the device stream its tokens are sampled from
travels in a torch.Generator of its own. Alone or in a batch, the same draws happen in the same
order, so the same seed gives the same bytes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import torch

from .fast import BatchScheduler, condition_tensors, decode_job
from .fast.model import unsupported_reason
from .generate import TokenPlan, WindowDecoder, seed_everything


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]


class RequestRng:
    """One request's random state, seeded once; `active()` makes it the process's (hold the engine lock)."""

    def __init__(self, seed: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device)  # the device stream while the lock is not held
        seed_everything(seed)
        self._save()

    def _save(self) -> None:
        self._python, self._numpy, self._cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
        self.generator.set_state(_default_generator(self.device).get_state())

    def _load(self) -> None:
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        torch.set_rng_state(self._cpu)
        _default_generator(self.device).set_state(self.generator.get_state())  # after the CPU state: on CPU it wins

    @contextmanager
    def active(self) -> Iterator[None]:
        self._load()
        try:
            yield
        finally:
            self._save()


class BatchedDecoding:
    def __init__(self, lock: threading.Lock, max_batch: int, mode: str = "auto") -> None:
        self.lock = lock
        self.scheduler = BatchScheduler(max_batch=max_batch, mode=mode, exclusive=lock)

    @staticmethod
    def supports(model) -> bool:
        return unsupported_reason(model.lm) is None

    def expect(self, key: Hashable) -> AbstractContextManager:
        """Around a request's preparation, so that a batch starting meanwhile waits for it."""
        return self.scheduler.expect(key)

    def window_decoder(self, plan: TokenPlan, params: dict, rng: RequestRng, key: Hashable,
                       on_log: Callable[[str], None]) -> WindowDecoder:
        """Each window's conditions computed under the lock with the request's RNG, then its tokens
        decoded in whatever batch the scheduler forms; blocks the calling thread until they are ready."""
        lm = plan.model.lm
        params = {k: v for k, v in params.items() if k != "two_step_cfg"}  # one-step CFG is what the batch runs

        def on_batch(size: int) -> None:
            if size > 1:
                on_log(f"Decoding in a batch of {size} requests")

        def decode(index: int, prompt_tokens, max_gen_len: int, callback) -> torch.Tensor:
            with self.scheduler.expect(key) as ticket:
                with self.lock, rng.active(), plan.model.autocast, plan.conditioning():
                    attributes = plan.window_attributes(index)
                    conditions = condition_tensors(lm, attributes)
                job = decode_job(lm, prompt_tokens, attributes, max_gen_len=max_gen_len, callback=callback,
                                 generator=rng.generator, conditions=conditions, on_batch=on_batch, **params)
                future = ticket.submit(lm, job)
            return future.result()

        return decode
