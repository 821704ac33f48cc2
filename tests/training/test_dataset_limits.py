"""A dataset's sizes are measured, not trusted (issue 31, item 9): its length is what decodes, whatever a header
says; descriptions and file counts are capped; memory holds one piece whatever a file's length; every step (the
download, the unpacking, each file's probe and decode) ends at a cancel and at MUSICGEN_DATASET_TIMEOUT; what the
pieces were cut from is removed once they are cut."""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from musicgen_local.errors import Cancelled, UserError
from musicgen_local.training.dataset import PIECES, DatasetLimits, fetch_dataset, prepare_once
from tests.training.test_dataset import RATE, make_zip, prepare, wav_bytes

LIMITS = DatasetLimits(max_bytes=200 * 2**20, max_seconds=3600)
PARAMS = SimpleNamespace(one_same_description=None, auto_labeling=False, drop_vocals=False)


def lying_flac(path: Path, seconds: int, header_seconds: int) -> Path:
    """A FLAC of `seconds` of a tone whose header (STREAMINFO's total samples) says `header_seconds`."""
    t = np.arange(seconds * RATE) / RATE
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    info = 8  # "fLaC", then the first metadata block's 4-byte header: STREAMINFO
    total = header_seconds * RATE  # 36 bits: the low nibble of byte 13, then bytes 14-17
    data[info + 13] = (data[info + 13] & 0xF0) | (total >> 32)
    data[info + 14 : info + 18] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    path.write_bytes(data)
    return path


def test_a_file_holding_more_audio_than_its_header_says_is_measured_as_it_decodes(tmp_path):
    """The probe's 135 KB FLAC said 1 s and held 20 hours; the check trusted the header and decoding took the
    server past 10 GB. Here: 90 s behind a header of 1 s, against a limit of 45 s."""
    source = lying_flac(tmp_path / "song.flac", 90, 1)
    said = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(source)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert float(said) == 1.0  # what a check of the header sees
    limits = DatasetLimits(max_bytes=2**30, max_seconds=45)
    with pytest.raises(UserError) as refused:
        prepare(source, tmp_path / "work", limits=limits)
    assert "decodes to more than 45 s" in str(refused.value) and "MUSICGEN_MAX_DATASET_SECONDS" in str(refused.value)
    assert len(list((tmp_path / "work" / "pieces").iterdir())) <= 1  # stopped at the limit, not after it all


def test_memory_holds_one_piece_whatever_the_files_length(tmp_path):
    """A 3.9-hour dataset trained at a peak of 11.6 GB: each file was decoded whole into memory (its float32
    samples, twice). Here a 5-minute file decodes to ten 30 s pieces of float32; what is held at once stays
    under four pieces' worth (on main's code: more than twice the whole file)."""
    warm = tmp_path / "warm.wav"
    warm.write_bytes(wav_bytes(2))
    prepare(warm, tmp_path / "warm")  # the modules it imports are not what is measured
    source = tmp_path / "long.wav"
    source.write_bytes(wav_bytes(300))
    tracemalloc.start()
    try:
        pieces = prepare(source, tmp_path / "work")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pieces) == 10
    piece = 30 * RATE * 4
    assert peak < 4 * piece, f"{peak / 2**20:.1f} MiB held at once; a piece is {piece / 2**20:.1f} MiB"
    back, rate = soundfile.read(str(pieces[3].wav), dtype="float32")
    expected = np.frombuffer(wav_bytes(300), dtype="<i2", offset=44).astype("float32") / 32767
    assert rate == RATE and np.abs(back - expected[90 * RATE : 120 * RATE]).max() < 1e-3  # the right samples


@pytest.mark.parametrize("length", [2001, 40_000])
def test_a_description_longer_than_a_prompt_is_refused_naming_its_file(tmp_path, length):
    """A 40 KB .txt description took the server past 10 GB (T5 reads a description whole, as a prompt)."""
    source = make_zip(tmp_path / "d.zip", {"songs/a.wav": wav_bytes(2), "songs/a.txt": ("x" * length).encode()})
    with pytest.raises(UserError) as refused:
        prepare(source, tmp_path / "work")
    assert "songs/a.txt is longer than 2000 characters" in str(refused.value)
    fits = make_zip(tmp_path / "e.zip", {"a.wav": wav_bytes(2), "a.txt": ("é" * 2000).encode()})
    assert prepare(fits, tmp_path / "fits")[0].description == "é" * 2000


def test_the_count_of_files_is_capped_by_its_setting(tmp_path):
    """10,000 tiny files held the training queue for 11 minutes; the count is a setting now, checked before
    anything is unpacked."""
    members = {f"{i}.txt": b"x" for i in range(11)}
    limits = DatasetLimits(max_bytes=2**20, max_seconds=60, max_files=10)
    with pytest.raises(UserError, match="more than 10 files \\(MUSICGEN_MAX_DATASET_FILES\\)"):
        prepare(make_zip(tmp_path / "d.zip", members), tmp_path / "work", limits=limits)
    assert not any((tmp_path / "work" / "files").iterdir())


@pytest.fixture
def stuck_ffmpeg(tmp_path, monkeypatch):
    """An `ffmpeg` that never answers (ffprobe stays the real one): a decode that would hold the training pool."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake, started = bin_dir / "ffmpeg", bin_dir / "started"
    fake.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return started


def _in_a_thread(fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_cancel_ends_a_decode_that_never_ends(tmp_path, stuck_ffmpeg):
    """A cancel sent while the dataset was being prepared took 167 s to take effect: no dataset step looked at it."""
    source = make_zip(tmp_path / "d.zip", {"a.wav": wav_bytes(2)})
    canceled = threading.Event()
    thread, outcome = _in_a_thread(
        lambda: prepare_once(source.as_uri(), tmp_path / "work", PARAMS, 1, LIMITS, canceled, lambda line: None)
    )
    deadline = time.monotonic() + 30
    while not stuck_ffmpeg.exists() and time.monotonic() < deadline:  # decoding
        time.sleep(0.05)
    canceled.set()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the decode did not see the cancel"
    assert isinstance(outcome.get("error"), Cancelled), outcome
    assert not (tmp_path / "work").exists()  # half a dataset is removed


def test_a_decode_past_the_timeout_fails_naming_the_file_and_the_setting(tmp_path, stuck_ffmpeg):
    source = make_zip(tmp_path / "d.zip", {"a.wav": wav_bytes(2)})
    limits = DatasetLimits(max_bytes=2**20, max_seconds=60, timeout_s=1)
    thread, outcome = _in_a_thread(lambda: prepare(source, tmp_path / "work", limits=limits))
    thread.join(timeout=30)
    assert not thread.is_alive(), "the decode ran past its timeout"
    error = outcome.get("error")
    assert isinstance(error, UserError) and str(error).startswith("Decoding a.wav took longer than 1 s")
    assert "MUSICGEN_DATASET_TIMEOUT" in str(error)


class SilentServer:
    """Takes connections and reads the request, never answers."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(600)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/songs.zip"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def silent_url():
    server = SilentServer()
    yield server.url
    server.close()


def test_a_cancel_during_the_download_is_a_cancel_not_a_download_error(tmp_path, silent_url):
    """Cancelling while the dataset downloaded ended the training `failed` ("could not be downloaded: Prediction
    was canceled.")."""
    canceled = threading.Event()
    thread, outcome = _in_a_thread(lambda: fetch_dataset(silent_url, tmp_path / "download", LIMITS, canceled))
    time.sleep(0.5)
    canceled.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and isinstance(outcome.get("error"), Cancelled), outcome


def test_a_silent_dataset_url_fails_at_the_settings_timeout(tmp_path, silent_url):
    """A silent `dataset_path` held the training queue for an hour (3600 s, fixed in code)."""
    limits = DatasetLimits(max_bytes=2**20, max_seconds=60, timeout_s=1)
    with pytest.raises(UserError) as refused:
        fetch_dataset(silent_url, tmp_path / "download", limits, threading.Event())
    assert "took longer than 1 s (MUSICGEN_DATASET_TIMEOUT)" in str(refused.value)


def test_once_cut_only_the_pieces_stay(tmp_path):
    """What the pieces were cut from (the download and the unpacked files, up to MUSICGEN_MAX_DATASET_BYTES each)
    is removed once they are cut; the pieces and their list stay for the training and its restarts."""
    source = make_zip(tmp_path / "d.zip", {"a.wav": wav_bytes(2), "b.wav": wav_bytes(3)})
    uri = "data:application/zip;base64," + base64.b64encode(source.read_bytes()).decode()
    pieces = prepare_once(uri, tmp_path / "work", PARAMS, 1, LIMITS, threading.Event(), lambda line: None)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["pieces", PIECES]
    assert all(p.wav.is_file() for p in pieces) and len(pieces) == 2


def test_a_refused_dataset_leaves_nothing(tmp_path):
    source = make_zip(tmp_path / "d.zip", {"notes.md": b"no audio here"})
    with pytest.raises(UserError, match="holds no audio file"):
        prepare_once(source.as_uri(), tmp_path / "work", PARAMS, 1, LIMITS, threading.Event(), lambda line: None)
    assert not (tmp_path / "work").exists()
