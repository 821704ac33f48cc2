"""Stand-in: audiocraft imports xformers' ops; with its default 'torch' attention backend it only
uses `unbind` and `LowerTriangularMask` (as a marker), which ops.py provides over torch. It checks at
start-up that `memory_efficient_attention` imports, and asks `profiler` whether a profiler runs (per
attention call: a stand-in that imports keeps that question cheap)."""
