"""Supervisor and worker helpers that need no processes or sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.config import loads, reloadable
from proxy.control.certificates import check_certificates
from proxy.control.supervisor import Supervisor
from proxy.dataplane.worker import host_without_port
from proxy.errors import ConfigError
from proxy.tasks import spawn


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("", ""),
        ("[", ""),
        ("[]", ""),
    ],
)
def test_host_without_port(header: str, host: str) -> None:
    assert host_without_port(header) == host


def test_reload_applies_only_reloadable_sections() -> None:
    running = loads('state_dir = "/a"\n[server]\nlisten = ["127.0.0.1:4443"]\ndrain_grace = 5.0')
    new = loads(
        'state_dir = "/b"\n[server]\nlisten = ["127.0.0.1:0"]\ndrain_grace = 99.0\n'
        '[backend]\nurl = "http://127.0.0.1:9"\n[tls]\nhsts_max_age = 60\n'
        '[limits]\nmax_headers = 7\n[logging]\nlevel = "DEBUG"\n[admin]\nlisten = ""'
    )
    merged = reloadable(running, new)
    # Restart-only: the resolved listen ports, drain_grace, admin, state_dir.
    assert merged.server == running.server
    assert merged.admin == running.admin
    assert merged.state_dir == "/a"
    # Reloadable: everything else.
    assert merged.backend == new.backend
    assert merged.tls == new.tls
    assert merged.limits == new.limits
    assert merged.logging == new.logging
    assert merged.dev_ca == new.dev_ca


def test_check_certificates_turns_unservable_certs_into_config_errors(tmp_path: Any) -> None:
    cfg = loads(
        f'[[tls.certificates]]\ncert_file = "{tmp_path}/nope.pem"\nkey_file = "{tmp_path}/k.pem"'
    )
    with pytest.raises(ConfigError) as info:
        check_certificates(cfg, None)
    assert info.value.field == "tls.certificates"
    assert "nope.pem" in info.value.message


@dataclass
class FakeProc:
    pid: int
    alive: bool = False
    exitcode: int = -9

    def is_alive(self) -> bool:
        return self.alive


@dataclass
class FakeConn:
    closed: list[int] = field(default_factory=list)

    def close(self) -> None:
        self.closed.append(1)


async def test_monitor_restarts_every_dead_worker_in_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers dead at once: both are replaced (removal by index broke on the second)."""
    cfg = loads("[[tls.certificates]]\ncert_file = '/c.pem'\nkey_file = '/k.pem'")
    sup = Supervisor(cfg)
    live = (FakeProc(1, alive=True), FakeConn())
    dead1 = (FakeProc(2), FakeConn())
    dead2 = (FakeProc(3), FakeConn())
    sup._workers = [dead1, live, dead2]  # type: ignore[list-item]
    spawned: list[int] = []

    def fake_spawn() -> None:
        spawned.append(1)
        sup._workers.append((FakeProc(100 + len(spawned), alive=True), FakeConn()))  # type: ignore[arg-type]

    monkeypatch.setattr(sup, "_spawn_worker", fake_spawn)
    task = spawn(sup._monitor(None), "test-monitor")
    try:
        async with asyncio.timeout(5):
            while len(spawned) < 2 and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert spawned == [1, 1]
    pids = [p.pid for p, _ in sup._workers]
    assert 2 not in pids and 3 not in pids
    assert pids[0] == 1 and len(pids) == 3
    assert dead1[1].closed and dead2[1].closed and not live[1].closed
