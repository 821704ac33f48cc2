"""netpolicy: which URLs the server may send requests to (webhooks; input URLs through the engine's fetcher).
No DNS here: names resolve through a stand-in resolver."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from musicgen_local.netpolicy import URLRefused, check_url, refusal


def resolver(*addresses: str):
    return lambda host: [ip_address(a) for a in addresses]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.0.1:8443/x",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[fe80::1%25eth0]/",
        "http://100.100.100.200/",
    ],
)
def test_link_local_and_metadata_addresses_are_always_refused(url):
    assert "link-local or cloud-metadata address" in refusal(url)
    assert "link-local or cloud-metadata address" in refusal(url, block_private=True)


def test_every_address_a_name_resolves_to_is_checked():
    reason = refusal("http://innocent.example/hook", resolve=resolver("93.184.215.14", "169.254.169.254"))
    assert reason == "innocent.example resolves to 169.254.169.254, a link-local or cloud-metadata address"
    assert refusal("http://innocent.example/hook", resolve=resolver("93.184.215.14", "2606:2800::1")) is None
    assert refusal("http://nowhere.invalid/", resolve=resolver()) is None  # connecting fails by itself


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/",
        "http://192.168.1.20:8080/",
        "http://[::1]/",
        "http://[fd12:3456::1]/",
        "http://0.0.0.0/",
    ],
)
def test_private_and_loopback_are_allowed_unless_blocked(url):
    assert refusal(url) is None
    assert "private, loopback or reserved address (MUSICGEN_BLOCK_PRIVATE_URLS is set)" in refusal(url, True)
    assert refusal("http://public.example/", True, resolve=resolver("93.184.215.14")) is None


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "only http and https URLs are allowed"),
        ("ftp://x/y", "only http and https URLs are allowed"),
        ("http:///x", "it has no host"),
        ("http://[::1/", "it is not a valid URL"),
    ],
)
def test_other_urls_are_refused_with_a_reason(url, reason):
    assert refusal(url) == reason


def test_check_url_raises_with_the_url_and_the_reason():
    check_url("http://127.0.0.1:9/hook")
    with pytest.raises(URLRefused, match=r"Refused 'http://169.254.169.254/'.*cloud-metadata address\.$"):
        check_url("http://169.254.169.254/")
