"""proxy.tls: the TLS policy, checked on the contexts and by in-memory handshakes
(ssl.MemoryBIO, no sockets)."""

from __future__ import annotations

import ssl

import pytest
import trustme

from certmgr.store import CertStore, StoreHolder
from proxy.tls import ALPN_HTTP11, context_factory, listener_context
from tests.helpers.proxies import store_from_leaf

OLD_VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1, id="TLSv1.0"),
    pytest.param(ssl.TLSVersion.TLSv1_1, id="TLSv1.1"),
]


class HandshakeFailed(Exception):
    """Either side failed; ``client`` and ``server`` hold each side's error (or None)."""

    def __init__(self, client: ssl.SSLError | None, server: ssl.SSLError | None) -> None:
        super().__init__(f"client: {client}; server: {server}")
        self.client = client
        self.server = server


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake between two contexts over memory BIOs (no sockets).

    A failure on one side is delivered to the other (its alert is passed on) before
    HandshakeFailed is raised with both sides' errors.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    errors: dict[str, ssl.SSLError] = {}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            if done[name] or name in errors:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                errors[name] = e
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client, server
        if errors and all(done[n] or n in errors for n in done):
            break
    if errors:
        raise HandshakeFailed(errors.get("client"), errors.get("server"))
    raise AssertionError("handshake did not complete")


def peer_pem(obj: ssl.SSLObject) -> bytes:
    der = obj.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def permissive_client(ca: trustme.CA, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client able to speak exactly ``version`` (legacy versions need SECLEVEL 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


@pytest.fixture(scope="module")
def served(leaf: trustme.LeafCert) -> CertStore:
    return store_from_leaf(leaf, source="unit")


@pytest.fixture
def server_ctx(served: CertStore) -> ssl.SSLContext:
    assert served.default is not None
    return served.default.context


# -- the context itself ---------------------------------------------------------------------


def test_versions_default_12_to_13() -> None:
    ctx = context_factory()()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3


def test_versions_13_only() -> None:
    ctx = context_factory("1.3")()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_options_no_compression_no_renegotiation() -> None:
    ctx = context_factory()()
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_SSLv3


def test_ciphers_are_aead_only_with_ecdhe_for_tls12() -> None:
    ciphers = context_factory()().get_ciphers()
    assert ciphers
    for c in ciphers:
        assert c["aead"], c["name"]
        assert any(m in c["name"] for m in ("GCM", "CHACHA20", "CCM")), c["name"]
        assert "CBC" not in c["description"] and "SHA1" not in c["description"]
        if c["protocol"] == "TLSv1.2":
            assert c["kea"] == "kx-ecdhe", c["name"]
    names = {c["name"] for c in ciphers}
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in names
    assert "ECDHE-RSA-CHACHA20-POLY1305" in names
    assert "TLS_AES_128_GCM_SHA256" in names
    assert not any(
        c["name"].endswith(("-SHA", "-SHA256", "-SHA384")) and not c["aead"] for c in ciphers
    )


def test_each_call_makes_a_fresh_context() -> None:
    factory = context_factory()
    assert factory() is not factory()


# -- handshakes in memory -------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls12_and_tls13_handshake_with_alpn(
    ca: trustme.CA, server_ctx: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.minimum_version = client_ctx.maximum_version = version
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client, server = handshake(server_ctx, client_ctx, "localhost")
    assert client.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    assert client.selected_alpn_protocol() == ALPN_HTTP11 == "http/1.1"
    assert server.selected_alpn_protocol() == "http/1.1"
    cipher = client.cipher()
    assert cipher is not None
    assert any(m in cipher[0] for m in ("GCM", "CHACHA20")), cipher


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", OLD_VERSIONS)
def test_tls10_and_tls11_cannot_be_negotiated(
    ca: trustme.CA, leaf: trustme.LeafCert, server_ctx: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    client_ctx = permissive_client(ca, version)
    # Control: the same client does complete a handshake with a server that allows it, so
    # the failure below is the policy's doing and not the client's.
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(lax)
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.minimum_version = ssl.TLSVersion.TLSv1
    client, _ = handshake(lax, client_ctx, "localhost")
    assert client.version() in ("TLSv1", "TLSv1.1")

    with pytest.raises(HandshakeFailed) as info:
        handshake(server_ctx, permissive_client(ca, version), "localhost")
    assert info.value.server is not None
    assert "UNSUPPORTED_PROTOCOL" in str(info.value.server).upper()
    assert info.value.client is not None  # the client was told (protocol_version alert)


def test_tls12_client_with_only_cbc_ciphers_is_refused(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    client_ctx = permissive_client(ca, ssl.TLSVersion.TLSv1_2)
    client_ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    with pytest.raises(HandshakeFailed) as info:
        handshake(server_ctx, client_ctx, "localhost")
    assert "NO_SHARED_CIPHER" in str(info.value.server).upper()
    assert info.value.client is not None


def test_min_version_13_refuses_tls12(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    ctx13 = context_factory("1.3")()
    leaf.configure_cert(ctx13)
    with pytest.raises(HandshakeFailed) as info:
        handshake(ctx13, permissive_client(ca, ssl.TLSVersion.TLSv1_2), "localhost")
    assert "UNSUPPORTED_PROTOCOL" in str(info.value.server).upper()
    client, _ = handshake(ctx13, permissive_client(ca, ssl.TLSVersion.TLSv1_3), "localhost")
    assert client.version() == "TLSv1.3"


# -- the listener context: SNI dispatch ------------------------------------------------------


def test_listener_context_dispatches_by_sni_and_reports_hellos(
    ca: trustme.CA, served: CertStore
) -> None:
    other = ca.issue_cert("b.test", key_type=trustme.KeyType.ECDSA)
    store_b = store_from_leaf(other, source="b")
    both = CertStore.build([*served.entries, *store_b.entries], strict_sni=True)
    hellos: list[bool] = []
    listener = listener_context(StoreHolder(both), on_hello=hellos.append)
    assert listener.minimum_version == ssl.TLSVersion.TLSv1_2

    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client, _ = handshake(listener, client_ctx, "b.test")
    assert peer_pem(client) == other.cert_chain_pems[0].bytes()
    client, _ = handshake(listener, client_ctx, "localhost")
    assert peer_pem(client) != other.cert_chain_pems[0].bytes()
    assert ("DNS", "localhost") in client.getpeercert()["subjectAltName"]  # type: ignore[operator]

    with pytest.raises(HandshakeFailed) as info:
        handshake(listener, client_ctx, "unknown.test")
    # The client receives the unrecognized_name alert the SNI callback chose.
    assert "UNRECOGNIZED_NAME" in str(info.value.client).upper()
    assert hellos == [True, True, False]


def test_tls13_default_client_needs_no_hello_retry(ca: trustme.CA, served: CertStore) -> None:
    """One ClientHello per handshake: the server accepts the X25519 key share clients lead
    with (a P-256-only group list forced a HelloRetryRequest, a second ClientHello and an
    extra round trip on every TLS 1.3 handshake)."""
    hellos: list[bool] = []
    listener = listener_context(StoreHolder(served), on_hello=hellos.append)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client, _ = handshake(listener, client_ctx, "localhost")
    assert client.version() == "TLSv1.3"
    assert hellos == [True]
