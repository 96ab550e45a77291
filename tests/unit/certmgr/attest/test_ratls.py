"""certmgr.attest.ratls: building our RA-TLS certificates and parsing anyone's, strictly."""

from __future__ import annotations

import contextlib
import hashlib

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.cmw import CMW_OID
from certmgr.attest.endorsements import (
    ENDORSEMENTS_OID,
    SNP_REPORT_TAG,
)
from certmgr.attest.intel import parse_quote
from certmgr.attest.ratls import (
    INTEL_SDK_QUOTE_OID,
    LEGACY_QUOTE_OID,
    MAX_CERT_SIZE,
    MAX_EXTENSION_SIZE,
    RATLS_OID,
    evidence_tag,
    expected_report_data,
    parse_certificate,
    parse_extension,
    pubkey_hash_matches,
    report_data_for_claims,
)
from certmgr.errors import RaTlsError
from tests.helpers.attest import (
    cmw,
    der,
    good_extension,
    legacy_quote_for,
    make_ratls,
    oid_der,
    ratls_artifact,
    resign_with_null_params,
    sign_tbs,
    spki,
    tbs_with_extensions,
    vector,
)
from tests.helpers.snp import gosev_cert_table, gosev_report, snp_cmw


def test_built_certificate_is_interoperable_format() -> None:
    cert_der, key = make_ratls(extra={"hostname": "attest.test"})
    cert = x509.load_der_x509_certificate(cert_der)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(RATLS_OID))
    assert ext.critical is False
    top = cbor2.loads(ext.value.value)  # type: ignore[attr-defined]
    assert isinstance(top, cbor2.CBORTag) and top.tag == 60000
    quote, claims_bytes = top.value
    claims = cbor2.loads(claims_bytes)
    # CCC interoperable RA-TLS: every value a byte string; pubkey-hash holds the CBOR
    # hash-entry, teeproxy's own claims the CBOR encoding of their value.
    assert all(isinstance(v, bytes) for v in claims.values())
    assert claims["pubkey-hash"] == bytes.fromhex("820158 20") + hashlib.sha256(spki(key)).digest()
    assert cbor2.loads(claims["pubkey-hash"]) == [1, hashlib.sha256(spki(key)).digest()]
    assert claims["hostname"] == cbor2.dumps("attest.test")
    assert parse_quote(quote).report_data == hashlib.sha256(claims_bytes).digest() + bytes(32)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]

    parsed = parse_certificate(cert_der)
    assert parsed.format == "tcg-cmw"
    assert parsed.self_signature_ok
    assert parsed.spki_der == spki(key)
    assert pubkey_hash_matches(parsed)
    assert expected_report_data(parsed) == report_data_for_claims(claims_bytes)


def test_pem_input() -> None:
    from cryptography.hazmat.primitives import serialization

    cert_der, _ = make_ratls()
    pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
    assert parse_certificate(pem).der == cert_der


def test_wrong_pubkey_hash_is_detected() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    cert_der, _ = make_ratls(claims_spki=spki(other))
    assert not pubkey_hash_matches(parse_certificate(cert_der))


def test_non_conformant_null_parameters_still_parse() -> None:
    cert_der, key = make_ratls()
    odd = resign_with_null_params(cert_der, key)
    try:
        x509.load_der_x509_certificate(odd)
        loader_refused = False
    except ValueError:
        loader_refused = True
    parsed = parse_certificate(odd)
    assert parsed.self_signature_ok
    assert parsed.format == "tcg-cmw"
    # The point of the hand-written reader: it works whether or not cryptography's does.
    assert loader_refused or parsed.der == odd


def test_gramine_legacy_extension() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    quote = legacy_quote_for(key)
    tbs = tbs_with_extensions(key, [(LEGACY_QUOTE_OID, False, quote)])
    cert = resign_with_null_params(b"", key, tbs=tbs) if False else sign_tbs(tbs, key)
    parsed = parse_certificate(cert)
    assert parsed.format == "intel-legacy"
    assert parsed.quote == quote
    assert parsed.self_signature_ok
    assert expected_report_data(parsed) == hashlib.sha256(spki(key)).digest() + bytes(32)


def test_explicit_critical_false_is_tolerated() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_tbs(tbs_with_extensions(key, [(RATLS_OID, False, good_extension(key))]), key)
    assert parse_certificate(cert).self_signature_ok


def test_critical_attestation_extension_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_tbs(tbs_with_extensions(key, [(RATLS_OID, True, good_extension(key))]), key)
    with pytest.raises(RaTlsError, match="critical"):
        parse_certificate(cert)


def test_duplicate_extensions_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ext = good_extension(key)
    cert = sign_tbs(
        tbs_with_extensions(key, [(RATLS_OID, False, ext), (RATLS_OID, False, ext)]), key
    )
    with pytest.raises(RaTlsError, match="duplicate extension"):
        parse_certificate(cert)


_OTHER_EVIDENCE = good_extension(ec.generate_private_key(ec.SECP256R1()))


def _tbs_with_tail(key: ec.EllipticCurvePrivateKey, before: bytes, after: bytes) -> bytes:
    """A certificate whose TBSCertificate has ``before`` and ``after`` around its [3]."""
    value = good_extension(key)
    tbs = tbs_with_extensions(key, [(RATLS_OID, False, value)])
    item = der(0x30, oid_der(RATLS_OID) + der(0x01, b"\x00") + der(0x04, value))
    ext = der(0xA3, der(0x30, item))  # the last field, as tbs_with_extensions writes it
    body = tbs[2 + (tbs[1] & 0x7F if tbs[1] & 0x80 else 0) :]
    assert body.endswith(ext)
    return sign_tbs(der(0x30, body[: -len(ext)] + before + ext + after), key)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # a second extensions field, with other evidence (read alone before: last wins)
        (b"", der(0xA3, der(0x30, der(0x30, oid_der(RATLS_OID) + der(0x04, _OTHER_EVIDENCE))))),
        (b"", der(0x81, b"\x00\x01")),  # issuerUniqueID after the extensions
        (b"", der(0xA4, b"")),  # no such field in RFC 5280
        (der(0x82, b"\x00\x01") + der(0x81, b"\x00\x01"), b""),  # [2] before [1]
    ],
)
def test_fields_after_the_key_out_of_rfc5280_order_rejected(before: bytes, after: bytes) -> None:
    # RFC 5280 4.1: [1], [2], [3], each optional, in order. With a second [3] one verifier
    # could read the first extensions and another the last.
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(RaTlsError, match="unexpected field"):
        parse_certificate(_tbs_with_tail(key, before, after))


def test_unique_ids_before_the_extensions_are_read() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ids = der(0x81, b"\x00\x01") + der(0x82, b"\x00\x02")
    parsed = parse_certificate(_tbs_with_tail(key, ids, b""))
    assert parsed.format == "tcg-cmw" and parsed.self_signature_ok


def test_legacy_next_to_tcg_is_an_extra_quote() -> None:
    """Gramine >= 1.8 writes both: the TCG extension is the evidence, the other is kept."""
    key = ec.generate_private_key(ec.SECP256R1())
    exts = [(RATLS_OID, False, good_extension(key)), (LEGACY_QUOTE_OID, False, b"q")]
    parsed = parse_certificate(sign_tbs(tbs_with_extensions(key, exts), key))
    assert parsed.format == "tcg-cmw"
    assert parsed.quote_extension == RATLS_OID
    assert parsed.extra_quotes == ((LEGACY_QUOTE_OID, b"q"),)


def test_two_legacy_extensions_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    exts = [(LEGACY_QUOTE_OID, False, b"q"), (INTEL_SDK_QUOTE_OID, False, b"r")]
    with pytest.raises(RaTlsError, match="2 legacy quote extensions"):
        parse_certificate(sign_tbs(tbs_with_extensions(key, exts), key))


def test_no_attestation_extension() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(RaTlsError, match="no attestation extension"):
        parse_certificate(sign_tbs(tbs_with_extensions(key, [("2.5.29.99", False, b"x")]), key))


_ENTRY = cbor2.dumps([1, bytes(32)])
_CLAIMS = cbor2.dumps({"pubkey-hash": _ENTRY})  # a1 6b "pubkey-hash" 58 24 <entry>


def test_the_definite_length_claims_parse() -> None:
    assert _CLAIMS[:15] == b"\xa1\x6bpubkey-hash\x58\x24"
    assert parse_extension(cmw(b"q", _CLAIMS))[2].pubkey_hash == bytes(32)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"\xff\x00", "malformed CBOR"),
        (cbor2.dumps([b"q", b"c"]), "tag 60000"),
        (cbor2.dumps(cbor2.CBORTag(60001, [b"q", b"c"])), "tag 60000"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q"])), r"\[bstr quote"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q", "text"])), r"\[bstr quote"),
        (cmw(b"q", cbor2.dumps([1, 2])), "CBOR map"),
        (cmw(b"q", cbor2.dumps({"x": 1})), "pubkey-hash"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([2, bytes(32)])})), "algorithm"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([True, bytes(32)])})), "algorithm"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([1, bytes(31)])})), "sha256 digest"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([7, bytes(32)])})), "sha384 digest"),
        # The array itself instead of a byte string holding it (what teeproxy wrongly
        # emitted before, and no other producer reads).
        (cmw(b"q", cbor2.dumps({"pubkey-hash": [1, bytes(32)]})), "byte string"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([1])})), r"hash-alg-id, hash-value"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": b"\xff"})), "malformed CBOR"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([1, bytes(32)]), "nonce": 5})), "nonce"),
        (
            cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([1, bytes(32)]), "hostname": "x"})),
            "hostname",
        ),
        (cmw(b"q", b"\xa2\x61a\x01\x61a\x02"), "malformed CBOR"),  # duplicate map keys
        (b"\x00" * (MAX_EXTENSION_SIZE + 1), "too large"),
        (cmw(b"q", b"\x00" * 9000), "claims too large"),
        (b"\x81" * 50 + b"\x00", "malformed CBOR"),  # nesting beyond the depth cap
        # The CCC formats are definite-length CBOR, one data item per byte string: bytes
        # after an item, or indefinite lengths, would let verifiers read different things.
        (cmw(b"q", _CLAIMS) + b"\x00", "attestation extension: 1 bytes after"),
        (cmw(b"q", _CLAIMS + b"\xa0"), "claims: 1 bytes after"),
        (cmw(b"q", cbor2.dumps({"pubkey-hash": _ENTRY + b"\x00"})), "pubkey-hash: 1 bytes after"),
        (b"\xd9\xea\x60\x9f" + cbor2.dumps(b"q") + cbor2.dumps(_CLAIMS) + b"\xff", "indefinite"),
        (cmw(b"q", b"\xbf" + _CLAIMS[1:] + b"\xff"), "indefinite"),  # the map
        (cmw(b"q", _CLAIMS[:13] + b"\x5f" + _CLAIMS[13:] + b"\xff"), "indefinite"),  # a value
    ],
)
def test_bad_extension_values(value: bytes, match: str) -> None:
    with pytest.raises(RaTlsError, match=match):
        parse_extension(value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",
        b"\x30\x05\x02\x01\x01",
        b"-----BEGIN CERTIFICATE-----\n!!\n",
    ],
)
def test_garbage_certificates(data: bytes) -> None:
    with pytest.raises(RaTlsError):
        parse_certificate(data)


_SEED, _ = make_ratls()


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(_SEED)),
)
def test_fuzz_certificate_parser(flips: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(_SEED)
    for pos, val in flips:
        b[pos] = val
    with contextlib.suppress(RaTlsError):
        parse_certificate(bytes(b[:cut]))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_extension_parser(data: bytes) -> None:
    with contextlib.suppress(RaTlsError):
        parse_extension(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.binary(max_size=8) | st.integers() | st.text(max_size=4),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
        max_leaves=20,
    )
)
def test_fuzz_structured_cbor(obj: object) -> None:
    for value in (cbor2.dumps(cbor2.CBORTag(60000, obj)), cmw(b"q", cbor2.dumps(obj))):
        with contextlib.suppress(RaTlsError):
            parse_extension(value)


# -- other producers' real certificates (tests/data/ratls/*/README.txt) --------------------

# file, format, the extension the quote came from, further quote extensions, self-signature
# hash, self-issued: as each README states them.
REAL_CERTS = [
    (
        "gramine/ccc-interop-gramine-cert.pem",
        "tcg-cmw",
        RATLS_OID,
        (LEGACY_QUOTE_OID,),  # its mis-encoded extnID, read as the intended OID
        "sha256",
        True,
    ),
    (
        "intel-sgxsdk/ccc-interop-intel-sgxsdk-cert.pem",
        "tcg-cmw",
        RATLS_OID,
        (INTEL_SDK_QUOTE_OID,),
        "sha256",
        True,
    ),
    ("rats-tls/ccc-interop-rats-tls-cert.pem", "tcg-cmw", RATLS_OID, (), "sha256", True),
    (
        "rats-tls-legacy/rats-tls-cert-sample.pem",
        "intel-legacy",
        LEGACY_QUOTE_OID,
        (),
        "sha1",
        True,
    ),
    (
        "rats-tls-legacy/rats-tls-cert-openssl-sample.pem",
        "intel-legacy",
        LEGACY_QUOTE_OID,
        (),
        "sha256",
        True,
    ),
    (
        "dstack/tdx-lite-v0-get-tls-key.pem",
        "dstack",
        "1.3.6.1.4.1.62397.1.8",
        (),
        "sha256",
        False,  # issued by "App Root Cert"
    ),
    ("dstack/tdx-lite-v0-app-root-cert.pem", "dstack", "1.3.6.1.4.1.62397.1.8", (), "sha256", True),
    (
        "dstack/tdx-lite-v1-issue-cert.leaf.pem",
        "dstack",
        "1.3.6.1.4.1.62397.1.8",
        (),
        "sha256",
        False,
    ),
]


@pytest.mark.parametrize("case", REAL_CERTS, ids=[c[0] for c in REAL_CERTS])
def test_real_certificates_parse(case: tuple[str, str, str, tuple[str, ...], str, bool]) -> None:
    name, fmt, ext, extra, sig_hash, self_issued = case
    parsed = parse_certificate(ratls_artifact(name))
    assert (parsed.format, parsed.quote_extension) == (fmt, ext)
    assert tuple(oid for oid, _ in parsed.extra_quotes) == extra
    assert parsed.signature_hash == sig_hash
    assert parsed.self_issued is self_issued
    # A self-issued certificate's signature verifies (the Gramine one only with a DER reader
    # that tolerates its NULL ECDSA parameters); a dstack leaf's is its CA's.
    assert parsed.self_signature_ok is self_issued
    assert pubkey_hash_matches(parsed)


def test_gramine_certificate_is_one_strict_parsers_refuse() -> None:
    """The reason for our own DER reader: pyca/cryptography refuses Gramine's certificate."""
    with pytest.raises(ValueError):
        x509.load_pem_x509_certificate(ratls_artifact("gramine/ccc-interop-gramine-cert.pem"))


def test_gramine_misencoded_oid_is_matched_by_its_bytes() -> None:
    der = parse_certificate(ratls_artifact("gramine/ccc-interop-gramine-cert.pem")).der
    assert bytes.fromhex("060b06092a864886f84d8a3906") in der  # OID TLV inside the OID


def test_real_claims_read_with_unknown_claims() -> None:
    """rats-tls's sample app adds custom claims (C strings with their NUL): ignored, shown."""
    claims = parse_certificate(ratls_artifact("rats-tls/ccc-interop-rats-tls-cert.pem")).claims
    assert claims is not None
    assert claims.hash_alg == 1
    assert claims.other == {"key_0": b"value_0\x00", "key_1": b"value_1\x00"}


# -- evidence tags by kind, and the endorsements extension ---------------------------------


def _claims_for(key: ec.EllipticCurvePrivateKey) -> bytes:
    return cbor2.dumps({"pubkey-hash": cbor2.dumps([1, hashlib.sha256(spki(key)).digest()])})


def test_an_snp_report_is_wrapped_in_tag_0x1a7504() -> None:
    """rats-tls dice.h: 60000 for Intel quotes, 0x1a7504 for SEV-SNP reports."""
    report = gosev_report()
    cert_der, _ = make_ratls(quote=report)
    ext = x509.load_der_x509_certificate(cert_der).extensions.get_extension_for_oid(
        x509.ObjectIdentifier(RATLS_OID)
    )
    assert ext.value.value[:4] == bytes.fromhex("da001a75")  # type: ignore[attr-defined]
    assert cbor2.loads(ext.value.value).tag == SNP_REPORT_TAG  # type: ignore[attr-defined]
    parsed = parse_certificate(cert_der)
    assert parsed.quote == report and parsed.format == "tcg-cmw"
    assert evidence_tag(report) == SNP_REPORT_TAG
    assert evidence_tag(vector("tdx_quote")) == evidence_tag(vector("sgx_quote")) == 60000


def test_a_tag_that_does_not_match_the_evidence_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    claims = _claims_for(key)
    report, quote = gosev_report(), vector("tdx_quote")
    assert (
        parse_extension(cbor2.dumps(cbor2.CBORTag(SNP_REPORT_TAG, [report, claims])))[0] == report
    )
    assert parse_extension(cbor2.dumps(cbor2.CBORTag(60000, [quote, claims])))[0] == quote
    with pytest.raises(RaTlsError, match=r"tag 0xea60 does not match its evidence \(an SEV-SNP"):
        parse_extension(cbor2.dumps(cbor2.CBORTag(60000, [report, claims])))
    with pytest.raises(RaTlsError, match=r"tag 0x1a7504 does not match its evidence \(not an"):
        parse_extension(cbor2.dumps(cbor2.CBORTag(SNP_REPORT_TAG, [quote, claims])))
    with pytest.raises(RaTlsError, match=r"not CBOR tag 60000 \(Intel quote\) or 0x1a7504"):
        parse_extension(cbor2.dumps(cbor2.CBORTag(SNP_REPORT_TAG + 1, [report, claims])))


def test_endorsements_and_cmw_extensions_are_carried_not_critical() -> None:
    endorsements, cmw_value = b"\xd9\xea\x60\x80", snp_cmw(gosev_report(), gosev_cert_table())
    cert_der, _ = make_ratls(endorsements=endorsements, cmw=cmw_value)
    exts = x509.load_der_x509_certificate(cert_der).extensions
    for oid, value in ((ENDORSEMENTS_OID, endorsements), (CMW_OID, cmw_value)):
        ext = exts.get_extension_for_oid(x509.ObjectIdentifier(oid))
        assert ext.critical is False and ext.value.value == value  # type: ignore[attr-defined]
        assert parse_certificate(cert_der).extensions[oid] == (False, value)
    assert ENDORSEMENTS_OID not in parse_certificate(make_ratls()[0]).extensions


def test_every_extension_is_kept_with_its_criticality() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_tbs(
        tbs_with_extensions(
            key, [(RATLS_OID, False, good_extension(key)), (ENDORSEMENTS_OID, True, b"x")]
        ),
        key,
    )
    parsed = parse_certificate(cert)
    assert parsed.extensions[ENDORSEMENTS_OID] == (True, b"x")
    assert parsed.extensions[RATLS_OID][0] is False
    with pytest.raises(RaTlsError, match="too large"):
        parse_certificate(b"\x30" * (MAX_CERT_SIZE + 1))
