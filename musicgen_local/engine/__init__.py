"""Generation engine. `api` is the whole interface; `load_engine` builds the in-process one (torch is
imported lazily, so front doors that only speak the interface stay light)."""

from .api import EngineClient, Request, Result, Run, result_of

__all__ = ["EngineClient", "Request", "Result", "Run", "load_engine", "result_of"]


def load_engine(settings=None) -> EngineClient:
    """One device loop per device of MUSICGEN_DEVICES, in this process."""
    from ..settings import Settings
    from .local import LocalEngine

    return LocalEngine(settings or Settings.from_env())
