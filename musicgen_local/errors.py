"""Errors that reach users. Each message says what went wrong and what to do next."""


class MusicgenError(Exception):
    """Base class for errors with a message meant for the person who made the request."""


class UserError(MusicgenError):
    """The request cannot be served as given (Replicate raises these as ValueError)."""


class WeightsMissingError(MusicgenError):
    """A checkpoint the request needs is not on disk (and may not be fetched)."""


class EngineError(MusicgenError):
    """The engine failed for a reason of its own (a bug, a lost device or replica): not the request's fault."""


class Cancelled(MusicgenError):
    """The caller cancelled the prediction."""

    def __init__(self) -> None:
        super().__init__("Prediction was canceled.")
