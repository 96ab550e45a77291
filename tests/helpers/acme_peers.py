"""Real ACME and DNS peers on loopback: Pebble (Debian ``pebble``) and Knot (Debian ``knot``).

- :func:`start_knot` (the ``knot`` fixture): knotd serving the zone ``example.test`` on its
  own 127.0.0.1 port, accepting RFC 2136 updates signed with a generated TSIG key
  (hmac-sha256); it is also the DNS server Pebble resolves names through, so every
  validation is real.
- :func:`start_pebble` (the ``pebble_factory`` fixture): Pebble with a trustme certificate for
  its own listener; ``httpPort`` and ``tlsPort`` point at ports the test's proxy then listens
  on. Fault injection is off by default (no validation sleep, no nonce rejection, no
  authorization reuse) and turned on by the tests that are about it.
- :func:`acme_toml`: a proxy config ordering from that Pebble, validated through that Knot.

Every process is started in a temporary directory and stopped by its PID; the fixtures are
in tests/integration/conftest.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.helpers.ports import free_port

ZONE = "example.test"
TSIG_NAME = "acme-key"
TSIG_ENV = "TEEPROXY_TEST_TSIG_SECRET"
NAMES_A = ("a", "b", "c", "d", "e", "f", "g", "h", "www", "x.forbidden")


def _need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{binary} is not installed (Debian packages pebble, knot): required peer")
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {port}: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class Knot:
    port: int
    secret: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_records: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.dir / "knotd.log"
        self.proc = subprocess.Popen(
            [_need("knotd"), "-c", str(self.dir / "knot.conf")],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port, self.proc, "knotd", log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def write_knot_config(d: Path, port: int, secret: str, extra: list[str]) -> None:
    records = "\n".join(f"{n} A 127.0.0.1" for n in NAMES_A)
    (d / f"{ZONE}.zone").write_text(
        f"$ORIGIN {ZONE}.\n$TTL 60\n"
        f"@ SOA ns1 hostmaster 1 3600 600 86400 60\n@ NS ns1\nns1 A 127.0.0.1\n"
        f"{records}\n"
        'forbidden CAA 0 issue "other-ca.example"\n' + "\n".join(extra) + "\n"
    )
    # The parent zone too, so CAA tree climbing (RFC 8659 3) gets answers up to the TLD.
    (d / "test.zone").write_text(
        "$ORIGIN test.\n$TTL 60\n@ SOA ns1.example.test. hostmaster 1 3600 600 86400 60\n"
        "@ NS ns1.example.test.\n"
    )
    (d / "knot.conf").write_text(
        f"""server:
    listen: 127.0.0.1@{port}
    rundir: "{d}"
database:
    storage: "{d}/db"
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: info
key:
  - id: {TSIG_NAME}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: acme-update
    key: {TSIG_NAME}
    action: update
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    journal-content: all
zone:
  - domain: {ZONE}
    file: "{ZONE}.zone"
    acl: acme-update
  - domain: test
    file: "test.zone"
"""
    )


def start_knot(d: Path) -> Knot:
    """knotd on a free 127.0.0.1 port in ``d``, with a fresh TSIG secret (hmac-sha256)."""
    (d / "db").mkdir(parents=True)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    k = Knot(port=free_port(), secret=secret, dir=d)
    write_knot_config(d, k.port, secret, [])
    k.start()
    return k


@dataclass
class Pebble:
    port: int
    mgmt_port: int
    http_port: int
    tls_port: int
    ca_bundle: Path
    dir: Path
    dns: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self, **faults: str) -> None:
        env = {**os.environ, **self.env, **faults}
        log = self.dir / "pebble.log"
        self.proc = subprocess.Popen(
            [_need("pebble"), "-config", str(self.dir / "pebble.json"), "-dnsserver", self.dns],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        _wait_port(self.port, self.proc, "pebble", log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def log(self) -> str:
        return (self.dir / "pebble.log").read_text()


PebbleFactory = Callable[..., Pebble]


def start_pebble(
    d: Path, knot: Knot, validity: int = 0, eab: dict[str, str] | None = None, **faults: str
) -> Pebble:
    """Pebble in a new directory ``d``, resolving through ``knot``, with a trustme certificate
    for its own listener; ``faults`` are Pebble's environment switches."""
    d.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.private_key_pem.write_to_path(str(d / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    p = Pebble(
        port=free_port(),
        mgmt_port=free_port(),
        http_port=free_port(),
        tls_port=free_port(),
        ca_bundle=d / "ca.pem",
        dir=d,
        dns=knot.addr,
        env={
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        },
    )
    cfg: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{p.port}",
        "managementListenAddress": f"127.0.0.1:{p.mgmt_port}",
        "certificate": str(d / "cert.pem"),
        "privateKey": str(d / "key.pem"),
        "httpPort": p.http_port,
        "tlsPort": p.tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity:
        cfg["certificateValidityPeriod"] = validity
    if eab:  # RFC 8555 7.3.4: kid -> base64url HMAC key
        cfg["externalAccountBindingRequired"] = True
        cfg["externalAccountMACKeys"] = eab
    (d / "pebble.json").write_text(json.dumps({"pebble": cfg}))
    p.start(**faults)
    return p


def acme_toml(
    state_dir: Path,
    pebble: Pebble,
    knot: Knot,
    backend_url: str,
    names: tuple[str, ...],
    *,
    challenge: str,
    extra: str = "",
    directories: tuple[str, ...] = (),
) -> str:
    dirs = ", ".join(json.dumps(u) for u in (directories or (pebble.directory,)))
    return f"""
state_dir = "{state_dir}"
[server]
listen = ["127.0.0.1:{pebble.tls_port}"]
workers = 1
drain_grace = 1.0
http_redirect_listen = ["127.0.0.1:{pebble.http_port}"]
[backend]
url = "{backend_url}"
[admin]
listen = ""
[logging]
access_log = false
[dev_ca]
names = ["localhost"]
[acme]
enabled = true
names = [{", ".join(json.dumps(n) for n in names)}]
directory_urls = [{dirs}]
ca_bundle = "{pebble.ca_bundle}"
challenge = "{challenge}"
dns_update_server = "{knot.addr}"
dns_resolver = "{knot.addr}"
dns_auth_port = {knot.port}
tsig_key_name = "{TSIG_NAME}"
tsig_secret_env = "{TSIG_ENV}"
dns_timeout = 2.0
propagation_timeout = 20.0
caa_identities = ["pebble.test"]
request_timeout = 10.0
order_timeout = 60.0
retry_base = 5.0
retry_max = 60.0
{extra}
"""
