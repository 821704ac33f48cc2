"""input_audio within limits: a slow or silent URL, a huge download or an hour-long file delays only its
own prediction, is stopped by the total deadline, the byte cap or cancellation, and never reaches
link-local or metadata addresses through a redirect (real engine, tiny weights, loopback servers)."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time

import pytest

from musicgen_local.engine import Request, load_engine, result_of
from musicgen_local.engine.api import Canceled, Done, Failed, Progress
from musicgen_local.errors import UserError
from tests.audio_helpers import write_tone
from tests.rebinding import NAME, rebinding_dns


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tone: bytes = b""
    silent_asked = threading.Event()  # a request for /silent reached this server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/silent":  # accepts, then never answers
            self.silent_asked.set()
            time.sleep(30)
        elif self.path == "/trickle.wav":  # headers, then a byte a second
            self._headers(1000)
            for _ in range(30):
                self.wfile.write(b"R")
                self.wfile.flush()
                time.sleep(1)
        elif self.path == "/huge.wav":  # more bytes than the cap, with no Content-Length
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            for _ in range(200):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/declared.wav":  # a Content-Length over the cap: refused before the body
            self._headers(10**12)
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/tone.wav")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/tone.wav":
            self._headers(len(self.tone))
            self.wfile.write(self.tone)
        else:
            self.send_error(404)

    def _headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    Handler.tone = write_tone(tmp_path_factory.mktemp("tone") / "t.wav", 1.0).read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def limited(settings):
    engine = load_engine(
        settings.with_(
            input_timeout=3, max_input_bytes=1_000_000, max_duration=5, max_input_samples=2_000_000, warmup="none"
        )
    )
    yield engine
    engine.close()


def _melody(url: str, path: str, **extra) -> Request:
    return Request(model_version="melody-large", prompt="x", duration=1, input_audio=url + path, **extra)


@pytest.mark.parametrize("path", ["/silent", "/trickle.wav"])
@pytest.mark.slow
def test_a_url_that_sends_nothing_or_trickles_fails_at_the_deadline_and_holds_up_no_one(limited, url, path):
    stalled = limited.submit(_melody(url, path))
    start = time.monotonic()
    other = result_of(limited.submit(Request(model_version="large", prompt="y", duration=1, seed=1)))
    assert other.num_samples == 32000 and time.monotonic() - start < 3  # done while the other still waits
    failed = list(stalled)[-1]
    assert isinstance(failed, Failed) and failed.kind == "user"
    assert "took longer than 3 s (MUSICGEN_INPUT_TIMEOUT)" in failed.message
    assert 2.5 < time.monotonic() - start < 10


@pytest.mark.slow
def test_twenty_silent_urls_hold_up_no_text_only_prediction(limited, url):
    """Before, the four threads that prepared every request all waited on silent URLs, so a text prompt
    waited for five rounds of the 3 s deadline; now it is done before the first download gives up."""
    finished: list[tuple[float, object]] = []

    def follow(run) -> None:
        last = list(run)[-1]
        finished.append((time.monotonic(), last))

    stalled = [threading.Thread(target=follow, args=(limited.submit(_melody(url, "/silent")),)) for _ in range(20)]
    for thread in stalled:
        thread.start()
    text = result_of(limited.submit(Request(model_version="large", prompt="y", duration=1, seed=1)))
    text_done = time.monotonic()
    for thread in stalled:
        thread.join(60)
    assert text.num_samples == 32000
    assert len(finished) == 20 and all(
        isinstance(last, Failed) and "took longer than 3 s" in last.message for _, last in finished
    )
    assert text_done < min(at for at, _ in finished)


def test_a_name_that_rebinds_after_the_check_is_downloaded_from_the_address_checked(limited, url, monkeypatch):
    answers = rebinding_dns(monkeypatch, honest_answers=1)
    assert result_of(limited.submit(_melody(url.replace("127.0.0.1", NAME), "/tone.wav"))).num_samples == 32000
    assert answers == ["127.0.0.1"]  # no second lookup for the connection to answer otherwise


def test_cancel_interrupts_a_download(limited, url):
    Handler.silent_asked.clear()
    run = limited.submit(_melody(url, "/silent"))
    assert Handler.silent_asked.wait(10)  # the download is under way, not still queued
    canceled_at = time.monotonic()
    run.cancel()
    assert isinstance(list(run)[-1], Canceled) and time.monotonic() - canceled_at < 1


@pytest.mark.parametrize("path", ["/huge.wav", "/declared.wav"])
def test_a_download_larger_than_the_cap_is_refused(limited, url, path):
    with pytest.raises(UserError, match=r"is larger than 1000000 bytes \(MUSICGEN_MAX_INPUT_BYTES\)"):
        result_of(limited.submit(_melody(url, path)))


def test_redirects_are_followed_and_each_hop_is_checked(limited, url):
    assert result_of(limited.submit(_melody(url, "/hop"))).num_samples == 32000
    with pytest.raises(UserError, match="cannot be downloaded: Refused 'http://169.254.169.254/latest/meta-data/'"):
        result_of(limited.submit(_melody(url, "/to-metadata")))


def test_encode_decode_input_longer_than_the_limit_is_refused_before_decoding(limited, tmp_path):
    long = write_tone(tmp_path / "long.wav", 8.0)
    with pytest.raises(
        UserError,
        match=r"`input_audio` is 8.0 s long after cropping; `encode-decode` takes at most "
        r"5 s \(MUSICGEN_MAX_DURATION\)",
    ):
        result_of(limited.submit(Request(model_version="encode-decode", input_audio=str(long))))
    cropped = result_of(
        limited.submit(
            Request(model_version="encode-decode", input_audio=str(long), continuation_start=2, continuation_end=6)
        )
    )
    assert cropped.num_samples == 4 * 32000


@pytest.mark.slow
def test_only_the_span_a_request_uses_is_decoded(limited, tmp_path, monkeypatch):
    from audiocraft.data import audio as audiocraft_audio

    reads = []
    original = audiocraft_audio.audio_read
    monkeypatch.setattr(
        audiocraft_audio,
        "audio_read",
        lambda path, seek_time=0.0, duration=-1.0, pad=False: (
            reads.append((seek_time, duration)) or original(path, seek_time, duration, pad)
        ),
    )
    hour = write_tone(tmp_path / "long.wav", 120.0)  # stands in for an hour: only its length matters
    events = list(
        limited.submit(
            Request(
                model_version="large",
                prompt="x",
                duration=3,
                input_audio=str(hour),
                continuation=True,
                continuation_start=10,
                continuation_end=11,
            )
        )
    )
    assert isinstance(events[-1], Done) and reads == [(10, 1)]
    melody = list(limited.submit(Request(model_version="melody-large", prompt="x", duration=2, input_audio=str(hour))))
    assert isinstance(melody[-1], Done) and reads[-1] == (0, 60)  # no 30 s window reaches past 30 s + 30 s
    assert any(isinstance(e, Progress) for e in melody)


def test_an_input_that_would_decode_to_too_many_samples_is_refused_before_decoding(limited, tmp_path, monkeypatch):
    """Channels x rate x seconds, from ffprobe: 8 channels at 96 kHz for 3 s is 2.3 M samples, past the 2 M here
    (the default, 64 M, refuses an 8-channel 192 kHz file of 300 s the same way)."""
    from audiocraft.data import audio as audiocraft_audio

    wide = write_tone(tmp_path / "wide.wav", 3.0, sr=96000, channels=8)
    decoded = []
    monkeypatch.setattr(audiocraft_audio, "audio_read", lambda *a, **k: decoded.append(a) or 1 / 0)
    with pytest.raises(
        UserError,
        match=r"`input_audio` would decode to 2,304,000 samples \(8 channels x 96000 Hz x "
        r"3.0 s after cropping\); at most 2,000,000 are read "
        r"\(MUSICGEN_MAX_INPUT_SAMPLES\)",
    ):
        result_of(limited.submit(Request(model_version="encode-decode", input_audio=str(wide))))
    assert decoded == []
    monkeypatch.undo()
    cropped = result_of(
        limited.submit(
            Request(model_version="encode-decode", input_audio=str(wide), continuation_start=0, continuation_end=1)
        )
    )  # 768 k samples
    assert cropped.num_samples == 32000


@pytest.mark.parametrize("target", ["present.aac", "absent.aac"])
def test_a_playlist_is_not_audio_and_reveals_nothing_about_the_servers_files(limited, tmp_path, target):
    """An HLS playlist naming a file on the server: refused alike whether that file exists or not (ffmpeg would
    otherwise read the named file and hand its audio back)."""
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=1",
            "-c:a",
            "aac",
            "-f",
            "adts",
            str(tmp_path / "present.aac"),
        ],
        check=True,
    )
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{tmp_path / target}\n#EXT-X-ENDLIST\n")
    with pytest.raises(UserError) as refused:
        result_of(limited.submit(Request(model_version="encode-decode", input_audio=str(playlist))))
    assert str(refused.value) == (
        "Could not decode `input_audio`: it holds no audio stream ffmpeg can read. Send a wav, mp3, flac or ogg file."
    )
