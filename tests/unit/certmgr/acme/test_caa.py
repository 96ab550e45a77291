"""certmgr.acme.caa: RFC 8659 evaluation with RFC 8657 parameters, tree climbing over real DNS
answers (dnspython message objects), and the pinning records."""

from __future__ import annotations

import dns.name
import dns.rdata
import dns.resolver
import pytest

from certmgr.acme.caa import (
    CaaRecord,
    evaluate,
    parse_issue_value,
    pinning_records,
    relevant_records,
)

ACC = "https://acme.example/acct/1"


def rec(tag: str, value: str, flags: int = 0) -> CaaRecord:
    return CaaRecord(flags, tag, value)


def test_parse_issue_value() -> None:
    assert parse_issue_value("LetsEncrypt.org; accounturi=X ; validationmethods=dns-01") == (
        "letsencrypt.org",
        {"accounturi": "X", "validationmethods": "dns-01"},
    )
    assert parse_issue_value(";") == ("", {})


def test_no_records_allows() -> None:
    assert evaluate("a.example", [], ["letsencrypt.org"], ACC, "http-01") is None


def test_other_ca_forbids_with_reason() -> None:
    why = evaluate("a.example", [rec("issue", "other.ca")], ["letsencrypt.org"], ACC, "http-01")
    assert why is not None and "names another CA" in why and "other.ca" in why


def test_semicolon_forbids_everyone() -> None:
    why = evaluate("a.example", [rec("issue", ";")], ["letsencrypt.org"], ACC, "http-01")
    assert why is not None and "authorizes no CA" in why


def test_accounturi_and_validationmethods() -> None:
    r = rec("issue", f"letsencrypt.org; accounturi={ACC}; validationmethods=dns-01,http-01")
    assert evaluate("a.example", [r], ["letsencrypt.org"], ACC, "http-01") is None
    why = evaluate("a.example", [r], ["letsencrypt.org"], ACC + "x", "http-01")
    assert why is not None and "another ACME account" in why
    why = evaluate("a.example", [r], ["letsencrypt.org"], ACC, "tls-alpn-01")
    assert why is not None and "does not allow tls-alpn-01" in why


def test_issuewild_applies_to_wildcards_only() -> None:
    records = [rec("issue", "letsencrypt.org"), rec("issuewild", ";")]
    assert evaluate("a.example", records, ["letsencrypt.org"], ACC, "dns-01") is None
    assert evaluate("*.example", records, ["letsencrypt.org"], ACC, "dns-01") is not None


def test_unknown_critical_tag_forbids() -> None:
    why = evaluate("a.example", [rec("future", "x", 128)], ["letsencrypt.org"], ACC, "http-01")
    assert why is not None and "critical" in why


def test_iodef_only_does_not_restrict() -> None:
    records = [rec("iodef", "mailto:x@example")]
    assert evaluate("a.example", records, ["letsencrypt.org"], ACC, "http-01") is None


class _FakeResolver(dns.resolver.Resolver):
    """Answers CAA from a table with real dnspython rdata objects (no network)."""

    def __init__(self, table: dict[str, str]) -> None:
        super().__init__(configure=False)
        self.table = table
        self.asked: list[str] = []

    def resolve(self, qname, rdtype="A", *args, **kwargs):  # type: ignore[no-untyped-def]
        name = qname.to_text() if isinstance(qname, dns.name.Name) else str(qname)
        self.asked.append(name)
        if name not in self.table:
            raise dns.resolver.NXDOMAIN
        return [dns.rdata.from_text("IN", "CAA", self.table[name])]


def test_tree_climbing_finds_closest_ancestor() -> None:
    r = _FakeResolver({"example.test.": '0 issue "ca.example"'})
    owner, records = relevant_records("*.x.y.example.test", r)
    assert owner == "example.test."
    assert records == [CaaRecord(0, "issue", "ca.example")]
    assert r.asked == ["x.y.example.test.", "y.example.test.", "example.test."]


def test_tree_climbing_stops_below_root() -> None:
    r = _FakeResolver({})
    assert relevant_records("a.b.test", r) == ("", [])
    # RFC 8659 3: up to and including the TLD, never the root.
    assert r.asked == ["a.b.test.", "b.test.", "test."]


@pytest.mark.parametrize("wildcard", [False, True])
def test_pinning_records(wildcard: bool) -> None:
    lines = pinning_records(
        "example.com", ["letsencrypt.org"], ACC, ["http-01", "dns-01"], wildcard
    )
    assert lines[0] == (
        f'example.com. IN CAA 0 issue "letsencrypt.org; accounturi={ACC}; '
        'validationmethods=dns-01,http-01"'
    )
    assert len(lines) == (2 if wildcard else 1)
