"""CAA (RFC 8659) checks before ordering, and the records that pin issuance (RFC 8657).

- :func:`relevant_records` climbs the DNS tree (RFC 8659 section 3): the CAA RRset of the
  name itself, else of its parent, and so on up to (not including) the root; the first
  non-empty set is the relevant one. An empty result everywhere means any CA may issue.
- :func:`evaluate` (pure) decides over that set: for a wildcard name the ``issuewild``
  properties apply when present, else ``issue`` (section 4.3); a property authorizes us when
  its issuer domain is one of ours (``acme.caa_identities``; when none are configured every
  issuer domain is taken as possibly ours, so only parameters can forbid) and its RFC 8657
  parameters match: ``accounturi`` equals our account URI, ``validationmethods`` lists the
  challenge we use. ``issue ";"`` authorizes nobody.
- :func:`pinning_records` gives the records an operator publishes to pin issuance to this
  enclave's ACME account (``teeproxy caa DOMAIN``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from certmgr.acme.challenges.dns01 import make_resolver
from certmgr.acme.settings import AcmeSettings
from certmgr.errors import CAAError
from certmgr.log import acme_log as log

__all__ = [
    "CaaRecord",
    "caa_checker",
    "evaluate",
    "parse_issue_value",
    "pinning_records",
    "relevant_records",
    "resolver_for",
]

_MAX_RECORDS = 64
_MAX_VALUE = 1024


@dataclass(frozen=True, slots=True)
class CaaRecord:
    flags: int
    tag: str
    value: str

    def __str__(self) -> str:
        return f'{self.flags} {self.tag} "{self.value}"'


def parse_issue_value(value: str) -> tuple[str, dict[str, str]]:
    """``issuer-domain; key=value; ...`` (RFC 8659 4.2) -> (issuer domain, parameters)."""
    issuer, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, eq, val = part.strip().partition("=")
        if eq and key:
            params[key.strip().lower()] = val.strip()
    return issuer.strip().lower().rstrip("."), params


def evaluate(
    name: str,
    records: Sequence[CaaRecord],
    identities: Sequence[str],
    account_uri: str | None,
    method: str,
) -> str | None:
    """None when issuance is allowed, else the reason it is forbidden (pure)."""
    if not records:
        return None
    for r in records:
        if r.flags & 0x80 and r.tag not in ("issue", "issuewild", "iodef"):
            return f"unknown critical property {r.tag!r} (RFC 8659 4.1)"
    wildcard = name.startswith("*.")
    issuewild = [r for r in records if r.tag == "issuewild"]
    props = issuewild if wildcard and issuewild else [r for r in records if r.tag == "issue"]
    if not props:
        return None  # only iodef or other tags: no restriction on issuance
    ours = {i.lower().rstrip(".") for i in identities}
    reasons: list[str] = []
    for r in props:
        issuer, params = parse_issue_value(r.value)
        if not issuer:
            reasons.append(f"{r} authorizes no CA")
            continue
        if ours and issuer not in ours:
            reasons.append(f"{r} names another CA")
            continue
        uri = params.get("accounturi")
        if uri is not None and uri != account_uri:
            reasons.append(f"{r} pins another ACME account (ours: {account_uri})")
            continue
        methods = params.get("validationmethods")
        if methods is not None and method not in {m.strip() for m in methods.split(",")}:
            reasons.append(f"{r} does not allow {method}")
            continue
        return None
    return "; ".join(reasons)


def resolver_for(settings: AcmeSettings) -> dns.resolver.Resolver:
    """The resolver CAA lookups use: ``dns_resolver`` when set, else the system's."""
    return make_resolver(settings.resolver_address(), settings.dns_timeout)


def relevant_records(name: str, resolver: dns.resolver.Resolver) -> tuple[str, list[CaaRecord]]:
    """(owner, records) of the relevant CAA RRset for ``name`` (RFC 8659 3, tree climbing).

    A lookup failure other than NXDOMAIN/NODATA raises (RFC 8659 3: a CA must not issue
    when the lookup fails, so neither do we order).
    """
    base = name[2:] if name.startswith("*.") else name
    node = dns.name.from_text(base)
    while node != dns.name.root and len(node.labels) > 1:
        try:
            ans = resolver.resolve(node, "CAA")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            node = node.parent()
            continue
        out: list[CaaRecord] = []
        for rr in list(ans)[:_MAX_RECORDS]:
            value = rr.value.decode("utf-8", "replace")[:_MAX_VALUE]
            out.append(CaaRecord(rr.flags, rr.tag.decode("ascii", "replace").lower(), value))
        if out:
            return node.to_text(), out
        node = node.parent()
    return "", []


def caa_checker(cfg: AcmeSettings) -> Callable[[tuple[str, ...], str | None], None]:
    """A check run before each order (blocking); raises :class:`CAAError` when forbidden."""

    def check(names: tuple[str, ...], account_uri: str | None) -> None:
        resolver = resolver_for(cfg)
        for name in names:
            try:
                owner, records = relevant_records(name, resolver)
            except dns.exception.DNSException as e:
                raise CAAError(name, f"CAA lookup failed ({e}); not ordering") from e
            reason = evaluate(
                name, records, cfg.caa_identities, account_uri, cfg.challenge_for(name)
            )
            if reason is not None:
                raise CAAError(name, f"records at {owner}: {reason}")
            if records:
                log.info("CAA at %s allows issuance for %s", owner, name)

    return check


def pinning_records(
    domain: str,
    identities: Sequence[str],
    account_uri: str | None,
    methods: Sequence[str],
    wildcard: bool,
) -> list[str]:
    """Zone-file lines pinning issuance for ``domain`` to our CA(s), account and methods."""
    lines: list[str] = []
    params = ""
    if account_uri:
        params += f"; accounturi={account_uri}"
    if methods:
        params += f"; validationmethods={','.join(sorted(set(methods)))}"
    for ident in identities:
        lines.append(f'{domain}. IN CAA 0 issue "{ident}{params}"')
        if wildcard:
            lines.append(f'{domain}. IN CAA 0 issuewild "{ident}{params}"')
    return lines
