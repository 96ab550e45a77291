"""When to renew and when to retry: pure functions over times (no I/O, no clock reads).

- Renewal time: inside the CA's ARI suggested window when it offers one (RFC 9773 section
  4.2: a uniformly random point in [start, end)); otherwise at two thirds of the lifetime
  (Let's Encrypt's own recommendation for clients without ARI).
- Retry after a failure: exponential backoff ``base * 2**attempt`` capped at ``cap``, with
  jitter (the upper half of the interval is randomized, so a fleet does not retry in step),
  and never sooner than a ``Retry-After`` the CA sent (RFC 8555 section 6.6 / RFC 9110 10.2.3).
- Emergency window: within ``fraction`` of the lifetime before expiry the backoff cap drops
  to ``base`` (retry often) while still honouring Retry-After.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["RenewalStep", "in_emergency", "next_attempt", "renewal_time", "retry_delay"]


def renewal_time(
    not_before: dt.datetime,
    not_after: dt.datetime,
    ari_window: tuple[dt.datetime, dt.datetime] | None,
    rand: float,
) -> dt.datetime:
    """When to renew a certificate; ``rand`` in [0, 1) picks the point in an ARI window."""
    if ari_window is not None:
        start, end = ari_window
        if end > start:
            return start + (end - start) * rand
        return start
    return not_before + (not_after - not_before) * 2 / 3


def in_emergency(
    not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime, fraction: float
) -> bool:
    """Whether ``now`` is within ``fraction`` of the lifetime before expiry."""
    return now >= not_after - (not_after - not_before) * fraction


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rand: float,
    now: dt.datetime,
    retry_after: dt.datetime | None = None,
    emergency: bool = False,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0 for the first failure)."""
    ceiling = base if emergency else cap
    full = min(ceiling, base * 2.0 ** min(attempt, 62))
    delay = full / 2 + rand * full / 2
    if retry_after is not None:
        delay = max(delay, (retry_after - now).total_seconds())
    return delay


@dataclass(frozen=True, slots=True)
class RenewalStep:
    """What the renewal loop does next: ``renew`` now, or sleep until ``at``."""

    renew: bool
    at: dt.datetime
    reason: str


def next_attempt(
    *,
    now: dt.datetime,
    cert_window: tuple[dt.datetime, dt.datetime] | None,
    due: dt.datetime | None,
    failures: int,
    retry_at: dt.datetime | None,
    check_interval: float,
) -> RenewalStep:
    """Combine the schedule: no certificate -> now; a pending retry -> its time; else ``due``.

    ``cert_window`` is the current certificate's (not_before, not_after); ``due`` its
    renewal time; ``retry_at`` the time computed by :func:`retry_delay` after ``failures``.
    """
    if cert_window is None or now >= cert_window[1]:
        if failures and retry_at is not None and retry_at > now:
            return RenewalStep(False, retry_at, "retry (no valid certificate)")
        return RenewalStep(True, now, "no valid certificate")
    if failures and retry_at is not None:
        if retry_at > now:
            return RenewalStep(False, retry_at, f"retry after {failures} failure(s)")
        return RenewalStep(True, now, "retry")
    if due is not None and now >= due:
        return RenewalStep(True, now, "renewal due")
    wake = now + dt.timedelta(seconds=check_interval)
    if due is not None and due < wake:
        wake = due
    return RenewalStep(False, wake, "not due")
