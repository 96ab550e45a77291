"""HTTP-01 (RFC 8555 section 8.3): publish key authorizations; answer them on port 80.

The response body is the key authorization, ``token || '.' || base64url(JWK thumbprint)``,
served as ``application/octet-stream`` at ``/.well-known/acme-challenge/TOKEN``. Tokens are
base64url (section 8.1: at least 128 bits of entropy); anything else is refused before it
can reach the file system, and a stored answer larger than :data:`MAX_KEY_AUTHORIZATION`
is not served.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from certmgr.acme.challenges import challenge_dir
from certmgr.keys import atomic_write

__all__ = ["MAX_KEY_AUTHORIZATION", "PATH_PREFIX", "lookup", "publish", "remove", "valid_token"]

PATH_PREFIX = "/.well-known/acme-challenge/"
MAX_KEY_AUTHORIZATION = 512
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def valid_token(token: str) -> bool:
    """A base64url token of sane length (pure; guards the file system lookup)."""
    return bool(_TOKEN.match(token))


def publish(state_dir: str | Path, token: str, key_authorization: str) -> Path:
    """Write the answer for ``token`` (public data, mode 0644) atomically."""
    if not valid_token(token):
        raise ValueError(f"invalid HTTP-01 token {token[:40]!r}")
    path = challenge_dir(state_dir, "http-01") / token
    atomic_write(path, key_authorization.encode("ascii"), mode=0o644)
    return path


def remove(state_dir: str | Path, token: str) -> None:
    if valid_token(token):
        with contextlib.suppress(FileNotFoundError):
            (challenge_dir(state_dir, "http-01") / token).unlink()


def lookup(state_dir: str | Path, token: str) -> bytes | None:
    """The published answer for ``token``, or None (blocking: call off the event loop)."""
    if not valid_token(token):
        return None
    path = challenge_dir(state_dir, "http-01") / token
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_AUTHORIZATION + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_KEY_AUTHORIZATION or not data.startswith(token.encode() + b"."):
        return None
    return data
