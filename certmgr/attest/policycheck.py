"""What the verifier asks a measurement policy, and the answer (the consumer's interface).

The verifier (:mod:`certmgr.attest.verify`) needs one decision it cannot make itself: may
this measurement id be trusted? Any :class:`PolicyCheck` answers it: an allowlist file
(:mod:`certmgr.policy.allowlist`), the on-chain policy read at one block
(:class:`certmgr.policy.model.SnapshotPolicy`), or a caller's own function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from certmgr.attest.measurement import Measurement

__all__ = ["CheckResult", "PolicyCheck"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A :class:`PolicyCheck`'s answer: allowed or not, and why."""

    allowed: bool
    reason: str = ""


class PolicyCheck(Protocol):
    """Decides whether a measurement may serve (allowlist file, on-chain contract, ...).

    Called synchronously with the measurement id (bytes32,
    :func:`certmgr.attest.measurement.measurement_id`) and the parsed measurement; an
    on-chain implementation answers from its current snapshot.
    """

    def __call__(self, mid: bytes, measurement: Measurement, /) -> CheckResult: ...
