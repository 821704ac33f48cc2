"""Generation engine. `api` is the whole interface; `load_engine` builds the in-process one (torch is
imported lazily, so front doors that only speak the interface stay light)."""

from .api import EngineClient, Request, Result, Run, result_of

__all__ = ["EngineClient", "Request", "Result", "Run", "load_engine", "result_of"]


def load_engine(settings=None) -> EngineClient:
    """One device loop per device of MUSICGEN_DEVICES, in this process; with MUSICGEN_RAY_ADDRESS, replicas
    of it on a Ray Serve cluster (this process then imports neither torch nor ray)."""
    from ..settings import Settings

    settings = settings or Settings.from_env()
    if settings.ray_address:
        from .ray.client import RayEngine

        return RayEngine(settings)
    from .local import LocalEngine

    return LocalEngine(settings)
