"""certmgr.acme.challenges.dns01: the validation record name (RFC 8555 8.4),
wildcards included."""

from __future__ import annotations

from certmgr.acme.challenges.dns01 import record_name


def test_dns01_record_name() -> None:
    assert record_name("a.example.com") == "_acme-challenge.a.example.com."
    assert record_name("*.example.com") == "_acme-challenge.example.com."
