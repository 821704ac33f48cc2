"""Which addresses this server may send requests to: webhooks, and input URLs it downloads.

Link-local and cloud-metadata addresses are always refused: from a cloud VM, 169.254.169.254 (or
fd00:ec2::254) hands out the machine's credentials to whoever can make it send a request. Private
and loopback ranges are allowed unless `MUSICGEN_BLOCK_PRIVATE_URLS=1`, because a self-hosted
receiver often lives on the same LAN or host.

The host name is resolved and every address it resolves to is checked, including IPv4 addresses
embedded in IPv6 ones (::ffff:169.254.169.254 connects to 169.254.169.254). Call `check_url` again
for each redirect hop. A name that does not resolve is not refused here: connecting fails anyway.

`pin` checks a URL and returns how to send the request to the very address it checked (the URL with
that address as its host, the name in the Host header and as the TLS server name): a name whose DNS
answers change between the check and the connection (DNS rebinding) cannot slip past the check.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local; the metadata service of AWS, GCP, Azure, Oracle, DigitalOcean
        "100.100.100.200/32",  # Alibaba Cloud's metadata service
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::/32",  # AWS's IPv6 metadata service (fd00:ec2::254)
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class URLRefused(ValueError):
    """The URL's host is an address this server may not send requests to; the message says why."""


def _embedded_v4(ip: IPAddress) -> Iterator[ipaddress.IPv4Address]:
    """IPv4 addresses a connection to this IPv6 address may reach (mapped, 6to4, Teredo, NAT64)."""
    if ip.version != 6:
        return
    if ip.ipv4_mapped:
        yield ip.ipv4_mapped
    if ip.sixtofour:
        yield ip.sixtofour
    if ip.teredo:
        yield ip.teredo[1]
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):
        yield ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def address_refusal(ip: IPAddress, block_private: bool = False) -> str | None:
    """What kind of address `ip` is when a request may not go to it, or None when it may."""
    candidates = (ip, *_embedded_v4(ip))
    if any(c in net for c in candidates for net in ALWAYS_REFUSED if net.version == c.version):
        return "a link-local or cloud-metadata address"
    if block_private and any(not c.is_global or c.is_multicast for c in candidates):
        return "a private, loopback or reserved address (MUSICGEN_BLOCK_PRIVATE_URLS is set)"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str) -> list[IPAddress]:
    """The addresses a connection to `host` may use: the host itself when it is an address literal."""
    if (literal := _literal(host)) is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def refusal(url: str, block_private: bool = False, resolve: Callable[[str], list[IPAddress]] = _resolve) -> str | None:
    """Why this server may not send a request to `url`, or None when it may. Resolves the host (blocking)."""
    return _checked(url, block_private, resolve)[0]


@dataclass(frozen=True)
class Pinned:
    """A request to a checked URL, sent to the address that was checked."""

    url: str  # the URL with the checked address as its host (unchanged when there was no address to pin)
    headers: dict[str, str]  # Host: the name and port as the URL gave them
    extensions: dict[str, str]  # for httpx: the TLS server name, so the certificate is checked against the name


def pin(
    url: str, block_private: bool = False, resolve: Callable[[str], list[IPAddress]] = _resolve
) -> tuple[str | None, Pinned | None]:
    """(why `url` is refused, None) or (None, how to send the request to it). Resolves the host (blocking)."""
    reason, addresses = _checked(url, block_private, resolve)
    if reason is not None:
        return reason, None
    parts = urlsplit(url)
    host = unquote(parts.hostname or "")
    if not addresses or _literal(host) is not None:
        return None, Pinned(url, {}, {})
    ip = addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = userinfo + at + (literal if parts.port is None else f"{literal}:{parts.port}")
    extensions = {"sni_hostname": host} if parts.scheme.lower() == "https" else {}
    return None, Pinned(parts._replace(netloc=netloc).geturl(), {"host": hostport}, extensions)


def _checked(
    url: str, block_private: bool, resolve: Callable[[str], list[IPAddress]]
) -> tuple[str | None, list[IPAddress]]:
    try:
        parts = urlsplit(url)
        host = unquote(parts.hostname or "")  # an IPv6 zone comes percent-encoded: [fe80::1%25eth0]
    except ValueError:
        return "it is not a valid URL", []
    if parts.scheme.lower() not in ("http", "https"):
        return "only http and https URLs are allowed", []
    if not host:
        return "it has no host", []
    addresses = resolve(host)
    for ip in addresses:
        if kind := address_refusal(ip, block_private):
            return (f"{host} is {kind}" if _literal(host) else f"{host} resolves to {ip}, {kind}"), []
    return None, addresses


def check_url(url: str, block_private: bool = False) -> None:
    """Raise URLRefused (message: why) unless this server may send a request to `url`."""
    if reason := refusal(url, block_private):
        raise URLRefused(f"Refused {url!r}: {reason}.")
