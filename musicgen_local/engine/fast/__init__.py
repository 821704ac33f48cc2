"""A faster token decoder for MusicGen LMs: static KV cache, cross-attention K/V computed once,
on-device sampling with no host sync, optional CUDA graph, and batched requests.

`fast_generate` is a drop-in for `LMModel.generate`; the engine selects it with MUSICGEN_DECODER=fast.
"""

from .decode import DecodeJob, condition_tensors, decode_job, fast_generate, generate_batch
from .sampling import SamplingParams
from .scheduler import BatchScheduler

__all__ = [
    "BatchScheduler",
    "DecodeJob",
    "SamplingParams",
    "condition_tensors",
    "decode_job",
    "fast_generate",
    "generate_batch",
]
