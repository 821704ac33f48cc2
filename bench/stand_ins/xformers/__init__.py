"""Stand-in: audiocraft imports xformers' ops; with its default 'torch' attention backend it only
uses `unbind` and `LowerTriangularMask` (as a marker), which ops.py provides over torch."""
