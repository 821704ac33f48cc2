"""Generation engine. `api` is the narrow interface; `MusicgenEngine` lives in `core` (imports torch)."""

from .api import Engine, Hooks, Request, Result

__all__ = ["Engine", "Hooks", "Request", "Result", "load_engine"]


def load_engine(settings=None):
    """The real engine (imports torch lazily so front doors stay light)."""
    from ..settings import Settings
    from .core import MusicgenEngine

    return MusicgenEngine(settings or Settings.from_env())
