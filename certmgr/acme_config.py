"""Validation and interpretation of the ``[acme]`` config section (issue 3).

Kept apart from :mod:`proxy.config` so the ACME rules live next to the code that uses them;
``proxy.config._validate`` calls :func:`validate_acme` when ``acme.enabled`` is true.
Every error is a :class:`ConfigError` naming the dotted field.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from urllib.parse import urlsplit

from proxy.config import AcmeConfig, parse_listen
from proxy.errors import ConfigError

__all__ = [
    "CHALLENGE_TYPES",
    "challenge_for",
    "eab_credentials",
    "tsig_secret",
    "validate_acme",
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


def challenge_for(acme: AcmeConfig, name: str) -> str:
    """The challenge type configured for ``name`` (wildcards: dns-01 only, RFC 8555 7.1.3)."""
    for item in acme.challenge_overrides:
        n, _, kind = item.partition("=")
        if n.strip() == name:
            return kind.strip()
    if name.startswith("*."):
        return "dns-01"
    return acme.challenge


def _pos(value: float, fld: str) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(fld, f"must be a finite number > 0, got {value}")


def validate_acme(a: AcmeConfig) -> None:
    if not a.names:
        raise ConfigError("acme.names", "must list at least one name when [acme] is enabled")
    for i, n in enumerate(a.names):
        if not valid_dns_name(n):
            raise ConfigError(f"acme.names[{i}]", f"not a lowercase DNS name: {n!r}")
    if len(set(a.names)) != len(a.names):
        raise ConfigError("acme.names", "duplicate names")
    if not a.directory_urls:
        raise ConfigError("acme.directory_urls", "must list at least one ACME directory URL")
    for i, url in enumerate(a.directory_urls):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"acme.directory_urls[{i}]", f"must be an https:// URL, got {url!r}")
    for i, c in enumerate(a.contact):
        if not c.startswith("mailto:") or "@" not in c:
            raise ConfigError(f"acme.contact[{i}]", f"expected mailto:ADDRESS, got {c!r}")
    if a.profile not in PROFILES:
        raise ConfigError("acme.profile", f"must be one of {PROFILES[1:]} or empty")
    if a.key_type not in KEY_TYPES:
        raise ConfigError("acme.key_type", f"must be one of {KEY_TYPES}, got {a.key_type!r}")
    if bool(a.eab_kid_env) != bool(a.eab_hmac_env):
        raise ConfigError("acme.eab_hmac_env", "set both eab_kid_env and eab_hmac_env, or neither")
    if a.challenge not in CHALLENGE_TYPES:
        raise ConfigError("acme.challenge", f"must be one of {CHALLENGE_TYPES}")
    for i, item in enumerate(a.challenge_overrides):
        n, eq, kind = item.partition("=")
        fld = f"acme.challenge_overrides[{i}]"
        if not eq or n.strip() not in a.names:
            raise ConfigError(fld, f"expected NAME=CHALLENGE for a name in acme.names: {item!r}")
        if kind.strip() not in CHALLENGE_TYPES:
            raise ConfigError(fld, f"challenge must be one of {CHALLENGE_TYPES}")
    kinds = {challenge_for(a, n) for n in a.names}
    for n in a.names:
        if n.startswith("*.") and challenge_for(a, n) != "dns-01":
            raise ConfigError("acme.challenge_overrides", f"wildcard {n} needs dns-01")
    if "dns-01" in kinds:
        if not a.dns_update_server:
            raise ConfigError("acme.dns_update_server", "required for dns-01 (HOST:PORT)")
        if not a.tsig_key_name or not a.tsig_secret_env:
            raise ConfigError(
                "acme.tsig_secret_env", "dns-01 needs tsig_key_name and tsig_secret_env"
            )
    if a.dns_update_server:
        parse_listen(a.dns_update_server, "acme.dns_update_server")
    if a.dns_resolver:
        parse_listen(a.dns_resolver, "acme.dns_resolver")
    if a.dns_zone and not valid_dns_name(a.dns_zone.rstrip("."), wildcard=False):
        raise ConfigError("acme.dns_zone", f"not a DNS name: {a.dns_zone!r}")
    if a.tsig_algorithm not in ("hmac-sha256", "hmac-sha384", "hmac-sha512"):
        raise ConfigError("acme.tsig_algorithm", "must be hmac-sha256, hmac-sha384 or hmac-sha512")
    if not 1 <= a.dns_auth_port <= 65535:
        raise ConfigError("acme.dns_auth_port", "must be 1-65535")
    if not 1 <= a.dns_ttl <= 86400:
        raise ConfigError("acme.dns_ttl", "must be 1-86400")
    for name in (
        "dns_timeout",
        "propagation_timeout",
        "request_timeout",
        "order_timeout",
        "check_interval",
        "retry_base",
        "retry_max",
    ):
        _pos(getattr(a, name), f"acme.{name}")
    if a.retry_max < a.retry_base:
        raise ConfigError("acme.retry_max", "must be >= acme.retry_base")
    if not 0 < a.emergency_fraction < 0.5:
        raise ConfigError("acme.emergency_fraction", "must be between 0 and 0.5")


def _env(var: str, fld: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise ConfigError(fld, f"environment variable {var} is not set")
    return value


def eab_credentials(a: AcmeConfig) -> tuple[str, str] | None:
    """(kid, base64url hmac key) from the environment, or None when EAB is not configured."""
    if not a.eab_kid_env:
        return None
    return _env(a.eab_kid_env, "acme.eab_kid_env"), _env(a.eab_hmac_env, "acme.eab_hmac_env")


def tsig_secret(a: AcmeConfig) -> str:
    """The TSIG secret (base64) from the environment, checked to decode."""
    value = _env(a.tsig_secret_env, "acme.tsig_secret_env")
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ConfigError("acme.tsig_secret_env", f"{a.tsig_secret_env} is not base64") from e
    return value
