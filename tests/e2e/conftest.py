"""Ring-3 fixtures (defined in e2e_helpers, shared with the tests that import its helpers)."""

from e2e_helpers import live_server, live_settings, looper_server, melody_wav  # noqa: F401
