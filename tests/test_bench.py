"""The benchmarks run with their documented commands and file their results in the right part."""

from bench import results


def test_serving_benchmark_batches_concurrent_requests(tiny_weights, capsys):
    from bench.serving import main

    main(
        [
            "--device",
            "cpu",
            "--weights",
            str(tiny_weights),
            "--duration",
            "1",
            "--concurrency",
            "3",
            "--threads",
            "1",
            "--no-append",
        ]
    )
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [(r[0], r[1], r[-1]) for r in rows][0] == ("| reference", "3", "one at a time |")
    assert rows[1][:2] == ["| fast", "3"] and int(rows[1][-1].strip(" |")) >= 2  # decoded together


def test_results_go_to_the_end_of_their_own_part(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n# Part 1: a\n\nold 1\n\n# Part 2: b\n\nold 2\n")
    results.append("# Part 1", "\n## new 1\n", path)
    results.append("# Part 2", "\n## new 2\n", path)
    results.append("# Part 3", "\n## new 3\n", path)
    text = path.read_text()
    assert text.index("old 1") < text.index("## new 1") < text.index("# Part 2") < text.index("old 2")
    assert text.index("old 2") < text.index("## new 2") < text.index("# Part 3") < text.index("## new 3")
