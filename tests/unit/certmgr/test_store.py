"""certmgr.store: CertStore.select, the pure SNI -> certificate choice, on entries built in
memory; entries built from certificate files, the key never handed to OpenSSL in plaintext.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
import trustme

from certmgr.errors import CertError
from certmgr.store import CertEntry, CertStore, StoreHolder, entry_from_files
from proxy.tls import context_factory
from tests.helpers.certs import leaf_files

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def entry(*names: str, source: str = "", days: int = 30) -> CertEntry:
    return CertEntry(
        names=frozenset(names),
        not_before=T0,
        not_after=T0 + dt.timedelta(days=days),
        spki_sha256=b"\0" * 32,
        source=source or names[0],
        context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
    )


@pytest.fixture
def store() -> CertStore:
    return CertStore.build(
        [
            entry("default.example", "127.0.0.1"),
            entry("api.example.com"),
            entry("*.example.com", source="wild"),
            entry("*.b.example.org", source="wild-b"),
        ]
    )


@pytest.mark.parametrize(
    ("sni", "source"),
    [
        pytest.param("api.example.com", "api.example.com", id="exact-beats-wildcard"),
        pytest.param("chat.example.com", "wild", id="wildcard-one-level"),
        pytest.param("CHAT.Example.COM", "wild", id="case-insensitive"),
        pytest.param("api.example.com.", "api.example.com", id="trailing-dot"),
        pytest.param("API.EXAMPLE.COM.", "api.example.com", id="case-and-dot"),
        pytest.param("x.b.example.org", "wild-b", id="wildcard-deeper-base"),
        pytest.param("a.b.example.com", "default.example", id="wildcard-not-two-levels"),
        pytest.param("example.com", "default.example", id="wildcard-not-the-apex"),
        pytest.param("b.example.org", "default.example", id="apex-of-wildcard-b"),
        pytest.param("unknown.test", "default.example", id="unknown-gets-default"),
        pytest.param(None, "default.example", id="no-sni-gets-default"),
        pytest.param("", "default.example", id="empty-sni-gets-default"),
    ],
)
def test_select(store: CertStore, sni: str | None, source: str) -> None:
    hit = store.select(sni)
    assert hit is not None
    assert hit.source == source


def test_strict_sni_refuses_unknown_names_but_not_missing_sni() -> None:
    strict = CertStore.build([entry("a.test"), entry("*.w.test", source="w")], strict_sni=True)
    assert strict.select("unknown.test") is None
    assert strict.select("x.y.w.test") is None
    assert strict.select("A.TEST.").source == "a.test"  # type: ignore[union-attr]
    assert strict.select("x.w.test").source == "w"  # type: ignore[union-attr]
    # No SNI at all (a client connecting by IP): the default certificate.
    assert strict.select(None).source == "a.test"  # type: ignore[union-attr]


def test_non_strict_unknown_name_gets_default() -> None:
    lax = CertStore.build([entry("a.test"), entry("b.test")])
    assert lax.select("zzz.test").source == "a.test"  # type: ignore[union-attr]


def test_duplicate_names_later_expiring_wins_in_any_order() -> None:
    short = entry("dup.test", "short-only.test", source="short", days=10)
    long = entry("dup.test", source="long", days=60)
    for order in ([short, long], [long, short]):
        s = CertStore.build(order)
        assert s.select("dup.test").source == "long"  # type: ignore[union-attr]
        assert s.select("short-only.test").source == "short"  # type: ignore[union-attr]
    # The default stays the first configured entry.
    assert CertStore.build([short, long]).default is short


def test_empty_store() -> None:
    empty = CertStore.build([])
    assert empty.default is None
    assert empty.select("a.test") is None
    assert empty.select(None) is None
    assert empty.earliest_expiry() is None


def test_earliest_expiry_and_validity() -> None:
    s = CertStore.build([entry("a.test", days=60), entry("b.test", days=5)])
    assert s.earliest_expiry() == T0 + dt.timedelta(days=5)
    e = s.entries[0]
    assert e.valid_at(T0)
    assert not e.valid_at(T0 - dt.timedelta(seconds=1))
    assert not e.valid_at(T0 + dt.timedelta(days=60))


def test_store_is_immutable_and_holder_swaps_whole() -> None:
    a = CertStore.build([entry("a.test")])
    b = CertStore.build([entry("b.test")])
    with pytest.raises(AttributeError):
        a.strict_sni = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        a._by_name["x"] = a.entries[0]  # type: ignore[index]
    holder = StoreHolder(a)
    seen = holder.current
    holder.current = b
    assert seen.select("a.test") is a.entries[0]  # a snapshot taken before is unchanged
    assert holder.current.select("b.test") is b.entries[0]


# -- building entries from files (operator-provided certificates) ----------------------------


def _write(leaf: trustme.LeafCert, d: Path) -> tuple[str, str]:
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


def test_entry_from_files_names_and_validity(leaf: trustme.LeafCert, tmp_path: Path) -> None:
    cert, key = _write(leaf, tmp_path)
    e = entry_from_files(cert, key, None, context_factory())
    assert e.names == frozenset({"localhost", "127.0.0.1", "::1"})
    assert e.source == f"file:{cert}"
    assert len(e.spki_sha256) == 32


def test_entry_from_files_refuses_mismatched_key(ca: trustme.CA, tmp_path: Path) -> None:
    a = ca.issue_cert("a.test", key_type=trustme.KeyType.ECDSA)
    b = ca.issue_cert("b.test", key_type=trustme.KeyType.ECDSA)
    cert, _ = _write(a, tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(b.private_key_pem.bytes())
    with pytest.raises(CertError, match=r"does not match|do not load"):
        entry_from_files(cert, str(other), None, context_factory())


def test_entry_from_files_refuses_expired_and_missing(
    leaf: trustme.LeafCert, tmp_path: Path
) -> None:
    cert, key = _write(leaf, tmp_path)
    with pytest.raises(CertError, match="not valid now"):
        entry_from_files(
            cert, key, None, context_factory(), now=dt.datetime(3001, 1, 1, tzinfo=dt.UTC)
        )
    with pytest.raises(CertError, match="cannot read"):
        entry_from_files(str(tmp_path / "nope.pem"), key, None, context_factory())


def test_openssl_never_reads_a_plaintext_key(leaf: trustme.LeafCert, tmp_path: Path) -> None:
    """The temporary file handed to load_cert_chain holds the key encrypted, even when the
    operator's key file is plaintext."""
    cert, key = leaf_files(leaf, tmp_path)
    assert b"BEGIN PRIVATE KEY" in key.read_bytes() or b"BEGIN EC PRIVATE KEY" in key.read_bytes()
    handed: list[bytes] = []
    make = context_factory()

    class Spy(ssl.SSLContext):
        def load_cert_chain(self, certfile, keyfile=None, password=None):  # type: ignore[no-untyped-def]
            handed.append(Path(certfile).read_bytes())
            return super().load_cert_chain(certfile, keyfile, password)

    def factory() -> ssl.SSLContext:
        ctx = Spy(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = make().minimum_version
        return ctx

    entry = entry_from_files(str(cert), str(key), None, factory)
    assert entry.names == frozenset({"localhost", "127.0.0.1", "::1"})
    [pem] = handed
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem
    assert b"BEGIN PRIVATE KEY" not in pem and b"BEGIN EC PRIVATE KEY" not in pem
    assert key.read_bytes().split(b"-----")[2].strip() not in pem
