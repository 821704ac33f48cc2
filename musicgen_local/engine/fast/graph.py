"""How one decode step is executed: eager, static-shape eager, a captured CUDA graph, or torch.compile.

On CPU (and for parity tests) `eager` reads the cache at the reference's exact shapes. On CUDA a
step is ~48 layers x ~25 small kernels, so launch overhead dominates at batch 1 (reference notes
§1.10); `graph` replays the whole static-shape step as one CUDA graph. `compile` hands the same
static step to torch.compile(mode="reduce-overhead"), which also ends in a CUDA graph.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import torch

log = logging.getLogger(__name__)
MODES = ("auto", "eager", "static", "graph", "compile")


def _autocast_without_cache():
    """The engine decodes inside MusicGen's fp16 autocast; autocast's cast cache must not be
    populated during capture (its tensors would be freed under the graph), so keep the same
    autocast dtype with the cache off."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


def resolve_mode(mode: str, device_type: str) -> str:
    """The step mode actually used: auto picks graph on CUDA, eager elsewhere; graph/compile need CUDA."""
    if mode not in MODES:
        raise ValueError(f"decoder mode must be one of {MODES}, not {mode!r}")
    if mode == "auto":
        return "graph" if device_type == "cuda" else "eager"
    if mode in ("graph", "compile") and device_type != "cuda":
        log.info("decoder mode %s needs CUDA; running static steps eagerly", mode)
        return "static"
    return mode


class StepRunner:
    def __init__(self, fast, mode: str = "auto", exclusive: threading.Lock | None = None):
        """exclusive: a lock that other threads of this process hold while they use the GPU (the
        engine's). A graph is captured only while holding it; while another thread has it, steps run
        uncaptured (same kernels, same results) instead of waiting, and capture is tried again next step."""
        self.fast, self.mode, self.exclusive = fast, resolve_mode(mode, fast.device.type), exclusive
        self._graph = None  # (rows, cache tensor, CUDAGraph, tokens buffer, pos buffer, logits)
        self._compiled = None
        self.captures = self.uncaptured_steps = 0  # for benchmarks and tests

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor, pos_int: int | None) -> torch.Tensor:
        if self.mode == "eager":
            return self.fast.step(tokens, pos, pos_int)
        if self.mode == "static":
            return self.fast.step(tokens, pos)
        if self.mode == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(self.fast.step, mode="reduce-overhead", fullgraph=True)
            return self._compiled(tokens, pos)
        return self._replay(tokens, pos)

    def _replay(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        state = self._graph
        if state is None or state[0] != tokens.shape[0] or state[1] is not self.fast.cache.k:
            if self.exclusive is not None and not self.exclusive.acquire(blocking=False):
                self.uncaptured_steps += 1
                return self.fast.step(tokens, pos)
            try:
                state = self._graph = self._capture(tokens, pos)
                self.captures += 1
            finally:
                if self.exclusive is not None:
                    self.exclusive.release()
        _, _, graph, tokens_in, pos_in, logits = state
        tokens_in.copy_(tokens)
        pos_in.copy_(pos)
        graph.replay()
        return logits

    def _capture(self, tokens: torch.Tensor, pos: torch.Tensor):
        """Capture a step for this row count (again after rows leave, since the cache is reallocated).

        Warm-up runs use the real inputs: they write the same keys/values the replay writes.
        """
        tokens_in, pos_in = tokens.clone(), pos.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.fast.step(tokens_in, pos_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the server's requests) may still allocate while this one captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), _autocast_without_cache():
            logits = self.fast.step(tokens_in, pos_in)
        return tokens.shape[0], self.fast.cache.k, graph, tokens_in, pos_in, logits
