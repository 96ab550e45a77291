"""Tests (a), (b), (c): wrk over TLS against each proxy (and plain HTTP against the backend
nginx as the `direct` baseline of (a) and (c)), the proxy's CPU time sampled around each
run. They are one wrk run with different parameters, hence one module:

  (a) GET /small on keep-alive connections        req/s, p50, p99
  (b) the same with `Connection: close`           req/s with a TLS handshake per request
  (c) GET /1m                                     MiB/s

Entry: run()."""

from __future__ import annotations

import argparse
from functools import partial

from harness import Results, Target, guarded, log, run_wrk

# test, path, extra request headers, whether the direct baseline is measured too
WRK_TESTS: list[tuple[str, str, tuple[str, ...], bool]] = [
    ("a", "/small", (), True),
    ("b", "/small", ("Connection: close",), False),
    ("c", "/1m", (), True),
]


def run(direct: Target, proxies: list[Target], args: argparse.Namespace, results: Results) -> None:
    """Those of (a), (b), (c) that are in args.tests, in that order, into results.wrk."""
    for test, path, headers, with_direct in WRK_TESTS:
        if test not in args.tests:
            continue
        for t in ([direct] if with_direct else []) + proxies:
            log(f"({test}) wrk {path} {' '.join(headers)} -> {t.name}")
            r = guarded(
                results,
                t.name,
                f"({test}) wrk",
                partial(run_wrk, t, path, args, headers),
            )
            if r is not None:
                results.wrk[(test, t.name)] = r
                log(
                    f"    {r.requests_per_s:,.0f} req/s, {r.transfer_mib_s:,.1f} MiB/s, "
                    f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, errors {r.error_count}"
                )
