"""Ring-1 fixtures (defined in server_helpers, shared with the tests that import its helpers)."""

from server_helpers import client, fake_engine, processes, receiver  # noqa: F401
