"""The looper's seam and tempo on the test signals: our pipeline against andreasjansson/musicgen-looper's.

    PYTHONPATH=. .venv/bin/python -m bench.looper            # prints a table, appends it to bench/RESULTS.md
    PYTHONPATH=. .venv/bin/python -m bench.looper --no-append

Each signal (musicgen_local/testing/loop_signals.py: a click track, a drum loop with a sustained bass, a
tone gliding in pitch with a drifting tempo) is made into a 4-bar loop at a requested tempo a few
percent off its own, four ways, on the same audio:

- `ours`: musicgen_local.looper (tracked downbeats, R3 stretch pinned to the grid, overhang folded).
- `original`: the original's method: the same tracked downbeats on BeatNet's 20 ms frame grid, the
  tempo measured over the loop, its 100-sample (3.1 ms) linear blend into the lead-in, then the loop
  alone through `rubberband --tempo` (R2, as pyrubberband runs it), its length whatever that returns.
- `blend only` and `plain cut`: the original's blend, and no blend, cut at the true downbeats and not
  stretched (the seam alone, no stretch to blame).

Columns: `length err` = samples over or under `round(16 x 60 / bpm x 32000)`; `tempo err` = |tempo a
beat tracker finds in the file played 4 times - requested| (BPM); `seam dB` = musicgen_local.looper.
quality.seam_click_db (residual energy at the seam over the loudest other beat: <= 0 adds nothing; the
tests fail a loop above +3 dB); `s` = wall seconds (ours: beat tracking, stretch, fold, encode).
"""

from __future__ import annotations

import argparse
import io
import platform
import time

import numpy as np

from bench import results
from musicgen_local.looper import beats as B
from musicgen_local.looper import quality
from musicgen_local.looper.pipeline import LoopSession, run
from musicgen_local.testing import loop_signals as signals

SR = 32000
BARS, BEATS = 4, 16
BEATNET_FRAME = 0.02  # s: BeatNet's 50 fps
# (signal maker, the signal's tempo, the requested tempo)
CASES = {
    "click track": (signals.click_track, 117.0, 120.0),
    "drum loop": (signals.drum_loop, 124.0, 120.0),
    "drifting tone": (signals.drifting_tone, 96.0, 100.0),
}
PART = "# Part 8: the looper's seam and tempo (`bench/looper.py`, issue 35)"


def ours(audio: np.ndarray, bpm: float) -> np.ndarray:
    import soundfile

    session = LoopSession("bench", bpm, BEATS * 60 / bpm + 0.01, 1, 0, say=lambda line: None)
    finished = run(session, lambda rows: [audio for _ in rows])
    loop, _ = soundfile.read(io.BytesIO(finished.files["variation_01"]), dtype="float32")
    return loop


def original(audio: np.ndarray, bpm: float) -> np.ndarray:
    found = B.track(audio, SR, bpm)
    times = np.round(found.times / BEATNET_FRAME) * BEATNET_FRAME
    # Its first downbeat with the 100 samples before it that its blend reads.
    first = next(d for d in found.downbeats() if times[d] * SR >= signals.ORIGINAL_BLEND)
    start, end = times[first], times[first + BEATS]
    actual = BEATS / (end - start) * 60
    actual = actual / 2 if abs(actual / 2 - bpm) <= 10 else actual * 2 if abs(actual * 2 - bpm) <= 10 else actual
    if abs(actual - bpm) > 10:
        raise RuntimeError(f"the original would refuse this take: {actual:.1f} bpm for {bpm}")
    loop = signals.original_loop(audio, int(start * SR), int(end * SR))
    return signals.original_stretch(loop, bpm / actual)


def _true_loop(signal: signals.Signal, blend: int) -> np.ndarray:
    start, end = (int(round(t * SR)) for t in signal.downbeats[[1, 1 + BARS]])
    return signals.original_loop(signal.audio, start, end, blend)


def measure(name: str, method: str, loop: np.ndarray, bpm: float, seconds: float) -> dict:
    exact = round(BEATS * 60 / bpm * SR)
    stretched = method in ("ours", "original")
    marks = quality.interior_marks(len(loop), BEATS)
    return {
        "signal": name,
        "method": method,
        "length err": f"{len(loop) - exact:+d}" if stretched else "-",
        "tempo err": f"{abs(quality.tempo(loop, SR, bpm) - bpm):.2f}" if stretched else "-",
        "seam dB": f"{quality.seam_click_db(loop, marks):+.1f}",
        "s": f"{seconds:.1f}" if stretched else "-",
    }


def bench() -> list[dict]:
    rows = []
    for name, (make, tempo, bpm) in CASES.items():
        signal = make(bpm=tempo, seconds=(4 + BEATS + 8) * 60 / tempo)
        for method, loop_of in (("ours", ours), ("original", original)):
            began = time.perf_counter()
            loop = loop_of(signal.audio, bpm)
            rows.append(measure(name, method, loop, bpm, time.perf_counter() - began))
        for method, blend in (("blend only", signals.ORIGINAL_BLEND), ("plain cut", 0)):
            rows.append(measure(name, method, _true_loop(signal, blend), signal.bpm, 0.0))
    return rows


def table(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row[k] for k in head) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-append", action="store_true", help="print only, leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    ours(signals.click_track(seconds=12.0).audio, 117.0)  # librosa's first beat tracking compiles (numba): untimed
    rows = bench()
    report = (
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — CPU {platform.processor() or platform.machine()}\n\n{table(rows)}\n"
    )
    print(report)
    if not args.no_append:
        results.append(PART, report)


if __name__ == "__main__":
    main()
