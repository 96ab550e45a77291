"""TLS policy and the listener context that picks a certificate per handshake by SNI.

Policy: Mozilla "intermediate" (server-side TLS guidelines, v5.7): TLS 1.2 and 1.3 only,
AEAD cipher suites only with ECDHE key exchange, no compression, no renegotiation, ALPN
``http/1.1``. TLS 1.3 suites are all AEAD by definition and are left at OpenSSL's defaults.

The listener's own context holds no certificate. Its ``sni_callback`` runs synchronously in
the middle of every ClientHello (OpenSSL calls it with or without an SNI extension) and
points the connection at the context of the certificate :meth:`CertStore.select` returns
from the holder's current store: no await, no lock, and a swap of the store affects only
later handshakes.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from certmgr.acme.challenges.tlsalpn01 import offers_alpn
from certmgr.store import StoreHolder
from proxy.log import tls_log as log

__all__ = [
    "MOZILLA_INTERMEDIATE_TLS12_CIPHERS",
    "context_factory",
    "listener_context",
    "set_acme_tls_hook",
]

# Mozilla intermediate, TLS 1.2 part, restricted to ECDHE (we do not configure DH params).
MOZILLA_INTERMEDIATE_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

ALPN_HTTP11 = "http/1.1"


def context_factory(min_version: str = "1.2") -> Callable[[], ssl.SSLContext]:
    """A factory of server contexts configured to the policy (one per certificate)."""

    def make() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_ciphers(MOZILLA_INTERMEDIATE_TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        # Mozilla intermediate: clients choose (all offered suites are strong).
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.set_alpn_protocols([ALPN_HTTP11])
        # Key-exchange groups stay at OpenSSL's defaults (X25519 first, then P-256, ...), as
        # Mozilla intermediate lists. Restricting them to P-256 made every TLS 1.3 client
        # that leads with an X25519 key share (nearly all) pay a HelloRetryRequest round trip.
        return ctx

    return make


def listener_context(
    holder: StoreHolder,
    min_version: str = "1.2",
    on_hello: Callable[[bool], None] | None = None,
) -> ssl.SSLContext:
    """The context given to the listening socket; dispatches each handshake by SNI.

    ``on_hello(matched)`` is called for every ClientHello (for metrics).
    """
    ctx = context_factory(min_version)()

    def sni_callback(
        sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        store = holder.current
        if store.challenges and server_name and getattr(sslobj, _ACME_TLS_ATTR, False):
            challenge = store.challenges.get(server_name.rstrip(".").lower())
            if challenge is not None:  # RFC 8737 3: only to hellos offering acme-tls/1
                sslobj.context = challenge
                return None
        entry = store.select(server_name)
        if on_hello is not None:
            on_hello(entry is not None)
        if entry is None:
            log.debug("no certificate for SNI %r: refusing handshake", server_name)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = entry.context
        return None

    ctx.sni_callback = sni_callback
    return ctx


# -- TLS-ALPN-01 (RFC 8737): who offered acme-tls/1 ----------------------------------------
#
# Python's sni_callback runs before ALPN selection and cannot see the client's ALPN list,
# so OpenSSL's message callback (CPython's ``SSLContext._msg_callback``, called with the raw
# ClientHello before the servername callback) marks the connection object when its hello
# offers acme-tls/1. It is installed only while a challenge is pending
# (:func:`set_acme_tls_hook`), so normal operation pays nothing for it.

_ACME_TLS_ATTR = "_teeproxy_acme_tls"


def _acme_msg_callback(
    conn: object,
    direction: str,
    _version: object,
    content_type: object,
    msg_type: object,
    data: bytes,
) -> None:
    hello = ssl._TLSMessageType.CLIENT_HELLO  # type: ignore[attr-defined]
    if direction == "read" and msg_type == hello and offers_alpn(data):
        setattr(conn, _ACME_TLS_ATTR, True)


def set_acme_tls_hook(ctx: ssl.SSLContext, enabled: bool) -> None:
    """Install (or remove) the ClientHello inspection that TLS-ALPN-01 needs."""
    ctx._msg_callback = _acme_msg_callback if enabled else None  # type: ignore[attr-defined]
