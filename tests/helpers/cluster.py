"""Replicas of one cluster for the end-to-end tests: configs, measurements, probes.

- :func:`simulated_mid`: the measurement id a simulated TD with a given MRCONFIGID reports;
- :func:`shared_dev_key`: one simulated attestation key for every replica (their quotes
  then verify under one trusted development key);
- :func:`replica_toml`: a ``teeproxy serve`` config in cluster mode (DNS-01 through Knot,
  governance against anvil, etcd endpoints);
- :func:`served_cert` / :func:`admin_json`: what a replica serves and says.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from pathlib import Path

from cryptography import x509

from certmgr.attest.measurement import measurement_id
from certmgr.attest.providers.simulated import SimulatedProvider, public_key_pem_path
from certmgr.attest.quote import parse_evidence
from certmgr.keys import InsecureDevSealer
from tests.helpers.acme_peers import TSIG_ENV, TSIG_NAME, Knot, Pebble


def config_id(tag: int) -> str:
    return bytes([tag]).hex() * 48


def simulated_mid(key_file: Path, tag: int) -> str:
    """The measurement id (0x + hex) of the simulated TD with MRCONFIGID ``config_id(tag)``."""
    provider = SimulatedProvider.load_or_create(
        key_file, InsecureDevSealer(), mr_config_id=bytes.fromhex(config_id(tag))
    )
    quote = provider.get_quote(bytes(64))
    return "0x" + measurement_id(parse_evidence(quote).measurement).hex()


def shared_dev_key(directory: Path) -> tuple[Path, Path]:
    """(sealed key file, public PEM) of one simulated attestation key (blocking)."""
    key_file = directory / "dev-attestation-key.sealed"
    SimulatedProvider.load_or_create(key_file, InsecureDevSealer())
    return key_file, public_key_pem_path(key_file)


def replica_toml(
    *,
    state: Path,
    member: str,
    tag: int,
    key_file: Path,
    pub: Path,
    pebble: Pebble,
    knot: Knot,
    backend: str,
    admin_port: int,
    rpc: str,
    contract: str,
    etcd: list[str],
    cluster: str,
    names: tuple[str, ...],
    mode: str = "enforce",
    key_wait: float = 60.0,
    shared_signing_key: bool = False,
) -> str:
    return f"""
state_dir = "{state}"
[server]
listen = ["127.0.0.1:0"]
workers = 1
drain_grace = 1.0
[backend]
url = "{backend}"
[admin]
listen = "127.0.0.1:{admin_port}"
[logging]
access_log = false
[dev_ca]
names = ["localhost"]
[attestation]
provider = "simulated"
server_name = "attest.test"
simulated_key_file = "{key_file}"
simulated_mr_config_id = "{config_id(tag)}"
[governance]
mode = "{mode}"
rpc_urls = ["{rpc}"]
contract = "{contract}"
refresh_period = 0.5
max_staleness = 10.0
rpc_timeout = 2.0
startup_wait = 20.0
[cluster]
enabled = true
name = "{cluster}"
member_id = "{member}"
etcd_endpoints = {json.dumps(etcd)}
etcd_timeout = 1.0
lease_ttl = 3
resync_interval = 1.0
key_wait = {key_wait}
trust_dev_keys = ["{pub}"]
shared_signing_key = {json.dumps(shared_signing_key)}
[acme]
enabled = true
names = [{", ".join(json.dumps(n) for n in names)}]
directory_urls = ["{pebble.directory}"]
ca_bundle = "{pebble.ca_bundle}"
challenge = "dns-01"
dns_update_server = "{knot.addr}"
dns_resolver = "{knot.addr}"
dns_auth_port = {knot.port}
tsig_key_name = "{TSIG_NAME}"
tsig_secret_env = "{TSIG_ENV}"
dns_timeout = 2.0
propagation_timeout = 20.0
caa_check = false
request_timeout = 10.0
order_timeout = 60.0
check_interval = 2.0
retry_base = 1.0
retry_max = 5.0
"""


def served_cert(port: int, name: str) -> x509.Certificate | None:
    """The leaf a replica presents for ``name`` (blocking), or None when it does not answer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), 2) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def admin_json(port: int, path: str) -> dict[str, object]:
    """GET an admin endpoint of a replica (blocking)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            data: dict[str, object] = json.loads(r.read())
            return data
    except urllib.error.HTTPError as e:
        data = json.loads(e.read())
        return data


def admin_text(port: int, path: str) -> str:
    """GET an admin endpoint's text (blocking), e.g. /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
        text: str = r.read().decode()
        return text
