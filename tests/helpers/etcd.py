"""A real three-member etcd cluster on loopback (Debian ``etcd-server``), members stoppable.

:func:`start_etcd_cluster` starts ``n`` members on free 127.0.0.1 ports, each with its own
data directory, and waits until every one answers ``/health``. :meth:`EtcdCluster.stop_member`
and :meth:`EtcdCluster.start_member` stop and restart one member by PID (same data dir,
so it rejoins); :meth:`EtcdCluster.stop` stops all. :meth:`EtcdCluster.dump` reads every
key and value (through ``etcdctl``-free HTTP) for the plaintext scan.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.ports import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    members: list[Member]
    directory: Path
    token: str
    initial: str = ""
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def _start(self, m: Member, state: str) -> None:
        log = (self.directory / f"{m.name}.log").open("ab")
        m.proc = subprocess.Popen(
            [
                ETCD,
                "--name",
                m.name,
                "--data-dir",
                str(m.data_dir),
                "--listen-client-urls",
                m.url,
                "--advertise-client-urls",
                m.url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{m.peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{m.peer_port}",
                "--initial-cluster",
                self.initial,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                self.token,
                # Loopback: short heartbeats make leader loss (a stopped member) quick.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started.append(m.proc)

    def wait_healthy(self, members: list[Member] | None = None, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        for m in members or self.members:
            while True:
                try:
                    with urllib.request.urlopen(f"{m.url}/health", timeout=1) as r:  # noqa: S310 - http loopback
                        if json.loads(r.read()).get("health") == "true":
                            break
                except OSError:
                    pass
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited ({m.proc.returncode})")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {m.name} not healthy within {within} s")
                time.sleep(0.1)

    def stop_member(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.terminate()
            try:
                m.proc.wait(10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(5)
        m.proc = None

    def start_member(self, i: int) -> None:
        m = self.members[i]
        if m.proc is None:
            self._start(m, "existing")
            self.wait_healthy([m])

    def stop(self) -> None:
        for i in range(len(self.members)):
            self.stop_member(i)
        for p in self.started:
            if p.poll() is None:
                p.kill()
                p.wait(5)

    def dump(self, prefix: bytes = b"\0") -> list[tuple[bytes, bytes]]:
        """Every key and value (all of them from the key ``\\0`` up), from any live member."""
        body = json.dumps(
            {
                "key": base64.b64encode(prefix).decode(),
                "range_end": base64.b64encode(b"\0").decode(),
            }
        ).encode()
        for m in self.members:
            if m.proc is None:
                continue
            with contextlib.suppress(OSError):
                req = urllib.request.Request(f"{m.url}/v3/kv/range", data=body, method="POST")  # noqa: S310
                with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - http loopback
                    doc = json.loads(r.read())
                return [
                    (base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")))
                    for kv in doc.get("kvs", [])
                ]
        raise RuntimeError("no etcd member answered")


def start_etcd_cluster(directory: Path, n: int = 3) -> EtcdCluster:
    """``n`` etcd members on loopback, healthy (blocking)."""
    if not Path(ETCD).exists():
        raise RuntimeError("etcd not installed: scripts/test.sh installs etcd-server")
    directory.mkdir(parents=True, exist_ok=True)
    members = [
        Member(f"e{i}", free_port(), free_port(), directory / f"e{i}.data") for i in range(n)
    ]
    cluster = EtcdCluster(members, directory, token=f"teeproxy-test-{directory.name}")
    cluster.initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
    try:
        for m in members:
            cluster._start(m, "new")
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster
