"""proxy.dataplane.worker: the Host header without its port."""

from __future__ import annotations

import pytest

from proxy.dataplane.worker import host_without_port


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("", ""),
        ("[", ""),
        ("[]", ""),
    ],
)
def test_host_without_port(header: str, host: str) -> None:
    assert host_without_port(header) == host
