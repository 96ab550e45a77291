"""Prometheus metrics of the data plane and the certificate store.

With several worker processes the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before any
process imports ``prometheus_client``; each worker then writes its values to memory-mapped
files there and the admin listener aggregates them (prometheus_client multiprocess mode).
Gauges declare how they aggregate: ``livesum`` over live workers for open connections and
streams; certificate expiry is set by the supervisor alone.

Label values are bounded sets (status codes, fixed reasons): never paths or client data.

The data plane's per-connection and per-request updates go through :data:`TALLY`, which adds
them up in the process and writes them out at most :data:`FLUSH_INTERVAL` later (see
:class:`Tally`); the rare ones (limits, backend errors) are written at once.

In multiprocess mode every ``inc()`` asks the process identifier (to notice a fork); the
library's default, ``os.getpid``, is a system call per increment (about 9 % of a worker's
time under small keep-alive requests, bench/profile_a.txt). We give it the pid cached at
import and refreshed by ``os.register_at_fork`` in a forked child, which keeps the library's
rule (simultaneously running processes get distinct values) without the system call.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Final

from prometheus_client import Counter, Gauge, Histogram, values


def _cache_process_identifier() -> None:
    """Replace the multiprocess value class by one whose process identifier is cached.

    Runs before any metric below exists: values made by two classes would open the same
    per-pid file twice."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return
    pid = [os.getpid()]

    def refresh() -> None:
        pid[0] = os.getpid()

    os.register_at_fork(after_in_child=refresh)
    # prometheus_client ships no annotation for MultiProcessValue.
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=lambda: pid[0]
    )


_cache_process_identifier()

__all__ = [
    "BACKEND_ERRORS",
    "BYTES",
    "CERT_EXPIRY",
    "CLUSTER_CERT_VERSION",
    "CLUSTER_KEY_EPOCH",
    "CLUSTER_KEY_WAIT",
    "CLUSTER_MEMBERS",
    "CLUSTER_REFUSALS",
    "CLUSTER_RENEWER",
    "CLUSTER_ROLLBACKS",
    "CLUSTER_ROTATIONS",
    "CLUSTER_SIGNER",
    "CLUSTER_SIGNER_VERSION",
    "CONNECTIONS_OPEN",
    "CONNECTIONS_REJECTED",
    "HELLO_MATCHED",
    "HELLO_UNRECOGNIZED",
    "OPEN_STREAMS",
    "POLICY_ALLOWED",
    "POLICY_BLOCK",
    "POLICY_CONFIRMED",
    "POLICY_ENDPOINT_FAULTS",
    "POLICY_READS",
    "POLICY_SERVING",
    "POLICY_VERSION",
    "REQUESTS",
    "REQUEST_DURATION",
    "TALLY",
    "TLS_HANDSHAKES",
    "TLS_HELLOS",
    "Tally",
    "status_counter",
]

REQUESTS = Counter("teeproxy_http_requests", "Requests answered, by HTTP status code.", ["code"])
REQUEST_DURATION = Histogram(
    "teeproxy_http_request_duration_seconds",
    "Time from request headers to the last response byte (streams included).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
OPEN_STREAMS = Gauge(
    "teeproxy_open_streams",
    "Requests currently being forwarded (including streaming responses and WebSockets).",
    multiprocess_mode="livesum",
)
BYTES = Counter("teeproxy_http_body_bytes", "Body bytes relayed, by direction.", ["direction"])
TLS_HELLOS = Counter(
    "teeproxy_tls_client_hellos",
    "TLS ClientHellos seen, by whether a certificate matched the SNI.",
    ["result"],
)
TLS_HANDSHAKES = Counter(
    "teeproxy_tls_handshakes_completed", "TLS handshakes completed on the listeners."
)
CONNECTIONS_OPEN = Gauge(
    "teeproxy_connections_open", "Client connections open.", multiprocess_mode="livesum"
)
CONNECTIONS_REJECTED = Counter(
    "teeproxy_connections_closed_by_limit",
    "Client connections closed by a limit (max_connections, header_read_timeout, ...).",
    ["reason"],
)
BACKEND_ERRORS = Counter(
    "teeproxy_backend_errors",
    "Forwarded requests that failed at the backend, by kind.",
    ["kind"],
)
CERT_EXPIRY = Gauge(
    "teeproxy_certificate_expiry_timestamp_seconds",
    "Not-after time (Unix seconds) of the served certificate, by source.",
    ["source"],
    multiprocess_mode="max",
)

# On-chain policy (proxy/control/governance.py): set by the supervisor alone.
POLICY_SERVING = Gauge(
    "teeproxy_policy_serving",
    "1 while the policy lets this build serve (always 1 in monitor mode), else 0.",
    multiprocess_mode="max",
)
POLICY_ALLOWED = Gauge(
    "teeproxy_policy_measurement_allowed",
    "1 while the last agreed snapshot lists this build's measurement id, else 0.",
    multiprocess_mode="max",
)
POLICY_VERSION = Gauge(
    "teeproxy_policy_version",
    "Contract version of the last agreed snapshot.",
    multiprocess_mode="max",
)
POLICY_BLOCK = Gauge(
    "teeproxy_policy_block_number", "Block of the last agreed snapshot.", multiprocess_mode="max"
)
POLICY_CONFIRMED = Gauge(
    "teeproxy_policy_confirmed_timestamp_seconds",
    "When a quorum last agreed on the snapshot (Unix seconds); age = now - this.",
    multiprocess_mode="max",
)
POLICY_READS = Counter(
    "teeproxy_policy_reads", "Policy refresh rounds, by result (agreed, no_quorum).", ["result"]
)
POLICY_ENDPOINT_FAULTS = Counter(
    "teeproxy_policy_endpoint_faults",
    "RPC endpoints outvoted (dissent) or failing (error), by endpoint index in rpc_urls.",
    ["endpoint", "kind"],
)

# Cluster mode (proxy/control/cluster.py): set by the supervisor alone.
CLUSTER_MEMBERS = Gauge(
    "teeproxy_cluster_members",
    "Join records seen in etcd (live replicas).",
    multiprocess_mode="max",
)
CLUSTER_KEY_EPOCH = Gauge(
    "teeproxy_cluster_key_epoch",
    "Epoch of the cluster key this replica holds (0: none).",
    multiprocess_mode="max",
)
CLUSTER_KEY_WAIT = Gauge(
    "teeproxy_cluster_key_wait_seconds",
    "Seconds from publishing the join record to holding the cluster key, at start.",
    multiprocess_mode="max",
)
CLUSTER_RENEWER = Gauge(
    "teeproxy_cluster_renewer",
    "1 while this replica holds the renew lock.",
    multiprocess_mode="max",
)
CLUSTER_CERT_VERSION = Gauge(
    "teeproxy_cluster_certificate_version",
    "Version of the fleet's certificate installed here.",
    multiprocess_mode="max",
)
CLUSTER_ROTATIONS = Counter("teeproxy_cluster_key_rotations", "Cluster key rotations made here.")
CLUSTER_REFUSALS = Counter(
    "teeproxy_cluster_key_refusals",
    "Join records refused the key (evidence or policy), counted once per new reason.",
)
CLUSTER_SIGNER = Gauge(
    "teeproxy_cluster_receipt_signer",
    "1 for the receipt signing address this replica's receipts name (the fleet's with "
    "shared_signing_key, else its own); 0 for one it used before.",
    ["address"],
    multiprocess_mode="max",
)
CLUSTER_SIGNER_VERSION = Gauge(
    "teeproxy_cluster_receipt_signer_version",
    "Version of the fleet's shared receipt signer installed here (0: none or per replica).",
    multiprocess_mode="max",
)
CLUSTER_ROLLBACKS = Counter(
    "teeproxy_cluster_rollbacks", "Values or epochs from etcd older than already seen: refused."
)

RECEIPTS = Counter(
    "teeproxy_receipts",
    "Signed receipts: header (in the response headers), stored (for "
    "GET /v1/receipts/{id}), incomplete (a streamed response that did not finish: unsigned).",
    ["delivery"],
)
RECEIPT_HEADER = RECEIPTS.labels("header")
RECEIPT_STORED = RECEIPTS.labels("stored")
RECEIPT_INCOMPLETE = RECEIPTS.labels("incomplete")

_status_children: dict[int, Counter] = {}


def status_counter(status: int) -> Counter:
    """The REQUESTS child for a status code, cached (labels() takes a lock per call)."""
    child = _status_children.get(status)
    if child is None:
        child = _status_children[status] = REQUESTS.labels(str(status))
    return child


HELLO_MATCHED = TLS_HELLOS.labels("matched")  # one of the two per ClientHello: cached
HELLO_UNRECOGNIZED = TLS_HELLOS.labels("unrecognized_name")
BYTES_IN = BYTES.labels("request")
BYTES_OUT = BYTES.labels("response")


FLUSH_INTERVAL: Final = 0.25
"""Seconds a data-plane update may wait in :data:`TALLY` before it is written out."""


class Tally:
    """Hot-path metric updates added up in the process and written out together.

    In multiprocess mode each update of a prometheus_client value takes a lock and writes
    its memory-mapped file: about 0.7 us for a counter and 1.5 us for a histogram
    observation here, six of them per relayed request and four per connection, 10 % of a
    worker's CPU under small keep-alive requests (py-spy, bench (a)). The hot path adds to
    plain numbers here instead (a dictionary update); :meth:`flush` writes each changed
    value once. It runs :data:`FLUSH_INTERVAL` after the first update since the last flush
    (a timer on the running loop; without one, at once), and the worker calls it when it
    stops. A scrape sees the data plane's values at most that much later; an interval's
    increments and decrements of a gauge (a stream opened and closed) cost no write at all.
    A process killed outright loses at most that interval's counts.

    One histogram (``REQUEST_DURATION``) is tallied by bucket: its bucket values and sum
    are prometheus_client's ``_buckets`` and ``_sum`` (the library's layout since 0.4;
    tests/unit/proxy/test_metrics.py checks the flushed output equals direct
    observations).
    """

    __slots__ = ("_adds", "_bounds", "_counts", "_histogram", "_loop", "_observed", "_sum")
    _adds: dict[Counter | Gauge, float]
    _counts: list[int]  # per bucket
    _sum: float
    _observed: bool
    _loop: asyncio.AbstractEventLoop | None  # whose timer will flush

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self.reset()

    def add(self, metric: Counter | Gauge, amount: float = 1.0) -> None:
        """``metric.inc(amount)`` (a gauge's amount may be negative), written out later."""
        adds = self._adds
        adds[metric] = adds.get(metric, 0.0) + amount
        loop = self._loop
        if loop is None or loop.is_closed():
            self._schedule()

    def observe(self, seconds: float) -> None:
        """``histogram.observe(seconds)``, written out later."""
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._observed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            self._schedule()

    def _schedule(self) -> None:
        # No timer pending (or its loop closed before it ran: in-process tests).
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait on: write now
            self.flush()
            return
        self._loop = loop
        loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write every update tallied since the last flush."""
        self._loop = None
        adds, self._adds = self._adds, {}
        for metric, amount in adds.items():
            if amount:
                metric.inc(amount)
        if self._observed:
            self._observed = False
            h = self._histogram
            counts, self._counts = self._counts, [0] * len(self._bounds)
            for value, count in zip(h._buckets, counts, strict=True):
                if count:
                    value.inc(count)
            h._sum.inc(self._sum)
            self._sum = 0.0

    def reset(self) -> None:
        """Forget what is tallied (a forked child: those updates are its parent's)."""
        self._adds = {}
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._observed = False
        self._loop = None


TALLY: Final = Tally(REQUEST_DURATION)
"""The process's tally of data-plane updates."""
os.register_at_fork(after_in_child=TALLY.reset)
