"""proxy.metrics in prometheus_client's multiprocess mode, in fresh interpreters (the value
class is chosen when prometheus_client is first imported, so it cannot be tested in-process).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.metrics import FLUSH_INTERVAL, Tally

_CHILD = r"""
import os
calls = []
real = os.getpid
# Count getpid calls: patched before prometheus_client binds os.getpid as its default.
os.getpid = lambda: calls.append(1) or real()
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from proxy import metrics

del calls[:]
for _ in range(1000):
    metrics.status_counter(200).inc()
metrics.OPEN_STREAMS.inc()
getpid_calls = len(calls)
# No running loop here: the tally writes at once (multiprocess values, same layout).
metrics.TALLY.observe(0.003)
metrics.TALLY.add(metrics.BYTES_OUT, 7)

child = os.fork()
if child == 0:  # a forked child must write its own file, not its parent's
    metrics.status_counter(200).inc(5)
    os._exit(0)
os.waitpid(child, 0)
registry = CollectorRegistry()
MultiProcessCollector(registry)
text = generate_latest(registry).decode()
files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
print(getpid_calls)
print(" ".join(files))
print(text)
"""


def _run(tmp_path: Path) -> tuple[int, list[str], str]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(Path.cwd())},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    return int(out[0]), out[1].split(), "\n".join(out[2:])


def test_increments_make_no_getpid_call_and_a_fork_gets_its_own_file(tmp_path: Path) -> None:
    getpid_calls, files, text = _run(tmp_path)
    assert getpid_calls == 0  # the cached identifier, not a system call per inc()
    counters = [f for f in files if f.startswith("counter_")]
    assert len(counters) == 2, files  # parent's and the forked child's
    assert 'teeproxy_http_requests_total{code="200"} 1005.0' in text  # both aggregated
    assert "teeproxy_open_streams 1.0" in text
    assert 'teeproxy_http_request_duration_seconds_bucket{le="0.005"} 1.0' in text
    assert 'teeproxy_http_request_duration_seconds_bucket{le="0.001"} 0.0' in text
    assert "teeproxy_http_request_duration_seconds_sum 0.003" in text
    assert 'teeproxy_http_body_bytes_total{direction="response"} 7.0' in text


def _twins() -> tuple[CollectorRegistry, CollectorRegistry, Tally, list[Any]]:
    """The same three metrics in two registries: one fed through a Tally, one directly."""
    tallied, direct = CollectorRegistry(), CollectorRegistry()
    made = []
    for reg in (tallied, direct):
        made.append(
            (
                Counter("c", "c", ["k"], registry=reg).labels("x"),
                Gauge("g", "g", registry=reg),
                Histogram("h", "h", buckets=(0.001, 0.01, 1), registry=reg),
            )
        )
    return tallied, direct, Tally(made[0][2]), made


def _text(registry: CollectorRegistry) -> str:
    """The exposition without the ``_created`` timestamps (they differ per registry)."""
    lines = generate_latest(registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


async def test_tally_writes_nothing_until_flushed_then_what_direct_updates_would() -> None:
    tallied, direct, tally, ((c, g, _), (dc, dg, dh)) = _twins()
    seconds = [0.0005, 0.001, 0.0011, 0.5, 1.0, 7.0, 0.002]
    for x in seconds:
        tally.observe(x)
        dh.observe(x)
    for _ in range(3):  # a stream opened and closed, three times, and one still open
        tally.add(g)
        tally.add(g, -1)
    tally.add(g)
    dg.inc()
    tally.add(c, 5)
    tally.add(c)
    dc.inc(6)
    before = _text(tallied)
    assert "h_count 0.0" in before and "g 0.0" in before
    tally.flush()
    assert _text(tallied) == _text(direct)
    tally.flush()  # nothing new: nothing written twice
    assert _text(tallied) == _text(direct)


async def test_tally_flushes_by_itself_on_the_running_loop() -> None:
    tallied, _direct, tally, ((c, _g, _h), _) = _twins()
    tally.add(c, 2)
    tally.add(c, 3)
    assert 'c_total{k="x"} 0.0' in generate_latest(tallied).decode()
    await asyncio.sleep(FLUSH_INTERVAL + 0.2)
    assert 'c_total{k="x"} 5.0' in generate_latest(tallied).decode()
    tally.add(c)  # the next update arms the timer again
    await asyncio.sleep(FLUSH_INTERVAL + 0.2)
    assert 'c_total{k="x"} 6.0' in generate_latest(tallied).decode()


async def test_tally_reset_forgets_a_parents_updates() -> None:
    tallied, direct, tally, ((c, _g, _h), _) = _twins()
    tally.add(c, 4)
    tally.observe(0.1)
    tally.reset()
    tally.flush()
    assert _text(tallied) == _text(direct)


def test_tally_armed_on_a_loop_that_closed_arms_again_on_the_next() -> None:
    tallied, _direct, tally, ((c, _g, _h), _) = _twins()

    async def add_and_leave() -> None:
        tally.add(c)  # its timer never runs: the loop ends first

    async def add_and_wait() -> None:
        tally.add(c)
        await asyncio.sleep(FLUSH_INTERVAL + 0.2)

    asyncio.run(add_and_leave())
    assert 'c_total{k="x"} 0.0' in generate_latest(tallied).decode()
    asyncio.run(add_and_wait())
    assert 'c_total{k="x"} 2.0' in generate_latest(tallied).decode()
