"""Real ``teeproxy`` processes for the end-to-end tests: start, watch, stop by PID.

- :class:`Process`: ``python -m proxy.cli ARGS`` with its merged output collected line by
  line; :meth:`Process.stop` ends it and every child it was seen with, by PID.
- :func:`write_config` / :func:`serve`: a serve config on 127.0.0.1 with an ephemeral TLS
  port, and a started ``teeproxy serve`` whose port is read back from its log.
- :func:`child_pids`, :func:`worker_pids`, :func:`listening_pids`, :func:`wait_workers`:
  the supervisor's workers, from /proc (Linux only).

The ``launch`` and ``tls_files`` fixtures (tests/integration/conftest.py) are built on these.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

REPO = Path(__file__).resolve().parents[2]


START_TIMEOUT = 30.0


def _ppid(pid: int) -> int | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: parse after the last ')'.
    return int(stat_line.rpartition(")")[2].split()[1])


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (workers and multiprocessing's resource tracker)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == pid:
            out.append(int(entry))
    return out


def worker_pids(pid: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing 'spawn' children)."""
    workers = []
    for child in child_pids(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            state = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"spawn_main" in cmdline and state != "Z":
            workers.append(child)
    return sorted(workers)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class Process:
    """A ``python -m proxy.cli ...`` child with its merged output collected line by line."""

    def __init__(self, args: list[str]) -> None:
        # Its own TMPDIR (the supervisor's metrics and receipt-store directories go there),
        # removed at stop(): a test that kills the supervisor outright (SIGKILL runs no
        # clean-up) leaves nothing behind in the machine's /tmp.
        self.tmp = tempfile.mkdtemp(prefix="teeproxy-test-")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=self.tmp)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._seen_children: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def workers(self) -> list[int]:
        pids = worker_pids(self.pid)
        self._seen_children.update(child_pids(self.pid))
        return pids

    async def wait_log(
        self, pattern: str, *, count: int = 1, within: float = START_TIMEOUT, since: int = 0
    ) -> list[re.Match[str]]:
        """Wait until ``pattern`` matched ``count`` output lines (from line index ``since``)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            found = [m for ln in self.lines[since:] if (m := rx.search(ln))]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                await asyncio.to_thread(self._reader.join, 5)
                found = [m for ln in self.lines[since:] if (m := rx.search(ln))]
                if len(found) >= count:
                    return found
                pytest.fail(
                    f"process exited ({self.proc.returncode}) before {pattern!r} appeared:\n"
                    + self.output[-4000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} not seen within {within} s:\n{self.output[-4000:]}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, within: float) -> int:
        rc = await asyncio.to_thread(self.proc.wait, within)
        await asyncio.to_thread(self._reader.join, 5)
        return rc

    def send(self, sig: signal.Signals) -> None:
        self._seen_children.update(child_pids(self.pid))
        os.kill(self.pid, sig)

    def stop(self) -> None:
        """Teardown (blocking): SIGTERM, then SIGKILL; then any leftover child, by PID."""
        if self.proc.poll() is None:
            self._seen_children.update(child_pids(self.pid))
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self._seen_children:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


Launch = Callable[[list[str]], Awaitable[Process]]


@dataclass
class Served:
    process: Process
    port: int
    config: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@dataclass
class TLSFiles:
    cert: Path
    key: Path

    def write(self, leaf: trustme.LeafCert) -> None:
        self.cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        self.key.write_bytes(leaf.private_key_pem.bytes())
        self.key.chmod(0o600)


def write_config(
    directory: Path,
    *,
    backend: str,
    tls: TLSFiles | None,
    workers: int = 2,
    drain_grace: float = 5.0,
    admin: str = "",
    extra: str = "",
) -> Path:
    """A serve config in ``directory`` (blocking: call through asyncio.to_thread)."""
    lines = [
        f'state_dir = "{directory / "state"}"',
        "[server]",
        'listen = ["127.0.0.1:0"]',
        f"workers = {workers}",
        f"drain_grace = {drain_grace}",
        "[backend]",
        f'url = "{backend}"',
        "[admin]",
        f'listen = "{admin}"',
        "[logging]",
        "access_log = false",
    ]
    if tls is not None:
        lines += ["[[tls.certificates]]", f'cert_file = "{tls.cert}"', f'key_file = "{tls.key}"']
    path = directory / "teeproxy.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


async def serve(launch: Launch, config: Path, *, workers: int = 2) -> Served:
    """Start ``teeproxy serve --config FILE`` and wait until its workers are ready."""
    p = await launch(["serve", "--config", str(config)])
    [m] = await p.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+) with (\d+) workers")
    assert int(m.group(2)) == workers
    return Served(p, int(m.group(1)), config)


def listening_pids(pids: list[int], port: int) -> list[int]:
    """Which of ``pids`` hold a socket listening on TCP ``port`` (from /proc, Linux only)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    holders = []
    for pid in pids:
        with contextlib.suppress(OSError):
            fds = Path(f"/proc/{pid}/fd")
            if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
                holders.append(pid)
    return holders


async def wait_workers(p: Process, port: int, n: int, gone: int) -> list[int]:
    """Wait until ``n`` workers, ``gone`` not among them, all listen on ``port``."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        workers = await asyncio.to_thread(p.workers)
        ready = len(workers) == n and gone not in workers
        if ready and await asyncio.to_thread(listening_pids, workers, port) == workers:
            return workers
        assert time.monotonic() < deadline, f"worker not restarted and listening: {workers}"
        await asyncio.sleep(0.1)
