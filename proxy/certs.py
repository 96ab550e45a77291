"""Building the certificate store from configuration (blocking: call off the event loop).

The supervisor *prepares* certificates (creates the development CA, issues or renews the
development leaf and stores it sealed); every worker *loads* the prepared material into an
immutable :class:`CertStore`. Later issues add ACME and RA-TLS sources here.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from cryptography import x509

from certmgr.devca import DevCA, load_stored_leaf, renewal_due
from certmgr.keys import InsecureDevSealer, Sealer
from certmgr.store import CertEntry, CertStore, entry_from_files, entry_from_key
from proxy.config import Config
from proxy.tls import context_factory

__all__ = [
    "build_store",
    "default_sealer",
    "next_renewal",
    "prepare_certificates",
    "served_certificates",
]

log = logging.getLogger("teeproxy.tls")

_warned = False


def default_sealer() -> Sealer:
    """The sealer in use. Only the insecure development sealer exists so far (issue 3)."""
    global _warned  # noqa: PLW0603 - warn once per process
    if not _warned:
        log.warning(
            "keys are sealed with the INSECURE development sealing key: "
            "stored keys are effectively plaintext (development only)"
        )
        _warned = True
    return InsecureDevSealer()


def prepare_certificates(cfg: Config, sealer: Sealer, now: dt.datetime | None = None) -> None:
    """Supervisor step: make sure the development leaf exists and is fresh when it is used."""
    if cfg.tls.certificates or not cfg.dev_ca.enabled:
        return
    ca = DevCA.load_or_create(Path(cfg.state_dir), sealer, now=now)
    ca.current_leaf(cfg.dev_ca.names, dt.timedelta(seconds=cfg.dev_ca.leaf_lifetime), now=now)


def next_renewal(cfg: Config, sealer: Sealer) -> dt.datetime | None:
    """When the development leaf is due for renewal (None when it is not in use)."""
    if cfg.tls.certificates or not cfg.dev_ca.enabled:
        return None
    # The public certificate is enough: no need to unseal the key on every check.
    pem = (Path(cfg.state_dir) / "dev-ca" / "leaf.pem").read_bytes()
    return renewal_due(x509.load_pem_x509_certificate(pem), dt.datetime.now(dt.UTC))


def build_store(cfg: Config, sealer: Sealer, now: dt.datetime | None = None) -> CertStore:
    """Worker step: load every configured certificate into a new immutable store."""
    factory = context_factory(cfg.tls.min_version)
    entries: list[CertEntry] = []
    for c in cfg.tls.certificates:
        entries.append(
            entry_from_files(c.cert_file, c.key_file, c.key_password(), factory, now=now)
        )
    if not entries and cfg.dev_ca.enabled:
        leaf = load_stored_leaf(Path(cfg.state_dir), sealer)
        entries.append(entry_from_key(leaf.chain_pem, leaf.key, factory, source="dev-ca", now=now))
    return CertStore.build(entries, strict_sni=cfg.tls.strict_sni)


def served_certificates(cfg: Config) -> list[tuple[str, x509.Certificate]]:
    """The leaf certificates the workers serve, read from public files only (no keys)."""
    paths = [(f"file:{c.cert_file}", Path(c.cert_file)) for c in cfg.tls.certificates]
    if not paths and cfg.dev_ca.enabled:
        paths = [("dev-ca", Path(cfg.state_dir) / "dev-ca" / "leaf.pem")]
    return [(source, x509.load_pem_x509_certificate(p.read_bytes())) for source, p in paths]
