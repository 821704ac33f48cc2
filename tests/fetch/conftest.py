"""Fixtures for the fetch tests: a fake hub serving the tiny checkpoints, and an empty weights/ dir."""

from __future__ import annotations

import pytest
from fake_hub import FakeHub


@pytest.fixture(scope="session")
def served(tiny_weights):
    """The tiny checkpoints as the hub would serve them (read once)."""
    return FakeHub.from_weights(tiny_weights).repos


@pytest.fixture
def hub(served, tiny_weights, monkeypatch):
    """A fake hub on 127.0.0.1 that HF_ENDPOINT points to; hub.seen records every request."""
    from huggingface_hub import constants

    from musicgen_local.weights import configure_environment

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub({repo: dict(files) for repo, files in served.items()}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake
    # Tests that build their own engine point the process-wide hub settings elsewhere: put them back.
    configure_environment(tiny_weights)
    assert constants.HF_HUB_OFFLINE is True


@pytest.fixture
def weights_dir(tmp_path):
    return tmp_path / "weights"
