"""proxy.control.supervisor: the worker monitor, without processes (fake workers); a
spawned worker does not import the CLI again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import proxy
from proxy.config import loads
from proxy.control.supervisor import Supervisor, advertised_url
from proxy.tasks import spawn


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
    task = spawn(sup._monitor(), "test-monitor")
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


@pytest.mark.parametrize(
    ("listen", "advertise", "expected"),
    [
        ("127.0.0.1:8443", "", "https://127.0.0.1:8443"),
        ("[::1]:8443", "", "https://[::1]:8443"),
        ("0.0.0.0:8443", "", ""),  # a wildcard says nothing about where to connect
        ("0.0.0.0:8443", "https://r1.internal:8443", "https://r1.internal:8443"),
    ],
)
def test_advertised_url(listen: str, advertise: str, expected: str) -> None:
    cfg = loads(
        f'[server]\nlisten = ["{listen}"]\n'
        '[attestation]\nprovider = "simulated"\n'
        "[governance]\nmode = 'monitor'\n"
        'rpc_urls = ["http://127.0.0.1:8545"]\n'
        'contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"\n'
        '[cluster]\nenabled = true\nname = "f"\nmember_id = "r1"\n'
        f'etcd_endpoints = ["http://127.0.0.1:2379"]\nadvertise_url = "{advertise}"\n'
    )
    assert advertised_url(cfg) == expected


def test_a_spawned_worker_does_not_run_the_cli_again(tmp_path: Path) -> None:
    """The console script imports proxy.cli.main (every command); a spawned worker must not
    import it again (multiprocessing reruns the parent's __main__ unless it is hidden)."""
    script = tmp_path / "teeproxy"
    script.write_text(
        "import contextlib, multiprocessing, sys\n"
        "from proxy.cli.main import main  # as the console script does\n"
        "from proxy.control.supervisor import _bare_main\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    names = {'proxy.cli.main', 'dcap_qvl'}\n"
        "    code = f'import sys; print(sorted({names!r} & set(sys.modules)))'\n"
        "    for hidden in (False, True):\n"
        "        p = ctx.Process(target=exec, args=(code,))\n"
        "        with _bare_main() if hidden else contextlib.nullcontext():\n"
        "            p.start()\n"
        "        p.join()\n"
        "    print(sys.modules['__main__'].__file__ == __file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(proxy.__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    shown, hidden, restored = out.stdout.splitlines()
    assert shown == "['dcap_qvl', 'proxy.cli.main']"  # what every worker loaded before
    assert hidden == "[]"
    assert restored == "True"
