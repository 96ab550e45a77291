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
from certmgr.store import CertStore, entry_from_files, entry_from_key
from proxy.acme_runtime import acme_store_parts
from proxy.config import Config
from proxy.errors import ConfigError
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


def default_sealer(cfg: Config | None = None) -> Sealer:
    """The sealer ``[sealing]`` selects (blocking: a TEE provider reads a device or socket).

    Without a config, or with provider "insecure-development", the development sealer.
    """
    if cfg is not None and cfg.sealing.provider != "insecure-development":
        from certmgr.errors import SealingUnavailable  # noqa: PLC0415 - issue 3
        from certmgr.sealing import make_sealer  # noqa: PLC0415

        s = cfg.sealing
        try:
            sealer = make_sealer(
                s.provider,
                gramine_key_path=s.gramine_key_path,
                dstack_socket=s.dstack_socket,
                dstack_key_path=s.dstack_key_path,
                timeout=s.timeout,
            )
        except SealingUnavailable as e:  # fail closed, with the field to look at
            raise ConfigError("sealing.provider", str(e)) from e
        log.info("keys are sealed with the %s sealing provider", sealer.provider)
        return sealer
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
    from proxy.wellknown import prepare_attestation  # noqa: PLC0415 - issue 4: RA-TLS

    prepare_attestation(cfg, sealer, now)
    if cfg.tls.certificates or not cfg.dev_ca.enabled:
        return
    ca = DevCA.load_or_create(Path(cfg.state_dir), sealer, now=now)
    ca.current_leaf(cfg.dev_ca.names, dt.timedelta(seconds=cfg.dev_ca.leaf_lifetime), now=now)


def next_renewal(cfg: Config, sealer: Sealer) -> dt.datetime | None:
    """When the development leaf or the RA-TLS certificate is next due (None: neither used)."""
    from proxy.wellknown import attestation_renewal  # noqa: PLC0415 - issue 4: RA-TLS

    ratls = attestation_renewal(cfg)
    if cfg.tls.certificates or not cfg.dev_ca.enabled:
        return ratls
    # The public certificate is enough: no need to unseal the key on every check.
    pem = (Path(cfg.state_dir) / "dev-ca" / "leaf.pem").read_bytes()
    dev = renewal_due(x509.load_pem_x509_certificate(pem))
    return min(dev, ratls) if ratls is not None else dev


def build_store(cfg: Config, sealer: Sealer, now: dt.datetime | None = None) -> CertStore:
    """Worker step: load every configured certificate into a new immutable store."""
    factory = context_factory(cfg.tls.min_version)
    # ACME first (issue 3): its certificate, when stored and valid, is the default one.
    entries, challenges = acme_store_parts(cfg, sealer, factory, now)
    for c in cfg.tls.certificates:
        entries.append(
            entry_from_files(c.cert_file, c.key_file, c.key_password(), factory, now=now)
        )
    if not cfg.tls.certificates and cfg.dev_ca.enabled:
        leaf = load_stored_leaf(Path(cfg.state_dir), sealer)
        entries.append(entry_from_key(leaf.chain_pem, leaf.key, factory, source="dev-ca", now=now))
    from proxy.wellknown import attestation_entry  # noqa: PLC0415 - issue 4: RA-TLS by SNI

    ratls = attestation_entry(cfg, sealer, factory, now)
    if ratls is not None:  # last: never the default certificate
        entries.append(ratls)
    return CertStore.build(entries, strict_sni=cfg.tls.strict_sni, challenges=challenges)


def served_certificates(cfg: Config) -> list[tuple[str, x509.Certificate]]:
    """The leaf certificates the workers serve, read from public files only (no keys)."""
    paths = [(f"file:{c.cert_file}", Path(c.cert_file)) for c in cfg.tls.certificates]
    if not paths and cfg.dev_ca.enabled:
        paths = [("dev-ca", Path(cfg.state_dir) / "dev-ca" / "leaf.pem")]
    acme_pem = Path(cfg.state_dir) / "acme" / "cert.pem"
    if cfg.acme.enabled and acme_pem.exists():  # issue 3: once the first order succeeded
        paths.insert(0, ("acme", acme_pem))
    return [(source, x509.load_pem_x509_certificate(p.read_bytes())) for source, p in paths]
