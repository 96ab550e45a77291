"""proxy.metrics in prometheus_client's multiprocess mode, in fresh interpreters (the value
class is chosen when prometheus_client is first imported, so it cannot be tested in-process).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
