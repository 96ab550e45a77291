"""A proxy config with the simulated attestation provider, prepared as a supervisor would.

:func:`simulated_config` gives one loopback listener and ``[attestation]`` with the simulated
provider for ``RATLS_NAME``; :func:`prepare_simulated` prepares its certificates (RA-TLS
certificate, development CA, receipt signing key) in the state directory and builds the
worker's store; :func:`dev_verify_options` trusts the development attestation key it made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certmgr.attest.ratls_store import ratls_dir
from certmgr.attest.verify import VerifyOptions, load_dev_key
from certmgr.keys import InsecureDevSealer
from proxy.config import Config, loads
from proxy.control.certificates import prepare_certificates
from proxy.dataplane.certstore import build_store
from proxy.runtime import build_runtime

RATLS_NAME = "attest.test"


def simulated_config(state: Path, extra: str = "") -> Config:
    """A config with the simulated provider; ``extra`` lines override [attestation] keys."""
    keys = {"provider": '"simulated"', "server_name": f'"{RATLS_NAME}"'}
    for line in extra.splitlines():
        k, _, v = line.partition("=")
        keys[k.strip()] = v.strip()
    body = "\n".join(f"{k} = {v}" for k, v in keys.items())
    return loads(
        f'state_dir = "{state}"\n[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\n'
        '[admin]\nlisten = ""\n[logging]\naccess_log = false\n'
        f"[attestation]\n{body}\n"
    )


def prepare_simulated(state: Path, extra: str = "") -> tuple[Config, Any]:
    """Prepare the certificates of :func:`simulated_config` (blocking) and build the store."""
    cfg = simulated_config(state, extra)
    sealer = InsecureDevSealer()
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    return cfg, build_store(cfg, sealer)


def dev_verify_options(state: Path) -> VerifyOptions:
    """Verifier options trusting the development attestation key prepared in ``state``."""
    key = load_dev_key((ratls_dir(state) / "dev-attestation-key.pub.pem").read_bytes())
    return VerifyOptions(trusted_dev_keys=(key,), any_measurement=True)
