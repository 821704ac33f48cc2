"""bench/streaming.py runs as documented (on the tiny checkpoints, one short request)."""

from bench.streaming import main


def test_streaming_benchmark_times_first_audio_and_the_stream(tiny_weights, capsys):
    main(
        [
            "--device",
            "cpu",
            "--weights",
            str(tiny_weights),
            "--models",
            "large",
            "--duration",
            "2",
            "--segments",
            "1",
            "--threads",
            "1",
            "--no-append",
        ]
    )
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| large")]
    assert len(rows) == 1
    model, segment, first, file_s, speed, margin, segments, seam = rows[0]
    assert (segment, segments.strip(" |")) == ("1", "2")
    assert 0 < float(first) < float(file_s) and float(speed) > 0
    assert float(seam.strip(" |")) <= 1  # the joins are seamless: the final file's 16-bit rounding only
