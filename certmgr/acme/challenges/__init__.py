"""ACME challenge responders (RFC 8555 section 8, RFC 8737), one module per type.

The supervisor (control plane) drives the ACME order and *publishes* challenge material;
workers (data plane) *answer* from what was published:

- ``http01``: the key authorization is written (public data) under
  ``STATE/acme/challenges/http-01/TOKEN``; the plain-HTTP listener serves it.
- ``tlsalpn01``: a self-signed challenge certificate (RFC 8737 section 3) is written under
  ``STATE/acme/challenges/tls-alpn-01/`` with its key sealed; workers load it into their
  immutable CertStore on reload and present it only to ``acme-tls/1`` handshakes.
- ``dns01``: a TXT record is added by RFC 2136 update from the supervisor itself.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["challenge_dir"]


def challenge_dir(state_dir: str | Path, kind: str) -> Path:
    """Where material for challenge type ``kind`` lives in the state directory."""
    return Path(state_dir) / "acme" / "challenges" / kind
