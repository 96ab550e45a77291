"""The loggers of the certmgr library, in one place (aiohttp's ``log.py`` habit).

Names are shared with the proxy (``proxy/log.py`` reuses these objects), so one
``logging`` configuration covers a subsystem whichever package logs for it. Messages take
lazy ``%s`` arguments and show keys only as SPKI SHA-256 fingerprints, never key material.
"""

from __future__ import annotations

import logging

__all__ = [
    "acme_log",
    "attest_log",
    "cluster_log",
    "keys_log",
    "policy_log",
    "signing_log",
    "tls_log",
]

acme_log = logging.getLogger("teeproxy.acme")  # ACME orders, challenges, CAA
attest_log = logging.getLogger("teeproxy.attest")  # quotes, RA-TLS, verification
cluster_log = logging.getLogger("teeproxy.cluster")  # etcd, key release, shared state
keys_log = logging.getLogger("teeproxy.keys")  # sealing
policy_log = logging.getLogger("teeproxy.policy")  # on-chain policy reads, dev chain
signing_log = logging.getLogger("teeproxy.signing")  # the receipt signing key
tls_log = logging.getLogger("teeproxy.tls")  # certificates (development CA)
