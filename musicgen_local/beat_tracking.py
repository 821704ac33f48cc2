"""librosa's beat tracker, one call at a time in this process.

Its inner loop is a numba gufunc built lazily: a call with argument types it has not seen compiles a kernel and
adds it to the gufunc's table, in Python, without a lock. Two threads doing that at once crashed a test worker
(a segmentation fault inside numba's gufunc dispatch, on a fresh install, while the looper tracked its variations
in threads). The looper's variations and a training's labels both track beats in pool threads, so every call
goes through `beat_track` here; one takes tens of milliseconds on a loop's clip.
"""

from __future__ import annotations

import threading

_ONE_AT_A_TIME = threading.Lock()


def beat_track(**kwargs):
    """librosa.beat.beat_track(**kwargs), serialised with every other call in this process."""
    import librosa

    with _ONE_AT_A_TIME:
        return librosa.beat.beat_track(**kwargs)
