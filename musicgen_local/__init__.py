"""musicgen-local: Replicate's meta/musicgen, self-hosted."""

__version__ = "0.1.0"
