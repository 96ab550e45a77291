"""An allowlist file as a :class:`certmgr.attest.policycheck.PolicyCheck` (offline policy).

File format: one hex bytes32 measurement id per line (``0x`` optional), ``#`` comments.
Compared in constant time. Reading the file is the only I/O (:func:`load_allowlist`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from certmgr.attest.measurement import Measurement
from certmgr.attest.policycheck import CheckResult
from certmgr.errors import VerifyError

__all__ = ["MAX_ALLOWLIST_SIZE", "AllowlistPolicy", "load_allowlist"]

MAX_ALLOWLIST_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AllowlistPolicy:
    """Allows exactly the measurement ids listed (compared in constant time)."""

    ids: frozenset[bytes]

    def __call__(self, mid: bytes, measurement: Measurement) -> CheckResult:
        hit = False
        for allowed in self.ids:
            hit |= hmac.compare_digest(allowed, mid)
        if hit:
            return CheckResult(True, "in allowlist")
        return CheckResult(False, f"measurement id {mid.hex()} is not in the allowlist")


def load_allowlist(path: str | Path) -> AllowlistPolicy:
    """An allowlist file: one hex bytes32 per line (``0x`` optional), ``#`` comments."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise VerifyError(f"allowlist {p}: {e}") from e
    if len(text) > MAX_ALLOWLIST_SIZE:
        raise VerifyError(f"allowlist {p}: too large")
    ids: set[bytes] = set()
    for n, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip().removeprefix("0x")
        if not value:
            continue
        try:
            b = bytes.fromhex(value)
        except ValueError:
            b = b""
        if len(b) != 32:
            raise VerifyError(f"allowlist {p}:{n}: expected 64 hex digits")
        ids.add(b)
    return AllowlistPolicy(frozenset(ids))
