"""Certificates in the supervisor: prepared before workers load them, checked, reported.

- :func:`prepare_certificates` (at start, on SIGHUP and when :func:`next_renewal` is due):
  the RA-TLS certificate (:mod:`proxy.control.attestation`) and, when no certificate is
  configured, the development CA and a fresh development leaf (stored sealed).
- :func:`check_certificates`: builds a store once so that a certificate the workers could
  not serve is a config error before any worker starts.
- :func:`served_certificates`: the leaf certificates the workers serve, from public files
  only (for ``/ready`` and the expiry metric).

ACME certificates are ordered by :mod:`proxy.control.acme`. Everything here blocks: call
it off the event loop.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from certmgr.devca import DevCA, renewal_due
from certmgr.errors import CertError
from certmgr.keys import Sealer
from proxy.config import Config
from proxy.control.attestation import attestation_renewal, prepare_attestation
from proxy.dataplane.certstore import build_store
from proxy.errors import ConfigError
from proxy.runtime import Runtime

__all__ = [
    "check_certificates",
    "next_renewal",
    "prepare_certificates",
    "served_certificates",
]


def prepare_certificates(cfg: Config, runtime: Runtime, now: dt.datetime | None = None) -> None:
    """Supervisor step: a fresh RA-TLS certificate (when there is a TEE) and, when the
    development CA is used, a fresh development leaf."""
    prepare_attestation(cfg, runtime, now)
    if cfg.tls.certificates or not cfg.dev_ca.enabled:
        return
    ca = DevCA.load_or_create(Path(cfg.state_dir), runtime.sealer, now=now)
    ca.current_leaf(cfg.dev_ca.names, dt.timedelta(seconds=cfg.dev_ca.leaf_lifetime), now=now)


def next_renewal(cfg: Config) -> dt.datetime | None:
    """When the development leaf or the RA-TLS certificate is next due (None: neither used)."""
    ratls = attestation_renewal(cfg)
    if cfg.tls.certificates or not cfg.dev_ca.enabled:
        return ratls
    # The public certificate is enough: no need to unseal the key on every check.
    pem = (Path(cfg.state_dir) / "dev-ca" / "leaf.pem").read_bytes()
    dev = renewal_due(x509.load_pem_x509_certificate(pem))
    return min(dev, ratls) if ratls is not None else dev


def check_certificates(cfg: Config, sealer: Sealer) -> None:
    """Build the certificate store once (blocking) so a bad certificate is a config error.

    Workers build their own store; this only checks that they will be able to.
    """
    try:
        build_store(cfg, sealer)
    except (CertError, OSError) as e:
        raise ConfigError("tls.certificates", str(e)) from e


def served_certificates(cfg: Config) -> list[tuple[str, x509.Certificate]]:
    """The leaf certificates the workers serve, read from public files only (no keys)."""
    paths = [(f"file:{c.cert_file}", Path(c.cert_file)) for c in cfg.tls.certificates]
    if not paths and cfg.dev_ca.enabled:
        paths = [("dev-ca", Path(cfg.state_dir) / "dev-ca" / "leaf.pem")]
    acme_pem = Path(cfg.state_dir) / "acme" / "cert.pem"
    if cfg.acme.enabled and acme_pem.exists():  # once the first order succeeded
        paths.insert(0, ("acme", acme_pem))
    return [(source, x509.load_pem_x509_certificate(p.read_bytes())) for source, p in paths]
