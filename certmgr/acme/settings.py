"""The ACME client's settings: one frozen object, validated by itself (Caddy's habit: a
module's struct is its config, provisioned and validated by the module).

The client (:class:`certmgr.acme.client.AcmeIssuer`), the CAA check and the DNS-01 updater
take an :class:`AcmeSettings` and nothing else of an application. An application that
reads these settings from its own config file (teeproxy's ``[acme]`` section,
``proxy/config.py``) extends or builds this type and prefixes its section name to
:attr:`certmgr.errors.SettingsError.field`.

Secrets are never fields: ``*_env`` fields name the environment variable that holds them,
read only when needed (:meth:`AcmeSettings.eab_credentials`,
:meth:`AcmeSettings.tsig_secret`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from certmgr.errors import SettingsError

__all__ = [
    "CHALLENGE_TYPES",
    "KEY_TYPES",
    "PROFILES",
    "AcmeSettings",
    "DnsSettings",
    "parse_host_port",
    "valid_dns_name",
]

CHALLENGE_TYPES = ("http-01", "tls-alpn-01", "dns-01")
KEY_TYPES = ("p256", "p384")
PROFILES = ("", "classic", "tlsserver", "shortlived")

# RFC 1035 2.3.4 / RFC 5890: LDH labels of 1-63 octets, 253 octets in all.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def valid_dns_name(name: str, *, wildcard: bool = True) -> bool:
    """A lowercase LDH host name, optionally ``*.`` + name (a wildcard, leftmost label only)."""
    if wildcard and name.startswith("*."):
        name = name[2:]
    if not 0 < len(name) <= 253 or name != name.lower():
        return False
    labels = name.split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def parse_host_port(value: str, fld: str) -> tuple[str, int]:
    """``IP:PORT``, ``[V6]:PORT`` or ``localhost:PORT`` -> (host, port), strictly."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise SettingsError(fld, f"expected HOST:PORT, got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" or bracketed:
            raise SettingsError(fld, f"host must be an IP address, got {host!r}") from None
    else:
        # "::1:53" is itself an IPv6 address: the port is unambiguous only after "[V6]".
        if (ip.version == 6) != bracketed:
            raise SettingsError(fld, f"write IPv6 hosts (only) in brackets, [V6]:PORT: {value!r}")
    if not (port_s.isascii() and port_s.isdigit()) or not 0 <= int(port_s) <= 65535:
        raise SettingsError(fld, f"port must be 0-65535, got {port_s!r}")
    return host, int(port_s)


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """What the RFC 2136 updater (:mod:`certmgr.acme.challenges.dns01`) needs."""

    update_host: str
    update_port: int
    key_name: str
    secret_b64: str
    algorithm: str = "hmac-sha256"
    zone: str = ""
    resolver: tuple[str, int] | None = None
    auth_port: int = 53
    ttl: int = 60
    timeout: float = 5.0
    propagation_timeout: float = 120.0


def _pos(value: float, fld: str) -> None:
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(fld, f"must be a finite number > 0, got {value}")


def _env(var: str, fld: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise SettingsError(fld, f"environment variable {var} is not set")
    return value


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    """How to obtain certificates from RFC 8555 CAs (docs/ACME.md lists every field)."""

    names: tuple[str, ...] = ()
    directory_urls: tuple[str, ...] = ("https://acme-v02.api.letsencrypt.org/directory",)
    ca_bundle: str = ""
    contact: tuple[str, ...] = ()
    profile: str = ""
    key_type: str = "p256"
    eab_kid_env: str = ""
    eab_hmac_env: str = ""
    challenge: str = "http-01"
    challenge_overrides: tuple[str, ...] = ()
    dns_update_server: str = ""
    dns_zone: str = ""
    dns_resolver: str = ""
    dns_auth_port: int = 53
    tsig_key_name: str = ""
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret_env: str = ""
    dns_ttl: int = 60
    dns_timeout: float = 5.0
    propagation_timeout: float = 120.0
    caa_check: bool = True
    caa_identities: tuple[str, ...] = ()
    request_timeout: float = 30.0
    order_timeout: float = 300.0
    check_interval: float = 3600.0
    retry_base: float = 60.0
    retry_max: float = 21600.0
    emergency_fraction: float = 0.1

    def challenge_for(self, name: str) -> str:
        """The challenge type for ``name`` (wildcards: dns-01 only, RFC 8555 7.1.3)."""
        for item in self.challenge_overrides:
            n, _, kind = item.partition("=")
            if n.strip() == name:
                return kind.strip()
        if name.startswith("*."):
            return "dns-01"
        return self.challenge

    def resolver_address(self) -> tuple[str, int] | None:
        """The DNS resolver for CAA and propagation checks (None: the system's)."""
        return parse_host_port(self.dns_resolver, "dns_resolver") if self.dns_resolver else None

    def dns_settings(self) -> DnsSettings:
        """The RFC 2136 updater's settings (reads the TSIG secret from the environment)."""
        host, port = parse_host_port(self.dns_update_server, "dns_update_server")
        return DnsSettings(
            update_host=host,
            update_port=port,
            key_name=self.tsig_key_name,
            secret_b64=self.tsig_secret(),
            algorithm=self.tsig_algorithm,
            zone=self.dns_zone,
            resolver=self.resolver_address(),
            auth_port=self.dns_auth_port,
            ttl=self.dns_ttl,
            timeout=self.dns_timeout,
            propagation_timeout=self.propagation_timeout,
        )

    def eab_credentials(self) -> tuple[str, str] | None:
        """(kid, base64url hmac key) from the environment, or None when EAB is not configured."""
        if not self.eab_kid_env:
            return None
        return _env(self.eab_kid_env, "eab_kid_env"), _env(self.eab_hmac_env, "eab_hmac_env")

    def tsig_secret(self) -> str:
        """The TSIG secret (base64) from the environment, checked to decode."""
        value = _env(self.tsig_secret_env, "tsig_secret_env")
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error as e:
            raise SettingsError("tsig_secret_env", f"{self.tsig_secret_env} is not base64") from e
        return value

    def validate(self) -> AcmeSettings:
        """Check every field and the cross-field rules; :class:`SettingsError` names the
        field. Returns self."""
        if not self.names:
            raise SettingsError("names", "must list at least one name when [acme] is enabled")
        for i, n in enumerate(self.names):
            if not valid_dns_name(n):
                raise SettingsError(f"names[{i}]", f"not a lowercase DNS name: {n!r}")
        if len(set(self.names)) != len(self.names):
            raise SettingsError("names", "duplicate names")
        if not self.directory_urls:
            raise SettingsError("directory_urls", "must list at least one ACME directory URL")
        for i, url in enumerate(self.directory_urls):
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                raise SettingsError(f"directory_urls[{i}]", f"must be an https:// URL, got {url!r}")
        for i, c in enumerate(self.contact):
            if not c.startswith("mailto:") or "@" not in c:
                raise SettingsError(f"contact[{i}]", f"expected mailto:ADDRESS, got {c!r}")
        if self.profile not in PROFILES:
            raise SettingsError("profile", f"must be one of {PROFILES[1:]} or empty")
        if self.key_type not in KEY_TYPES:
            raise SettingsError("key_type", f"must be one of {KEY_TYPES}, got {self.key_type!r}")
        if bool(self.eab_kid_env) != bool(self.eab_hmac_env):
            raise SettingsError("eab_hmac_env", "set both eab_kid_env and eab_hmac_env, or neither")
        if self.challenge not in CHALLENGE_TYPES:
            raise SettingsError("challenge", f"must be one of {CHALLENGE_TYPES}")
        for i, item in enumerate(self.challenge_overrides):
            n, eq, kind = item.partition("=")
            fld = f"challenge_overrides[{i}]"
            if not eq or n.strip() not in self.names:
                raise SettingsError(fld, f"expected NAME=CHALLENGE for a name in names: {item!r}")
            if kind.strip() not in CHALLENGE_TYPES:
                raise SettingsError(fld, f"challenge must be one of {CHALLENGE_TYPES}")
        kinds = {self.challenge_for(n) for n in self.names}
        for n in self.names:
            if n.startswith("*.") and self.challenge_for(n) != "dns-01":
                raise SettingsError("challenge_overrides", f"wildcard {n} needs dns-01")
        if "dns-01" in kinds:
            if not self.dns_update_server:
                raise SettingsError("dns_update_server", "required for dns-01 (HOST:PORT)")
            if not self.tsig_key_name or not self.tsig_secret_env:
                raise SettingsError(
                    "tsig_secret_env", "dns-01 needs tsig_key_name and tsig_secret_env"
                )
        if self.dns_update_server:
            parse_host_port(self.dns_update_server, "dns_update_server")
        if self.dns_resolver:
            parse_host_port(self.dns_resolver, "dns_resolver")
        if self.dns_zone and not valid_dns_name(self.dns_zone.rstrip("."), wildcard=False):
            raise SettingsError("dns_zone", f"not a DNS name: {self.dns_zone!r}")
        if self.tsig_algorithm not in ("hmac-sha256", "hmac-sha384", "hmac-sha512"):
            raise SettingsError("tsig_algorithm", "must be hmac-sha256, hmac-sha384 or hmac-sha512")
        if not 1 <= self.dns_auth_port <= 65535:
            raise SettingsError("dns_auth_port", "must be 1-65535")
        if not 1 <= self.dns_ttl <= 86400:
            raise SettingsError("dns_ttl", "must be 1-86400")
        for name in (
            "dns_timeout",
            "propagation_timeout",
            "request_timeout",
            "order_timeout",
            "check_interval",
            "retry_base",
            "retry_max",
        ):
            _pos(getattr(self, name), name)
        if self.retry_max < self.retry_base:
            raise SettingsError("retry_max", "must be >= retry_base")
        if not 0 < self.emergency_fraction < 0.5:
            raise SettingsError("emergency_fraction", "must be between 0 and 0.5")
        return self
