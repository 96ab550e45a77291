"""certmgr.acme.renewal: renewal time, backoff with jitter and Retry-After, emergency window."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from certmgr.acme.renewal import in_emergency, next_attempt, renewal_time, retry_delay

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def test_two_thirds_of_lifetime_without_ari() -> None:
    assert renewal_time(T0, T0 + 90 * DAY, None, 0.5) == T0 + 60 * DAY


def test_ari_window_is_used_and_random_point_inside() -> None:
    start, end = T0 + 10 * DAY, T0 + 12 * DAY
    assert renewal_time(T0, T0 + 90 * DAY, (start, end), 0.0) == start
    assert renewal_time(T0, T0 + 90 * DAY, (start, end), 0.5) == T0 + 11 * DAY
    # A degenerate window (end <= start) means "at start".
    assert renewal_time(T0, T0 + 90 * DAY, (end, start), 0.9) == end


@given(st.floats(min_value=0, max_value=0.999999))
def test_ari_point_always_within_window(r: float) -> None:
    start, end = T0 + 3 * DAY, T0 + 4 * DAY
    t = renewal_time(T0, T0 + 6 * DAY, (start, end), r)
    assert start <= t < end


def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays = [retry_delay(n, base=60, cap=3600, rand=1.0, now=T0) for n in range(10)]
    assert delays[:4] == [60, 120, 240, 480]
    assert max(delays) == 3600
    assert delays == sorted(delays)


def test_jitter_spreads_within_upper_half() -> None:
    low = retry_delay(3, base=60, cap=10_000, rand=0.0, now=T0)
    high = retry_delay(3, base=60, cap=10_000, rand=1.0, now=T0)
    assert (low, high) == (240, 480)


def test_retry_after_is_honoured_even_in_emergency() -> None:
    ra = T0 + dt.timedelta(hours=2)
    d = retry_delay(0, base=60, cap=600, rand=0.5, now=T0, retry_after=ra, emergency=True)
    assert d == 7200
    # A Retry-After in the past does not shorten the backoff.
    d2 = retry_delay(2, base=60, cap=600, rand=1.0, now=T0, retry_after=T0 - DAY)
    assert d2 == 240


def test_emergency_window_caps_backoff_at_base() -> None:
    assert retry_delay(20, base=60, cap=21600, rand=1.0, now=T0, emergency=True) == 60
    assert in_emergency(T0, T0 + 90 * DAY, T0 + 82 * DAY, 0.1)
    assert not in_emergency(T0, T0 + 90 * DAY, T0 + 80 * DAY, 0.1)


def test_next_attempt_decisions() -> None:
    window = (T0, T0 + 90 * DAY)
    due = T0 + 60 * DAY
    kw = {"check_interval": 3600.0}
    # No certificate: order now.
    d = next_attempt(now=T0, cert_window=None, due=None, failures=0, retry_at=None, **kw)
    assert d.renew
    # Not due: sleep until the next check (or the due time if sooner).
    d = next_attempt(now=T0, cert_window=window, due=due, failures=0, retry_at=None, **kw)
    assert (d.renew, d.at) == (False, T0 + dt.timedelta(hours=1))
    near = due - dt.timedelta(minutes=5)
    d = next_attempt(now=near, cert_window=window, due=due, failures=0, retry_at=None, **kw)
    assert (d.renew, d.at) == (False, due)
    # Due: renew.
    d = next_attempt(now=due, cert_window=window, due=due, failures=0, retry_at=None, **kw)
    assert d.renew
    # After a failure: wait for the retry time, then renew.
    later = due + dt.timedelta(minutes=10)
    d = next_attempt(now=due, cert_window=window, due=due, failures=1, retry_at=later, **kw)
    assert (d.renew, d.at) == (False, later)
    d = next_attempt(now=later, cert_window=window, due=due, failures=1, retry_at=later, **kw)
    assert d.renew
    # Expired certificate counts as none.
    end = window[1]
    d = next_attempt(now=end, cert_window=window, due=due, failures=0, retry_at=None, **kw)
    assert d.renew and d.reason == "no valid certificate"
