"""andreasjansson/musicgen-looper's pipeline: tempo-locked, seamless loops from generated audio.

Pure and torch-free apart from what the engine hands in: the engine generates the audio (every
variation as rows of one batch), this package turns it into finished loop files or asks for
re-rolls. See docs/looper.md.
"""
