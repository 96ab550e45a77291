"""A worker's certificate store, built from what the supervisor prepared (blocking).

The supervisor *prepares* certificates (:mod:`proxy.control.certificates`: the
development CA and leaf, the RA-TLS certificate, ACME orders); every worker *loads* the
prepared material into a new immutable :class:`certmgr.store.CertStore` and swaps it in
whole. Order: the ACME certificate first (the default when valid), configured files, the
development leaf, and the RA-TLS certificate last (served only to its own SNI name).
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

from certmgr.attest.ratls_store import load_ratls
from certmgr.devca import load_stored_leaf
from certmgr.errors import CertError
from certmgr.keys import Sealer
from certmgr.store import CertEntry, CertStore, entry_from_files, entry_from_key
from proxy.config import Config
from proxy.dataplane.acme import acme_store_parts
from proxy.log import attest_log
from proxy.tls import context_factory

__all__ = ["attestation_entry", "build_store"]


def build_store(cfg: Config, sealer: Sealer, now: dt.datetime | None = None) -> CertStore:
    """Worker step: load every configured certificate into a new immutable store."""
    factory = context_factory(cfg.tls.min_version)
    # ACME first: its certificate, when stored and valid, is the default one.
    entries, challenges = acme_store_parts(cfg, sealer, factory, now)
    for c in cfg.tls.certificates:
        entries.append(
            entry_from_files(c.cert_file, c.key_file, c.key_password(), factory, now=now)
        )
    if not cfg.tls.certificates and cfg.dev_ca.enabled:
        leaf = load_stored_leaf(Path(cfg.state_dir), sealer)
        entries.append(entry_from_key(leaf.chain_pem, leaf.key, factory, source="dev-ca", now=now))
    ratls = attestation_entry(cfg, sealer, factory, now)
    if ratls is not None:  # last: never the default certificate
        entries.append(ratls)
    return CertStore.build(entries, strict_sni=cfg.tls.strict_sni, challenges=challenges)


def attestation_entry(
    cfg: Config,
    sealer: Sealer,
    factory: Callable[[], ssl.SSLContext],
    now: dt.datetime | None = None,
) -> CertEntry | None:
    """Worker step (blocking): the RA-TLS store entry, or None (logged) when unusable.

    An expired or unreadable RA-TLS certificate must not take the other certificates down
    with it: attestation alone fails closed (clients asking for it get no certificate for
    the name, or the default one, which does not verify as RA-TLS).
    """
    if cfg.attestation.provider == "none":
        return None
    try:
        stored = load_ratls(cfg.state_dir, sealer)
        if stored is None:
            return None
        pem, key = stored
        return entry_from_key(pem, key, factory, source="ratls", now=now)
    except (CertError, OSError, ValueError) as e:
        attest_log.error("RA-TLS certificate not served: %s", e)
        return None
