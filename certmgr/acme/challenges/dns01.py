"""DNS-01 (RFC 8555 section 8.4) through RFC 2136 dynamic updates signed with TSIG (RFC 8945).

- The TXT record ``_acme-challenge.NAME`` gets the value base64url(SHA-256(key authorization))
  (the acme library computes it). For a wildcard ``*.example.com`` the record is the one of
  ``example.com``.
- Updates go to the zone's primary (``acme.dns_update_server``), signed with TSIG
  (hmac-sha256 by default); a refused or unsigned answer raises :class:`ChallengeError`.
- Propagation is checked, not slept on: every authoritative server of the zone (its NS
  records, resolved to addresses) is asked directly, without recursion, until each one serves
  the value or ``propagation_timeout`` passes.
- Records are removed after the order (success or failure): exactly the value we added, so a
  concurrent order's value for the same name is left alone.
"""

from __future__ import annotations

import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from certmgr.acme.settings import DnsSettings
from certmgr.errors import ChallengeError
from certmgr.log import acme_log as log

__all__ = ["Dns01", "DnsSettings", "record_name"]


_MAX_ADDRESSES = 16


def record_name(identifier: str) -> str:
    """The TXT record owner for an identifier (``*.`` dropped, RFC 8555 section 8.4)."""
    base = identifier[2:] if identifier.startswith("*.") else identifier
    return f"_acme-challenge.{base.rstrip('.')}."


def make_resolver(resolver: tuple[str, int] | None, timeout: float) -> dns.resolver.Resolver:
    if resolver is None:
        r = dns.resolver.Resolver()
    else:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [resolver[0]]
        r.port = resolver[1]
    r.lifetime = timeout
    r.timeout = timeout
    return r


class Dns01:
    """RFC 2136 updater and propagation checker (blocking: runs in the ACME thread)."""

    def __init__(self, s: DnsSettings) -> None:
        self.s = s
        self._keyring = dns.tsigkeyring.from_text({s.key_name: s.secret_b64})
        self._resolver = make_resolver(s.resolver, s.timeout)

    def zone_for(self, fqdn: str) -> dns.name.Name:
        """The zone holding ``fqdn``: configured, or the closest enclosing SOA."""
        if self.s.zone:
            return dns.name.from_text(self.s.zone)
        try:
            return dns.resolver.zone_for_name(fqdn, resolver=self._resolver)
        except dns.exception.DNSException as e:
            raise ChallengeError(fqdn, f"cannot find the zone (SOA): {e}") from e

    def _send(self, update: dns.update.Update, what: str) -> None:
        try:
            resp = dns.query.tcp(
                update, self.s.update_host, port=self.s.update_port, timeout=self.s.timeout
            )
        except (dns.exception.DNSException, OSError) as e:
            raise ChallengeError(what, f"RFC 2136 update to {self.s.update_host}: {e}") from e
        if resp.rcode() != dns.rcode.NOERROR:
            raise ChallengeError(what, f"update refused: {dns.rcode.to_text(resp.rcode())}")

    def _update(self, zone: dns.name.Name) -> dns.update.Update:
        return dns.update.Update(
            zone,
            keyring=self._keyring,
            keyname=dns.name.from_text(self.s.key_name),
            keyalgorithm=dns.name.from_text(self.s.algorithm),
        )

    def add(self, identifier: str, value: str) -> None:
        fqdn = record_name(identifier)
        up = self._update(self.zone_for(fqdn))
        up.add(fqdn, self.s.ttl, "TXT", f'"{value}"')
        self._send(up, fqdn)
        log.info("dns-01: TXT %s added", fqdn)

    def remove(self, identifier: str, value: str) -> None:
        fqdn = record_name(identifier)
        up = self._update(self.zone_for(fqdn))
        up.delete(fqdn, "TXT", f'"{value}"')
        self._send(up, fqdn)
        log.info("dns-01: TXT %s removed", fqdn)

    def authoritative_addresses(self, zone: dns.name.Name) -> list[str]:
        """Addresses of the zone's NS hosts (via the resolver)."""
        try:
            ns = self._resolver.resolve(zone, "NS")
        except dns.exception.DNSException as e:
            raise ChallengeError(str(zone), f"cannot list NS records: {e}") from e
        addrs: list[str] = []
        for rr in ns:
            host = rr.target
            for rdtype in ("A", "AAAA"):
                try:
                    ans = self._resolver.resolve(host, rdtype)
                except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                    continue
                except dns.exception.DNSException as e:
                    log.warning("dns-01: resolving NS %s %s failed: %s", host, rdtype, e)
                    continue
                addrs.extend(a.to_text() for a in ans)
        if not addrs:
            raise ChallengeError(str(zone), "no address for any authoritative server")
        return sorted(set(addrs))[:_MAX_ADDRESSES]

    def serves(self, address: str, fqdn: str, value: str) -> bool:
        q = dns.message.make_query(fqdn, dns.rdatatype.TXT)
        q.flags &= ~dns.flags.RD
        try:
            resp = dns.query.udp(q, address, port=self.s.auth_port, timeout=self.s.timeout)
            if resp.flags & dns.flags.TC:
                resp = dns.query.tcp(q, address, port=self.s.auth_port, timeout=self.s.timeout)
        except (dns.exception.DNSException, OSError) as e:
            log.debug("dns-01: %s did not answer for %s: %s", address, fqdn, e)
            return False
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                for rr in rrset:
                    if b"".join(rr.strings) == value.encode():
                        return True
        return False

    def wait_propagated(self, identifier: str, value: str) -> None:
        """Poll every authoritative server until each serves ``value`` (bounded by time)."""
        fqdn = record_name(identifier)
        addrs = self.authoritative_addresses(self.zone_for(fqdn))
        deadline = time.monotonic() + self.s.propagation_timeout
        pending = set(addrs)
        delay = 0.1
        while pending:
            pending = {a for a in pending if not self.serves(a, fqdn, value)}
            if not pending:
                break
            if time.monotonic() + delay > deadline:
                raise ChallengeError(
                    fqdn,
                    f"not served by {', '.join(sorted(pending))} within "
                    f"{self.s.propagation_timeout:g} s",
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        log.info("dns-01: %s served by all %d authoritative servers", fqdn, len(addrs))
