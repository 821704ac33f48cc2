"""Engine-test fixtures shared across modules."""

import pytest


@pytest.fixture
def separations(monkeypatch):
    """Counts htdemucs runs (the conditioner imports apply_model from demucs.apply at call time)."""
    import demucs.apply

    calls, depth = [], []
    original = demucs.apply.apply_model

    def counted(*args, **kwargs):  # apply_model recurses (bag of models, shifts, splits): count the outer call
        if not depth:
            calls.append(tuple(args[1].shape))
        depth.append(1)
        try:
            return original(*args, **kwargs)
        finally:
            depth.pop()

    monkeypatch.setattr(demucs.apply, "apply_model", counted)
    return calls
