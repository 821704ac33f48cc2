"""The server's limits read from the environment, with their defaults."""

from __future__ import annotations

import pytest

from musicgen_local.settings import Settings


def test_limits_default_and_read_from_the_environment():
    default = Settings.from_env({})
    assert (default.max_body_bytes, default.max_queue, default.retention_s, default.block_private_urls) == (
        100 * 1024 * 1024,
        1000,
        None,
        False,
    )
    env = {
        "MUSICGEN_MAX_BODY_BYTES": "1048576",
        "MUSICGEN_MAX_QUEUE": "0",
        "MUSICGEN_RETENTION": "1d12h",
        "MUSICGEN_BLOCK_PRIVATE_URLS": "1",
    }
    s = Settings.from_env(env)
    assert (s.max_body_bytes, s.max_queue, s.retention_s, s.block_private_urls) == (1048576, 0, 129600.0, True)


def test_adapter_slots_default_and_read_from_the_environment():
    assert (Settings.from_env({}).max_loras, Settings.from_env({}).max_lora_rank) == (4, 16)
    s = Settings.from_env({"MUSICGEN_MAX_LORAS": "0", "MUSICGEN_MAX_LORA_RANK": "64"})
    assert (s.max_loras, s.max_lora_rank) == (0, 64)


@pytest.mark.parametrize(
    "text, seconds", [("90", 90.0), ("30m", 1800.0), ("1h30m", 5400.0), ("7d", 604800.0), ("0.5s", 0.5), ("", None)]
)
def test_retention_durations(text, seconds):
    assert Settings.from_env({"MUSICGEN_RETENTION": text}).retention_s == seconds


def test_a_bad_retention_says_how_to_write_one():
    with pytest.raises(ValueError, match=r"'a week' is not a duration; write e.g. 90 \(seconds\), 30m, 1h30m or 7d"):
        Settings.from_env({"MUSICGEN_RETENTION": "a week"})


@pytest.mark.parametrize(
    "text, size",
    [
        ("", None),
        ("21474836480", 21474836480),
        ("20GB", 20 * 10**9),
        ("20 GiB", 20 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5G", 1_500_000_000),
    ],
)
def test_device_memory_sizes(text, size):
    assert Settings.from_env({"MUSICGEN_DEVICE_MEMORY": text}).device_memory == size


def test_a_bad_device_memory_says_how_to_write_one():
    with pytest.raises(ValueError, match=r"MUSICGEN_DEVICE_MEMORY='lots': give a size such as 20GB, 20GiB"):
        Settings.from_env({"MUSICGEN_DEVICE_MEMORY": "lots"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MUSICGEN_MAX_BATCH", "abc", "MUSICGEN_MAX_BATCH='abc': give a whole number (default: 8)."),
        ("MUSICGEN_INPUT_TIMEOUT", "soon", "MUSICGEN_INPUT_TIMEOUT='soon': give a number (default: 60)."),
        ("MUSICGEN_CPU_PRODUCTS", "fast", "MUSICGEN_CPU_PRODUCTS='fast': give one of rows, torch."),
        ("MUSICGEN_MAX_LORAS", "-1", "MUSICGEN_MAX_LORAS='-1': give a whole number of 0 or more (default: 4)."),
        ("MUSICGEN_MAX_LORA_RANK", "0", "MUSICGEN_MAX_LORA_RANK='0': give a whole number of 1 or more (default: 16)."),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_not_a_traceback(name, value, message, capsys, monkeypatch):
    from musicgen_local.cli import main

    monkeypatch.setenv(name, value)
    assert main(["schema"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
