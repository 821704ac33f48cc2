"""DNS rebinding, on this machine: a name whose first answers are an allowed address and every later one
the cloud-metadata address, as an attacker's DNS server answers a check and then the connection."""

from __future__ import annotations

import socket

NAME = "rebind.test"
METADATA = "169.254.169.254"


def rebinding_dns(monkeypatch, honest_answers: int, address: str = "127.0.0.1") -> list[str]:
    """Make NAME resolve to `address` for its first `honest_answers` lookups, then to METADATA. Returns the
    answers given, in order."""
    real, answers = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != NAME:
            return real(host, port, *args, **kwargs)
        answers.append(address if len(answers) < honest_answers else METADATA)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answers[-1], int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers
