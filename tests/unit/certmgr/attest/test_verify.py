"""certmgr.attest.verify: real vectors at their pinned times, and the negative matrix.

Each negative case breaks exactly one property of otherwise valid evidence and must be
rejected with its own reason code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.collateral import load_collateral
from certmgr.attest.endorsements import (
    ENDORSEMENTS_OID,
    SNP_REPORT_TAG,
    IntelCollateral,
    encode_intel_endorsements,
)
from certmgr.attest.evidence import build_evidence, encode_evidence_claims
from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import Measurement, TeeType, measurement_id
from certmgr.attest.nvidia import gpu_nonce
from certmgr.attest.nvidia_verify import GpuCollateral
from certmgr.attest.policycheck import CheckResult, PolicyCheck
from certmgr.attest.ratls import (
    LEGACY_QUOTE_OID,
    RATLS_OID,
    parse_certificate,
    report_data_for_claims,
)
from certmgr.attest.simulated import build_simulated_quote
from certmgr.attest.snp_verify import SnpCollateral, SnpPolicy
from certmgr.attest.verify import (
    QuoteResult,
    Reason,
    TcbPolicy,
    VerifyOptions,
    certificate_collateral,
    load_dev_key,
    verify_certificate,
    verify_evidence,
    verify_gpu_verdict,
    verify_quote,
    verify_quote_verdict,
)
from certmgr.errors import VerifyError
from certmgr.policy.allowlist import AllowlistPolicy, load_allowlist
from tests.helpers.attest import (
    DEV_KEY,
    DEV_KEY_RAW,
    NOW,
    T_SGX,
    T_TDX,
    T_TDX_OUTDATED,
    at,
    cmw,
    collateral_text,
    good_extension,
    legacy_quote_for,
    make_ratls,
    ratls_artifact,
    sign_tbs,
    spki,
    tbs_with_extensions,
    vector,
)
from tests.helpers.nvidia import PPCIE_NONCE, T_OWN, T_PPCIE, own_device
from tests.helpers.nvidia import data as nvidia_data
from tests.helpers.snp import (
    T_DSTACK,
    T_GOSEV,
    cert_table,
    certs,
    dstack_cert_table,
    dstack_collateral,
    dstack_report,
    edit,
    gosev_cert_table,
    gosev_collateral,
    gosev_report,
    snp_cmw,
    with_policy,
)

ANY = VerifyOptions(any_measurement=True)


DEV = VerifyOptions(trusted_dev_keys=(DEV_KEY_RAW,), any_measurement=True)


def _coll(name: str) -> object:
    return load_collateral(collateral_text(name))


# -- real vectors --------------------------------------------------------------------------


def test_tdx_vector_up_to_date() -> None:
    v = verify_quote_verdict(vector("tdx_quote"), _coll("tdx_quote"), ANY, now=T_TDX)
    assert v.trusted, v.failures
    assert (v.tee, v.status, v.advisories) == ("tdx", "UpToDate", ())


def test_sgx_vector_needs_named_status() -> None:
    raw, coll = vector("sgx_quote"), _coll("sgx_quote")
    strict = verify_quote_verdict(raw, coll, ANY, now=T_SGX)
    assert strict.status == "ConfigurationAndSWHardeningNeeded"
    assert strict.advisories == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert strict.reasons == (Reason.TCB_STATUS,)
    relaxed = VerifyOptions(
        tcb=TcbPolicy(accept=frozenset({"ConfigurationAndSWHardeningNeeded"})),
        any_measurement=True,
    )
    assert verify_quote_verdict(raw, coll, relaxed, now=T_SGX).trusted


def test_advisory_deny_list() -> None:
    opts = VerifyOptions(
        tcb=TcbPolicy(
            accept=frozenset({"ConfigurationAndSWHardeningNeeded"}),
            deny_advisories=frozenset({"INTEL-SA-00615"}),
        ),
        any_measurement=True,
    )
    v = verify_quote_verdict(vector("sgx_quote"), _coll("sgx_quote"), opts, now=T_SGX)
    assert v.reasons == (Reason.ADVISORY,)


def test_tdx_v5_outdated_vector_has_no_tcb_level() -> None:
    v = verify_quote_verdict(
        vector("tdx_quote_outdated"), _coll("tdx_quote_outdated"), ANY, now=T_TDX_OUTDATED
    )
    assert v.reasons == (Reason.TCB_STATUS,)
    assert "No matching TCB level found" in v.failures[0].message


def test_unknown_status_name_is_a_usage_error() -> None:
    with pytest.raises(VerifyError):
        TcbPolicy(accept=frozenset({"UpToDat"}))


# -- negative matrix on quotes -------------------------------------------------------------


def test_tampered_quote() -> None:
    raw = bytearray(vector("tdx_quote"))
    raw[300] ^= 1  # inside MRTD: still parses, signature no longer verifies
    v = verify_quote_verdict(bytes(raw), _coll("tdx_quote"), ANY, now=T_TDX)
    assert v.reasons == (Reason.QUOTE_SIGNATURE,)


def test_expired_collateral() -> None:
    later = T_TDX + 60 * 86400
    v = verify_quote_verdict(vector("tdx_quote"), _coll("tdx_quote"), ANY, now=later)
    assert v.reasons == (Reason.COLLATERAL_EXPIRED,)


def test_wrong_tee_type() -> None:
    opts = VerifyOptions(any_measurement=True, expect_tee=TeeType.SGX)
    v = verify_quote_verdict(vector("tdx_quote"), _coll("tdx_quote"), opts, now=T_TDX)
    assert v.reasons == (Reason.TEE_TYPE,)


def test_missing_collateral() -> None:
    v = verify_quote_verdict(vector("tdx_quote"), None, ANY, now=T_TDX)
    assert v.reasons == (Reason.COLLATERAL_MISSING,)


def test_simulated_quote_needs_trusted_dev_key() -> None:
    q = build_simulated_quote(DEV_KEY, bytes(64))
    assert verify_quote_verdict(q, None, ANY, now=T_TDX).reasons == (Reason.SIMULATED_UNTRUSTED,)
    other = ec.generate_private_key(ec.SECP256R1())
    from certmgr.attest.simulated import raw_public_key

    wrong = VerifyOptions(
        trusted_dev_keys=(raw_public_key(other.public_key()),), any_measurement=True
    )
    assert verify_quote_verdict(q, None, wrong, now=T_TDX).reasons == (Reason.SIMULATED_UNTRUSTED,)
    ok = verify_quote_verdict(q, None, DEV, now=T_TDX)
    assert ok.trusted and ok.status == "SimulatedTrustedDevKey" and ok.simulated


def test_simulated_quote_tampered() -> None:
    q = bytearray(build_simulated_quote(DEV_KEY, bytes(64)))
    q[200] ^= 1
    assert verify_quote_verdict(bytes(q), None, DEV, now=T_TDX).reasons == (Reason.QUOTE_SIGNATURE,)


def test_debug_rejected() -> None:
    q = build_simulated_quote(DEV_KEY, bytes(64), debug=True)
    assert verify_quote_verdict(q, None, DEV, now=T_TDX).reasons == (Reason.DEBUG,)


def test_binding_of_bare_quote() -> None:
    rd = bytes(range(64))
    q = build_simulated_quote(DEV_KEY, rd[:32] + bytes(32))
    good = verify_quote_verdict(q, None, DEV, now=T_TDX, report_data=rd[:32] + bytes(32))
    assert good.trusted and good.binding
    bad = verify_quote_verdict(q, None, DEV, now=T_TDX, report_data=bytes(64))
    assert bad.reasons == (Reason.REPORT_DATA,) and not bad.binding


# -- negative matrix on RA-TLS certificates ------------------------------------------------


def _cert_verdict(cert: bytes, opts: VerifyOptions = DEV) -> tuple[Reason, ...]:
    return verify_certificate(cert, None, opts).reasons


def test_good_certificate() -> None:
    cert, key = make_ratls()
    v = verify_certificate(cert, None, DEV)
    assert v.trusted and v.binding, v.failures
    assert v.to_json()["spki_sha256"] == hashlib.sha256(spki(key)).hexdigest()


def test_cert_wrong_pubkey_hash() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    cert, _ = make_ratls(claims_spki=spki(other))
    assert _cert_verdict(cert) == (Reason.PUBKEY_HASH,)


def test_cert_report_data_mismatch() -> None:
    cert, _ = make_ratls(report_data=b"\x01" * 32 + bytes(32))
    assert _cert_verdict(cert) == (Reason.REPORT_DATA,)


def test_cert_nonzero_padding() -> None:
    _, key = make_ratls()
    from certmgr.attest.ratls import encode_claims

    claims = encode_claims(spki(key))
    rd = hashlib.sha256(claims).digest() + b"\x00" * 31 + b"\x01"
    cert2, _ = make_ratls(key=key, report_data=rd)
    assert _cert_verdict(cert2) == (Reason.REPORT_DATA_PADDING,)


def test_cert_debug() -> None:
    cert, _ = make_ratls(debug=True)
    assert _cert_verdict(cert) == (Reason.DEBUG,)


def test_cert_tcb_status_not_accepted() -> None:
    # A real SGX quote at its pinned time: genuine, but its TCB status is not UpToDate.
    cert, _ = make_ratls(quote=vector("sgx_quote"))
    v = verify_certificate(cert, _coll("sgx_quote"), ANY, now=T_SGX)
    assert Reason.TCB_STATUS in v.reasons


def test_cert_expired_and_not_yet_valid() -> None:
    old, _ = make_ratls(not_before=NOW - dt.timedelta(days=3))
    assert _cert_verdict(old) == (Reason.VALIDITY,)
    future, _ = make_ratls(not_before=NOW + dt.timedelta(hours=2))
    assert _cert_verdict(future) == (Reason.VALIDITY,)


def test_cert_oversized_and_malformed_cbor() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    huge = cmw(b"q" * 100_000, b"")
    malformed = b"\xd9\xea\x60\x82\x41"  # tag 60000, array, truncated bstr
    for value in (huge, malformed):
        cert = sign_tbs(tbs_with_extensions(key, [(RATLS_OID, False, value)]), key)
        assert _cert_verdict(cert) == (Reason.CBOR,)


def test_cert_duplicate_extensions() -> None:

    key = ec.generate_private_key(ec.SECP256R1())
    ext = good_extension(key)
    cert = sign_tbs(tbs_with_extensions(key, [(RATLS_OID, False, ext)] * 2), key)
    assert _cert_verdict(cert) == (Reason.DUPLICATE_EXTENSION,)


def test_cert_bad_self_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    tbs = tbs_with_extensions(key, [(RATLS_OID, False, good_extension(key))])
    other = ec.generate_private_key(ec.SECP256R1())
    assert _cert_verdict(sign_tbs(tbs, other)) == (Reason.SELF_SIGNATURE,)


def test_legacy_cert_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_tbs(
        tbs_with_extensions(key, [(LEGACY_QUOTE_OID, False, legacy_quote_for(key))]), key
    )
    v = verify_certificate(cert, None, DEV)
    assert v.trusted and v.binding and v.to_json()["format"] == "intel-legacy"
    other = ec.generate_private_key(ec.SECP256R1())
    bad = sign_tbs(
        tbs_with_extensions(key, [(LEGACY_QUOTE_OID, False, legacy_quote_for(other))]), key
    )
    assert _cert_verdict(bad) == (Reason.REPORT_DATA,)


# -- measurement policy --------------------------------------------------------------------


def test_allowlist_and_policy_hook(tmp_path: Path) -> None:
    cert, _ = make_ratls()
    v = verify_certificate(cert, None, DEV)
    mid = measurement_id(v.measurement)  # type: ignore[arg-type]
    f = tmp_path / "allow.txt"
    f.write_text(f"# allowed builds\n0x{mid.hex()}  # simulated\n")
    allowed = VerifyOptions(trusted_dev_keys=(DEV_KEY_RAW,), policy=load_allowlist(f))
    assert verify_certificate(cert, None, allowed).trusted
    f.write_text("11" * 32 + "\n")
    denied = VerifyOptions(trusted_dev_keys=(DEV_KEY_RAW,), policy=load_allowlist(f))
    assert verify_certificate(cert, None, denied).reasons == (Reason.MEASUREMENT,)
    none = VerifyOptions(trusted_dev_keys=(DEV_KEY_RAW,))
    assert verify_certificate(cert, None, none).reasons == (Reason.NO_MEASUREMENT_POLICY,)

    seen: list[bytes] = []

    def onchain(m_id: bytes, m: Measurement) -> CheckResult:
        seen.append(m_id)
        return CheckResult(False, "revoked on chain")

    check: PolicyCheck = onchain
    hooked = VerifyOptions(trusted_dev_keys=(DEV_KEY_RAW,), policy=check)
    v2 = verify_certificate(cert, None, hooked)
    assert v2.reasons == (Reason.MEASUREMENT,) and seen == [mid]
    assert v2.failures[0].message == "revoked on chain"
    f.write_text("abc\n")
    with pytest.raises(VerifyError, match=r"allow\.txt:1"):
        load_allowlist(f)
    assert AllowlistPolicy(frozenset({mid}))(mid, v.measurement).allowed  # type: ignore[arg-type]


def test_json_names_registers() -> None:
    v = verify_quote_verdict(vector("tdx_quote"), _coll("tdx_quote"), ANY, now=T_TDX)
    out = v.to_json()
    for key in ("tee", "status", "binding", "mr_td", "rt_mr0", "rt_mr3", "measurement_id"):
        assert key in out
    assert out["mr_td"] == parse_quote(vector("tdx_quote")).measurement.mr_td.hex()
    sgx = verify_quote_verdict(vector("sgx_quote"), _coll("sgx_quote"), ANY, now=T_SGX).to_json()
    assert {"mr_enclave", "mr_signer"} <= set(sgx)
    json.dumps(out)


def test_dev_key_formats() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = DEV_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert load_dev_key(pem) == DEV_KEY_RAW
    assert load_dev_key(DEV_KEY_RAW.hex().encode()) == DEV_KEY_RAW
    with pytest.raises(VerifyError):
        load_dev_key(b"00")


# -- fresh evidence ------------------------------------------------------------------------


def _evidence(nonce: bytes, spki_hash: bytes, rd_override: bytes | None = None) -> bytes:
    claims = encode_evidence_claims(nonce, spki_hash, 1700000000, acme_account="https://ca/acct/1")
    rd = rd_override or report_data_for_claims(claims)
    q = build_simulated_quote(DEV_KEY, rd)
    return json.dumps(build_evidence(q, claims, tee="tdx", provider="simulated")).encode()


def test_evidence_checks() -> None:
    nonce, h = b"n" * 16, b"\x07" * 32
    ok = verify_evidence(_evidence(nonce, h), nonce, h, None, DEV)
    assert ok.trusted and ok.binding, ok.failures
    assert ok.to_json()["claims"]["acme-account"] == "https://ca/acct/1"
    assert verify_evidence(_evidence(nonce, h), b"m" * 16, h, None, DEV).reasons == (Reason.NONCE,)
    assert verify_evidence(_evidence(nonce, h), nonce, b"\x08" * 32, None, DEV).reasons == (
        Reason.SPKI,
    )
    rebound = _evidence(nonce, h, rd_override=bytes(64))
    assert verify_evidence(rebound, nonce, h, None, DEV).reasons == (Reason.REPORT_DATA,)
    assert verify_evidence(b"{", nonce, h, None, DEV).reasons == (Reason.EVIDENCE_MALFORMED,)


# -- the receipt signing address (the signing-address claim) ----------------------------


ADDRESS = "0x" + "ab" * 20


MALFORMED_ADDRESSES: list[object] = [
    "0x" + "AB" * 20,  # upper case: not the canonical form
    "0x" + "aB" * 20,  # mixed case (EIP-55 style) is not accepted either
    "ab" * 20,  # no 0x
    "0X" + "ab" * 20,
    "0x" + "ab" * 19 + "a",  # 39 digits
    "0x" + "ab" * 21,  # 42 digits
    "0x" + "ab" * 19 + "zz",
    " 0x" + "ab" * 20,
    "0x" + "ab" * 20 + "\n",
    "0x" + "ab" * 19 + "\u0661\u0662",  # non-ASCII digits
    "",
    bytes.fromhex("ab" * 20),  # bytes, not text
    0xAB,
    None,
    ["0x" + "ab" * 20],
]


def _evidence_with(nonce: bytes, spki_hash: bytes, extra: dict[str, object]) -> bytes:
    """Evidence whose claims hold ``extra`` values as given, each CBOR-wrapped."""
    import cbor2

    claims = cbor2.dumps(
        {
            "nonce": nonce,
            "pubkey-hash": cbor2.dumps([1, spki_hash]),
            "iat": cbor2.dumps(1),
            **{k: cbor2.dumps(v) for k, v in extra.items()},
        },
        canonical=True,
    )
    q = build_simulated_quote(DEV_KEY, report_data_for_claims(claims))
    return json.dumps(build_evidence(q, claims, tee="tdx", provider="simulated")).encode()


def test_signing_address_from_certificate_and_evidence() -> None:
    cert, _ = make_ratls(extra={"signing-address": ADDRESS})
    v = verify_certificate(cert, None, DEV)
    assert v.trusted, v.failures
    assert v.signing_address == bytes.fromhex("ab" * 20)
    assert v.to_json()["signing_address"] == ADDRESS
    nonce, h = b"n" * 16, b"\x07" * 32
    body = json.dumps(
        build_evidence(
            build_simulated_quote(
                DEV_KEY,
                report_data_for_claims(
                    claims := encode_evidence_claims(nonce, h, 1, signing_address=ADDRESS)
                ),
            ),
            claims,
            tee="tdx",
            provider="simulated",
        )
    ).encode()
    ev = verify_evidence(body, nonce, h, None, DEV)
    assert ev.trusted and ev.signing_address == bytes.fromhex("ab" * 20)
    assert ev.to_json()["signing_address"] == ADDRESS
    # No claim: no address, and that alone is no failure.
    plain = verify_certificate(make_ratls()[0], None, DEV)
    assert plain.trusted and plain.signing_address is None
    assert plain.to_json()["signing_address"] is None


@pytest.mark.parametrize("value", MALFORMED_ADDRESSES, ids=repr)
def test_malformed_signing_address_is_rejected(value: object) -> None:
    import cbor2

    cert, _ = make_ratls(raw_extra={"signing-address": cbor2.dumps(value)})
    v = verify_certificate(cert, None, DEV)
    assert v.reasons == (Reason.SIGNING_ADDRESS,)
    assert not v.trusted and v.signing_address is None
    assert v.binding  # the quote binds the claims; only the claim's form is wrong
    nonce, h = b"n" * 16, b"\x07" * 32
    ev = verify_evidence(_evidence_with(nonce, h, {"signing-address": value}), nonce, h, None, DEV)
    assert ev.reasons == (Reason.SIGNING_ADDRESS,)
    assert not ev.trusted and ev.signing_address is None


def test_signing_address_agreement() -> None:
    from certmgr.attest.verify import Verdict, signing_address_agreement

    a, b = bytes.fromhex("ab" * 20), bytes.fromhex("cd" * 20)
    assert signing_address_agreement(Verdict(signing_address=a), Verdict(signing_address=a)) == []
    assert signing_address_agreement(Verdict(), Verdict()) == []
    for x, y in [(a, b), (a, None), (None, b)]:
        (f,) = signing_address_agreement(Verdict(signing_address=x), Verdict(signing_address=y))
        assert f.reason is Reason.SIGNING_ADDRESS_MISMATCH


# -- SEV-SNP reports: one verdict shape, snp-* reason codes -----------------------------


INSPECT = VerifyOptions(any_measurement=True, snp=SnpPolicy(allow_smt=True))


def _reasons(q: QuoteResult) -> list[Reason]:
    return [f.reason for f in q.failures]


TDX_QUOTE = Path(__file__).resolve().parents[3] / "data" / "dcap-qvl" / "tdx_quote"


def test_dstack_report_is_trusted_with_its_collateral() -> None:
    raw = dstack_report()
    rd = b"attest-test-fixture-2026".ljust(64, b"\x00")
    v = verify_quote_verdict(raw, dstack_collateral(), INSPECT, now=int(T_DSTACK.timestamp()))
    assert v.status == "UpToDate"
    assert v.failures == ()
    assert v.trusted
    assert v.tee == "sev-snp"
    doc = v.to_json()
    assert doc["measurement"].startswith("7f51e17f")
    assert doc["host_data"].startswith("783f0057")
    assert doc["report_data"] == rd.hex()
    assert doc["sev_snp"]["policy"] == "0x30000"
    assert doc["sev_snp"]["product"] == "Milan"


def test_go_sev_guest_report_fails_only_on_debug_and_smt() -> None:
    v = verify_quote_verdict(
        gosev_report(),
        gosev_collateral(),
        VerifyOptions(any_measurement=True),
        now=int(T_GOSEV.timestamp()),
    )
    assert v.status == "UpToDate"
    # DEBUG is reported once, by the common check; SMT by the SNP policy.
    assert sorted(v.reasons) == sorted([Reason.SNP_POLICY, Reason.DEBUG])
    assert not v.trusted


def test_without_snp_collateral_the_report_is_unverified() -> None:
    for coll in (None, SnpCollateral(), object()):
        q = verify_quote(dstack_report(), coll, int(T_DSTACK.timestamp()), INSPECT)
        assert q.status == "Unverified"
        assert [f.reason for f in q.failures] == [Reason.UNVERIFIED_TEE]


def test_snp_failures_map_to_their_reasons() -> None:
    now = int(T_DSTACK.timestamp())
    flipped = edit(dstack_report(), 0x90, b"\x00")
    assert Reason.SNP_SIGNATURE in _reasons(
        verify_quote(flipped, dstack_collateral(), now, INSPECT)
    )
    ask, ark = certs("ask_ark_genoa.pem")
    genoa = SnpCollateral(vek=dstack_collateral().vek, ask=ask, ark=ark)
    assert Reason.SNP_CHAIN in _reasons(verify_quote(dstack_report(), genoa, now, INSPECT))
    late = int(T_DSTACK.timestamp()) + 20 * 365 * 86400
    res = verify_quote(dstack_report(), dstack_collateral(), late, INSPECT)
    assert Reason.COLLATERAL_EXPIRED in _reasons(res)
    tcb = edit(dstack_report(), 0x186, b"\x18")
    assert Reason.SNP_TCB in _reasons(verify_quote(tcb, dstack_collateral(), now, INSPECT))
    debug = with_policy(dstack_report(), 0x30000 | 1 << 19)
    reasons = _reasons(verify_quote(debug, dstack_collateral(), now, INSPECT))
    assert Reason.DEBUG in reasons and Reason.SNP_POLICY not in reasons
    smt = _reasons(verify_quote(dstack_report(), dstack_collateral(), now, VerifyOptions()))
    assert smt == [Reason.SNP_POLICY]


def test_expect_tee_and_measurement_policy_still_apply() -> None:
    from certmgr.attest.measurement import TeeType

    now = int(T_DSTACK.timestamp())
    opts = VerifyOptions(expect_tee=TeeType.TDX, snp=SnpPolicy(allow_smt=True))
    v = verify_quote_verdict(dstack_report(), dstack_collateral(), opts, now=now)
    assert Reason.TEE_TYPE in v.reasons
    v = verify_quote_verdict(
        dstack_report(), dstack_collateral(), VerifyOptions(snp=SnpPolicy(allow_smt=True)), now=now
    )
    assert v.reasons == (Reason.NO_MEASUREMENT_POLICY,)


def test_an_intel_quote_with_snp_collateral_is_collateral_missing() -> None:
    q = verify_quote(TDX_QUOTE.read_bytes(), dstack_collateral(), 1750414563, VerifyOptions())
    assert [f.reason for f in q.failures] == [Reason.COLLATERAL_MISSING]
    assert q.details == {"intel": {"fmspc": "b0c06f000000", "pck_ca": "platform"}}


# -- other producers' real certificates (tests/data/ratls/*/README.txt) --------------------

_GRAMINE = "gramine/ccc-interop-gramine-cert.pem"
_INTEL = "intel-sgxsdk/ccc-interop-intel-sgxsdk-cert.pem"
_RATS = "rats-tls/ccc-interop-rats-tls-cert.pem"
_RATS_OLD = "rats-tls-legacy/rats-tls-cert-sample.pem"
_RATS_OLD_OPENSSL = "rats-tls-legacy/rats-tls-cert-openssl-sample.pem"
_DSTACK_V0 = "dstack/tdx-lite-v0-get-tls-key.pem"
_DSTACK_ROOT = "dstack/tdx-lite-v0-app-root-cert.pem"
_DSTACK_V1 = "dstack/tdx-lite-v1-issue-cert.leaf.pem"
_DSTACK_MRTD = (
    "c757a8fb1e8322b4bfe59fdc4be74f131b00e23806297fbb"
    "fa84fd2d6f79a81fb3f9d741bab70f9a084cd7dfd2cdfa1d"
)
_DSTACK_RTMR3 = (
    "1a734a4eb4ec4cf573c38aa4e66fd5ef9c81131612fc6ef4"
    "b48fab230b86d737e36453a19f40949990999811e5fc206b"
)
_SGX_MRSIGNER_RATS = "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"

# The README values: registers, the binding rule that holds, and every failure a verifier
# with no collateral must report inside the validity window (the SGX enclaves of the CCC
# interop tests are DEBUG builds, which are never trusted).
REAL_VERDICTS = {
    _GRAMINE: (
        {
            "mr_enclave": "0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585",
            "mr_signer": "adc53501f21ced9b998e37a7a18e061c63e00315045fa57a49c18ef0a30d02ca",
        },
        "claims-sha256",
        {Reason.COLLATERAL_MISSING, Reason.DEBUG},
    ),
    _INTEL: (
        {
            "mr_enclave": "09e218a4be9dadbf7cdc82c45497d6d4f676d3b75445fc37a376f0b65b47de6a",
            "mr_signer": "e0c86c51e05ad8592673db348155bddf4bcad6131a5205ce4265c0d795803ba2",
        },
        "claims-sha256",
        {Reason.COLLATERAL_MISSING, Reason.DEBUG},
    ),
    _RATS: (
        {
            "mr_enclave": "38e1b40b8c68186f359c97ecb6a89965d9d8638f2df06fbe18e84d79a266c041",
            "mr_signer": _SGX_MRSIGNER_RATS,
        },
        "claims-sha256",
        {Reason.COLLATERAL_MISSING, Reason.DEBUG},
    ),
    _RATS_OLD: (
        {
            "mr_enclave": "144e81488fc3d59ddbe69b03bd939a3b938d85b6a7c9897e2b09808ade956574",
            "mr_signer": _SGX_MRSIGNER_RATS,
        },
        "pkcs1-sha256",  # NOT the SPKI: rats-tls hashed the PKCS#1 RSAPublicKey
        {Reason.COLLATERAL_MISSING},
    ),
    _RATS_OLD_OPENSSL: (
        {
            "mr_enclave": "d74f2eb87fa3c64c40d16e35a6f8d3259e3dd931a0bcce0637e33ada67df0b52",
            "mr_signer": _SGX_MRSIGNER_RATS,
        },
        "pkcs1-sha256",
        {Reason.COLLATERAL_MISSING},
    ),
    _DSTACK_V0: (
        {"mr_td": _DSTACK_MRTD, "rt_mr3": _DSTACK_RTMR3},
        "dstack-sha512",
        {Reason.COLLATERAL_MISSING},
    ),
    _DSTACK_ROOT: ({"mr_td": _DSTACK_MRTD}, "dstack-sha512", {Reason.COLLATERAL_MISSING}),
    _DSTACK_V1: (
        {"mr_td": _DSTACK_MRTD, "rt_mr3": _DSTACK_RTMR3},
        "dstack-sha512",
        {Reason.COLLATERAL_MISSING},
    ),
}


def _inside_validity(name: str) -> float:
    parsed = parse_certificate(ratls_artifact(name))
    return (parsed.not_before + dt.timedelta(days=1)).timestamp()


@pytest.mark.parametrize("name", sorted(REAL_VERDICTS))
def test_real_certificates_verdicts(name: str) -> None:
    registers, rule, reasons = REAL_VERDICTS[name]
    v = verify_certificate(
        ratls_artifact(name), None, VerifyOptions(any_measurement=True), now=_inside_validity(name)
    )
    out = v.to_json()
    assert {k: out[k] for k in registers} == registers
    assert v.binding, v.failures
    assert out["binding_rule"] == rule
    assert set(v.reasons) == reasons
    assert not v.trusted  # without collateral, nothing is trusted


def test_real_certificates_with_a_measurement_policy_are_judged() -> None:
    """Collateral missing stops the measurement decision: a verifier never allows code
    whose quote it could not verify, whatever the allowlist says."""
    v = verify_certificate(
        ratls_artifact(_DSTACK_V0), None, VerifyOptions(), now=_inside_validity(_DSTACK_V0)
    )
    assert set(v.reasons) == {Reason.COLLATERAL_MISSING}


def test_expired_real_certificate() -> None:
    """The rats-tls interop certificate expired on 2024-02-22 (now - 1 h .. now + 1 year)."""
    v = verify_certificate(ratls_artifact(_RATS), None, VerifyOptions(any_measurement=True))
    assert Reason.VALIDITY in v.reasons


def test_gramine_second_quote_agrees() -> None:
    v = verify_certificate(
        ratls_artifact(_GRAMINE), None, DEV, now=_inside_validity(_GRAMINE)
    ).to_json()
    assert v["extra_quotes"] == [
        {"oid": LEGACY_QUOTE_OID, "relation": "same-measurement", "binding_rule": "spki-sha256"}
    ]
    intel = verify_certificate(ratls_artifact(_INTEL), None, DEV, now=_inside_validity(_INTEL))
    assert intel.to_json()["extra_quotes"] == [
        {"oid": "1.2.840.113741.1.13.1", "relation": "same-quote"}
    ]


def _with(name: str, **changes: object) -> tuple[Reason, ...]:
    parsed = dataclasses.replace(parse_certificate(ratls_artifact(name)), **changes)  # type: ignore[arg-type]
    v = verify_certificate(b"", None, DEV, now=_inside_validity(name), parsed=parsed)
    return tuple(r for r in v.reasons if r not in {Reason.COLLATERAL_MISSING, Reason.DEBUG})


def test_real_certificates_negative() -> None:
    intel = parse_certificate(ratls_artifact(_INTEL))
    # Gramine's second quote replaced by another enclave's quote: other code.
    assert _with(_GRAMINE, extra_quotes=((LEGACY_QUOTE_OID, intel.quote),)) == (Reason.EXTRA_QUOTE,)
    assert _with(_GRAMINE, extra_quotes=((LEGACY_QUOTE_OID, b"\x03\x00"),)) == (Reason.EXTRA_QUOTE,)
    # A claims byte changed: report_data no longer hashes the claims.
    claims = bytearray(intel.claims_bytes)
    claims[-1] ^= 1
    assert Reason.REPORT_DATA in _with(_INTEL, claims_bytes=bytes(claims))
    # Another certificate's key under a legacy quote.
    other = parse_certificate(ratls_artifact(_RATS_OLD_OPENSSL))
    assert _with(_RATS_OLD, spki_der=other.spki_der) == (Reason.REPORT_DATA,)
    assert _with(_DSTACK_V0, spki_der=other.spki_der) == (Reason.REPORT_DATA,)


def test_dstack_negative() -> None:
    parsed = parse_certificate(ratls_artifact(_DSTACK_V0))
    att = parsed.dstack
    assert att is not None
    events = list(att.runtime_events)
    events[2] = ("compose-hash", bytes(32))
    # The compose hash changed: RTMR3 no longer replays and MRCONFIGID names another.
    assert set(
        _with(_DSTACK_V0, dstack=dataclasses.replace(att, runtime_events=tuple(events)))
    ) == {
        Reason.EVENT_LOG,
        Reason.MR_CONFIG_ID,
    }
    assert _with(_DSTACK_V0, dstack_app_id=bytes(20)) == (Reason.APP_ID,)
    assert _with(_DSTACK_V0, dstack=dataclasses.replace(att, report_data=bytes(64))) == (
        Reason.REPORT_DATA,
    )
    # A dstack certificate that IS self-issued must carry a good self-signature.
    assert _with(_DSTACK_V0, self_issued=True) == (Reason.SELF_SIGNATURE,)


def test_dstack_verdict_reports_the_app() -> None:
    v = verify_certificate(
        ratls_artifact(_DSTACK_V0), None, DEV, now=_inside_validity(_DSTACK_V0)
    ).to_json()
    d = v["dstack"]
    assert d["app_id"] == "53226fcd7b6bc7ea979b0a550bf49cad993f28e2"
    assert d["compose_hash"] == ("53226fcd7b6bc7ea979b0a550bf49cad993f28e2370169a9510e56c90b3029dc")
    assert d["os_image_hash"] == (
        "98a3394699570adf5921eb17bafed62b37b4a63cad28eb5506b430b63af2e20e"
    )
    assert d["key_provider"] == '{"name":"none","id":""}'
    assert d["usage"] == "app:custom"
    assert (d["encoding"], d["mr_config_id_version"], d["mr_config_id_checked"]) == (
        "scale-v0",
        1,
        True,
    )
    assert d["rtmr3_replayed"] == _DSTACK_RTMR3
    assert [e["event"] for e in d["runtime_events"]] == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "gpu-policy-hash",
        "instance-id",
        "boot-mr-done",
        "key-provider",
        "storage-fs",
        "system-ready",
    ]
    assert v["issuer_signature"].startswith("not checked")


# -- collateral carried by the evidence: endorsements (2.23.133.5.4.2, evidence JSON) -------

BINDING = {Reason.REPORT_DATA, Reason.REPORT_DATA_PADDING}  # real quotes bind other data


def _real_cert(quote: bytes, when: int, endorsements: bytes | None = None, **kw: object) -> bytes:
    """An RA-TLS certificate around a real quote or report, valid at ``when``: everything
    but the binding verifies (the report_data is the vector's, not our claims' hash)."""
    cert, _ = make_ratls(
        quote=quote,
        not_before=at(when) - dt.timedelta(minutes=5),
        lifetime=dt.timedelta(days=60),
        endorsements=endorsements,
        **kw,  # type: ignore[arg-type]
    )
    return cert


def _intel_endorsements(name: str) -> bytes:
    return encode_intel_endorsements(IntelCollateral.from_json(collateral_text(name)))


def test_a_certificate_carrying_its_collateral_verifies_offline() -> None:
    cert = _real_cert(vector("tdx_quote"), T_TDX, _intel_endorsements("tdx_quote"))
    v = verify_certificate(cert, None, ANY, now=T_TDX)
    assert (v.status, v.advisories) == ("UpToDate", ())
    assert set(v.reasons) <= BINDING and Reason.REPORT_DATA in v.reasons
    doc = v.to_json()
    assert doc["collateral_source"] == "certificate"
    assert doc["endorsements"] == {
        "kind": "intel",
        "version": 3,
        "next_update": "2025-07-19T10:00:35+00:00",
    }
    # The caller's collateral wins and gives the same verdict on the quote.
    given = verify_certificate(cert, _coll("tdx_quote"), ANY, now=T_TDX)
    assert (given.status, given.reasons) == (v.status, v.reasons)
    assert given.to_json()["collateral_source"] == "argument"
    # Without the extension and without collateral, the quote is unverifiable.
    bare = verify_certificate(_real_cert(vector("tdx_quote"), T_TDX), None, ANY, now=T_TDX)
    assert Reason.COLLATERAL_MISSING in bare.reasons
    assert bare.to_json()["collateral_source"] is None and bare.to_json()["endorsements"] is None


def test_embedded_sgx_collateral_gives_its_tcb_status() -> None:
    cert = _real_cert(vector("sgx_quote"), T_SGX, _intel_endorsements("sgx_quote"))
    v = verify_certificate(cert, None, ANY, now=T_SGX)
    assert v.status == "ConfigurationAndSWHardeningNeeded"
    assert v.advisories == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert Reason.TCB_STATUS in v.reasons


def test_embedded_collateral_past_its_next_update_is_expired() -> None:
    cert = _real_cert(vector("tdx_quote"), T_TDX, _intel_endorsements("tdx_quote"))
    late = T_TDX + 40 * 86400
    assert Reason.COLLATERAL_EXPIRED in verify_certificate(cert, None, ANY, now=late).reasons


def test_embedded_collateral_of_another_platform_fails_the_quote() -> None:
    """SGX collateral in a TDX quote's certificate: well-formed, but not this quote's."""
    cert = _real_cert(vector("tdx_quote"), T_TDX, _intel_endorsements("sgx_quote"))
    v = verify_certificate(cert, None, ANY, now=T_TDX)
    assert v.to_json()["collateral_source"] == "certificate"
    assert not v.trusted and v.status == ""
    assert set(v.reasons) - BINDING


def test_malformed_endorsements_are_a_failure_whichever_collateral_is_used() -> None:
    cert = _real_cert(vector("tdx_quote"), T_TDX, b"\xd9\xea\x60\x81\x01")
    v = verify_certificate(cert, None, ANY, now=T_TDX)
    assert Reason.ENDORSEMENTS in v.reasons and Reason.COLLATERAL_MISSING in v.reasons
    assert "1 entries, expected 8 or 9" in str(v.failures)
    given = verify_certificate(cert, _coll("tdx_quote"), ANY, now=T_TDX)
    assert given.status == "UpToDate" and Reason.ENDORSEMENTS in given.reasons


def test_endorsements_of_the_wrong_kind_or_critical_are_refused() -> None:
    snp_value = cbor2.dumps(cbor2.CBORTag(SNP_REPORT_TAG, [1, gosev_cert_table()]))
    snp_in_tdx = _real_cert(vector("tdx_quote"), T_TDX, snp_value)
    v = verify_certificate(snp_in_tdx, None, ANY, now=T_TDX)
    assert Reason.ENDORSEMENTS in v.reasons
    assert "none are defined for SEV-SNP" in str(v.failures)
    intel_in_snp = _real_cert(
        dstack_report(), int(T_DSTACK.timestamp()), _intel_endorsements("tdx_quote")
    )
    v = verify_certificate(intel_in_snp, None, INSPECT, now=T_DSTACK.timestamp())
    assert Reason.ENDORSEMENTS in v.reasons and Reason.UNVERIFIED_TEE in v.reasons
    assert "not defined for SEV-SNP evidence" in str(v.failures)

    key = ec.generate_private_key(ec.SECP256R1())
    claims = cbor2.dumps({"pubkey-hash": cbor2.dumps([1, hashlib.sha256(spki(key)).digest()])})
    exts = [
        (RATLS_OID, False, cmw(vector("tdx_quote"), claims)),
        (ENDORSEMENTS_OID, True, _intel_endorsements("tdx_quote")),
    ]
    critical = sign_tbs(tbs_with_extensions(key, exts), key)
    v = verify_certificate(critical, None, ANY, now=NOW.timestamp())
    assert Reason.ENDORSEMENTS in v.reasons and "must not be critical" in str(v.failures)


def test_an_snp_certificate_carrying_its_cert_table_verifies_offline() -> None:
    """The certificate table in the RFC 9999 CMW extension's TSM report is the collateral."""
    now = T_DSTACK.timestamp()
    report = dstack_report()
    cert = _real_cert(report, int(now), cmw=snp_cmw(report, dstack_cert_table()))
    assert parse_certificate(cert).quote == report
    v = verify_certificate(cert, None, INSPECT, now=now)
    assert v.status == "UpToDate" and v.tee == "sev-snp"
    assert set(v.reasons) <= BINDING and Reason.REPORT_DATA in v.reasons
    doc = v.to_json()
    assert doc["collateral_source"] == "certificate"
    assert doc["endorsements"] == {"kind": "sev-snp", "carrier": "cmw"}
    assert doc["sev_snp"]["product"] == "Milan"
    # Without the table the CMW still carries the report: nothing to verify it with.
    bare = _real_cert(report, int(now), cmw=snp_cmw(report))
    v = verify_certificate(bare, None, INSPECT, now=now)
    assert Reason.UNVERIFIED_TEE in v.reasons and v.to_json()["collateral_source"] is None


def test_a_cmw_report_other_than_the_evidence_is_refused() -> None:
    now = T_DSTACK.timestamp()
    other = _real_cert(dstack_report(), int(now), cmw=snp_cmw(gosev_report(), gosev_cert_table()))
    v = verify_certificate(other, None, INSPECT, now=now)
    assert Reason.EXTRA_QUOTE in v.reasons
    assert v.to_json()["collateral_source"] is None  # nothing of it is used
    junk = _real_cert(dstack_report(), int(now), cmw=b"\x04\x02\x80\x00")
    v = verify_certificate(junk, None, INSPECT, now=now)
    assert Reason.ENDORSEMENTS in v.reasons and "CMW" in str(v.failures)


def test_go_sev_guest_report_with_its_real_cert_table() -> None:
    now = T_GOSEV.timestamp()
    report = gosev_report()
    cert = _real_cert(report, int(now), cmw=snp_cmw(report, gosev_cert_table()))
    v = verify_certificate(cert, None, ANY, now=now)
    assert v.status == "UpToDate"
    assert set(v.reasons) - BINDING == {Reason.SNP_POLICY, Reason.DEBUG}
    # Another chip's VCEK in the table: the report does not verify with it.
    ask, ark = certs("ask_ark_milan.pem")
    wrong = cert_table(certs("dstack_sev_snp_vcek.pem")[0], ask, ark)
    cert = _real_cert(report, int(now), cmw=snp_cmw(report, wrong))
    v = verify_certificate(cert, None, ANY, now=now)
    assert v.status == "Invalid" and {Reason.SNP_SIGNATURE, Reason.SNP_TCB} & set(v.reasons)


def _snp_evidence(
    report: bytes, nonce: bytes, h: bytes, endorsements: tuple[str, bytes] | None
) -> bytes:
    claims = encode_evidence_claims(nonce, h, 1700000000)
    doc = build_evidence(
        report, claims, tee="sev-snp", provider="configfs-tsm", endorsements=endorsements
    )
    return json.dumps(doc).encode()


def test_evidence_carrying_its_cert_table() -> None:
    """The SNP report cannot be re-signed over our claims: binding fails, everything else
    (the certificate table travelling in the evidence, the report's signature and chain)
    verifies."""
    nonce, h, now = b"n" * 16, b"\x07" * 32, T_DSTACK.timestamp()
    body = _snp_evidence(dstack_report(), nonce, h, ("sev-snp-cert-table", dstack_cert_table()))
    v = verify_evidence(body, nonce, h, None, INSPECT, now=now)
    assert v.status == "UpToDate" and v.reasons == (Reason.REPORT_DATA,)
    assert v.to_json()["collateral_source"] == "evidence"
    assert v.to_json()["endorsements"] == {"format": "sev-snp-cert-table", "used": True}
    given = verify_evidence(body, nonce, h, gosev_collateral(), INSPECT, now=now)
    assert given.to_json()["collateral_source"] == "argument" and given.status == "Invalid"

    other = _snp_evidence(dstack_report(), nonce, h, ("something-else", b"x"))
    v = verify_evidence(other, nonce, h, None, INSPECT, now=now)
    assert Reason.UNVERIFIED_TEE in v.reasons
    assert v.to_json()["endorsements"] == {"format": "something-else", "used": False}

    broken = _snp_evidence(dstack_report(), nonce, h, ("sev-snp-cert-table", b"\x01" * 40))
    v = verify_evidence(broken, nonce, h, None, INSPECT, now=now)
    assert Reason.ENDORSEMENTS in v.reasons and Reason.UNVERIFIED_TEE in v.reasons


def test_evidence_cert_table_with_an_intel_quote_is_refused() -> None:
    nonce, h = b"n" * 16, b"\x07" * 32
    body = _snp_evidence(vector("tdx_quote"), nonce, h, ("sev-snp-cert-table", dstack_cert_table()))
    v = verify_evidence(body, nonce, h, None, ANY, now=T_TDX)
    assert Reason.ENDORSEMENTS in v.reasons and Reason.COLLATERAL_MISSING in v.reasons


def test_evidence_falls_back_to_the_certificates_collateral() -> None:
    cert = _real_cert(vector("tdx_quote"), T_TDX, _intel_endorsements("tdx_quote"))
    carried = certificate_collateral(parse_certificate(cert))
    assert carried.failures == () and carried.collateral is not None
    nonce, h = b"n" * 16, b"\x07" * 32
    body = _snp_evidence(vector("tdx_quote"), nonce, h, None)
    alone = verify_evidence(body, nonce, h, None, ANY, now=T_TDX)
    assert Reason.COLLATERAL_MISSING in alone.reasons
    v = verify_evidence(
        body, nonce, h, None, ANY, now=T_TDX, fallback_collateral=carried.collateral
    )
    assert v.status == "UpToDate" and set(v.reasons) == BINDING
    assert v.to_json()["collateral_source"] == "certificate"


def test_real_rats_tls_legacy_values() -> None:
    """The README's values: report_data[:32] = SHA-256 of the PKCS#1 key, FMSPC 00606a000000
    (what a client needs to fetch collateral, reported before the quote is verified)."""
    for name, prefix in ((_RATS_OLD, "8e5b3b07"), (_RATS_OLD_OPENSSL, "f732b931")):
        v = verify_certificate(
            ratls_artifact(name), None, VerifyOptions(any_measurement=True), now=1700000000
        ).to_json()
        assert v["report_data"].startswith(prefix) and v["report_data"].endswith("00" * 32)
        assert v["intel"] == {"fmspc": "00606a000000", "pck_ca": "platform"}


# -- Nitro documents and dstack evidence ----------------------------------------------------


def test_nitro_document_verdict_at_its_pinned_time() -> None:
    from certmgr.attest.verify import verify_quote_verdict
    from tests.helpers.nitro import NSM_QVL, nitro_vector, pinned_time

    raw = nitro_vector(NSM_QVL[0])
    opts = VerifyOptions(any_measurement=True)
    v = verify_quote_verdict(
        raw, None, opts, now=int(pinned_time(NSM_QVL)) + 1, report_data=bytes(64)
    )
    doc = v.to_json()
    assert v.trusted and doc["tee"] == "nitro" and doc["status"] == "Verified" and doc["binding"]
    assert doc["pcr0"].startswith("5cb70295") and doc["nitro"]["module_id"].endswith("2ed4b")
    expired = verify_quote_verdict(raw, None, opts, now=int(pinned_time(NSM_QVL)) + 86400)
    assert Reason.COLLATERAL_EXPIRED in expired.reasons and not expired.trusted
    sig = list(cbor2.loads(raw))
    sig[3] = bytes([sig[3][0] ^ 1]) + sig[3][1:]
    bad = verify_quote_verdict(cbor2.dumps(sig), None, opts, now=int(pinned_time(NSM_QVL)))
    assert bad.reasons == (Reason.NITRO_SIGNATURE,)
    other = verify_quote_verdict(
        raw, None, opts, now=int(pinned_time(NSM_QVL)), report_data=b"\x01" * 64
    )
    assert Reason.REPORT_DATA in other.reasons
    assert verify_quote_verdict(
        raw,
        None,
        VerifyOptions(expect_tee=TeeType.TDX, any_measurement=True),
        now=int(pinned_time(NSM_QVL)),
    ).reasons == (Reason.TEE_TYPE,)
    strict = VerifyOptions(policy=None)
    assert verify_quote_verdict(raw, None, strict, now=int(pinned_time(NSM_QVL))).reasons == (
        Reason.NO_MEASUREMENT_POLICY,
    )


def test_dstack_nitro_scale_attestations_verify() -> None:
    from certmgr.attest.verify import verify_dstack_evidence
    from tests.helpers.nitro import DSTACK_ATTEST, NSM_QVL, nitro_vector, pinned_time

    opts = VerifyOptions(any_measurement=True)
    for vec in (NSM_QVL, DSTACK_ATTEST):
        raw = nitro_vector(vec[1])
        v = verify_dstack_evidence(raw, None, opts, now=int(pinned_time(vec)))
        doc = v.to_json()
        assert v.trusted, doc["failures"]
        assert (
            doc["dstack"]["platform"] == "nitro"
            and doc["dstack"]["runtime_events_measured"] is False
        )
    raw = nitro_vector(DSTACK_ATTEST[1])
    asked = hashlib.sha256(b"").digest() + bytes(32)
    good = verify_dstack_evidence(
        raw, None, opts, now=int(pinned_time(DSTACK_ATTEST)), report_data=asked
    )
    assert good.trusted and good.binding
    bad = verify_dstack_evidence(
        raw, None, opts, now=int(pinned_time(DSTACK_ATTEST)), report_data=bytes(64)
    )
    assert Reason.REPORT_DATA in bad.reasons and not bad.binding


def test_dstack_get_quote_answer_verdict() -> None:
    from certmgr.attest.verify import verify_quote_verdict
    from tests.helpers.nitro import dstack_vector

    raw = dstack_vector("tdx-lite-getquote.json")
    rd = bytes.fromhex(json.loads(raw)["report_data"])
    key = bytes.fromhex("039e695a6b5e24824e8fcfe923bfa9cde0f1cb51b6ab5f060eff3c1cd45d057910")
    v = verify_quote_verdict(
        raw,
        None,
        VerifyOptions(any_measurement=True),
        now=1780000000,
        report_data=rd,
        expected_key=key,
    )
    doc = v.to_json()
    # No Intel collateral for this FMSPC at a valid time is bundled: never trusted, but the
    # binding, the RTMR3 replay and the DIP-1 key are checked and reported.
    assert v.reasons == (Reason.COLLATERAL_MISSING,) and not v.trusted and v.binding
    assert doc["report_data_key"]["public_key"] == key.hex()
    assert doc["report_data_key"]["address"].startswith("0x")
    assert doc["dstack"]["rtmr3_replayed"] == doc["rt_mr3"]
    assert doc["mr_td"].startswith("fd685522")
    wrong_key = verify_quote_verdict(
        raw, None, VerifyOptions(any_measurement=True), now=1780000000, expected_key=b"\x02" * 33
    )
    assert Reason.REPORT_DATA in wrong_key.reasons
    log = json.loads(json.loads(raw)["event_log"])
    for e in log:
        if e["imr"] == 3 and e["event"] == "compose-hash":
            e["event_payload"] = "00" * 32
    tampered = json.dumps({**json.loads(raw), "event_log": json.dumps(log)}).encode()
    t = verify_quote_verdict(tampered, None, VerifyOptions(any_measurement=True), now=1780000000)
    assert Reason.EVENT_LOG in t.reasons
    junk = verify_quote_verdict(b'{"quote": 1}', None, VerifyOptions(), now=0)
    assert junk.reasons == (Reason.QUOTE_MALFORMED,)


# -- NVIDIA GPU evidence in fresh evidence ---------------------------------------------------


def _gpu_evidence(
    nonce: bytes,
    spki_hash: bytes,
    *,
    mode: str = "cc",
    count: int | None = None,
    signed_nonce: bytes | None = None,
) -> tuple[bytes, GpuCollateral]:
    dev = own_device()
    claims = encode_evidence_claims(
        nonce, spki_hash, 1700000000, gpu_mode=mode, gpu_count=1 if count is None else count
    )
    q = build_simulated_quote(DEV_KEY, report_data_for_claims(claims))
    gpu = dev.evidence(signed_nonce or gpu_nonce(claims))
    doc = build_evidence(q, claims, tee="tdx", provider="simulated", gpu=[gpu])
    return json.dumps(doc).encode(), GpuCollateral(device_root=dev.root.cert)


def test_gpu_evidence_bound_to_the_claims_is_trusted_when_required() -> None:
    nonce, h = b"n" * 16, b"\x07" * 32
    body, coll = _gpu_evidence(nonce, h)
    required = dataclasses.replace(DEV, require_gpu=True)
    v = verify_evidence(body, nonce, h, None, required, now=T_OWN, gpu_collateral=coll)
    assert v.trusted, v.failures
    out = v.to_json()
    assert out["gpu_mode"] == "cc" and out["gpu_count"] == 1 and out["gpu_status"] == "Verified"
    assert [g["trusted"] for g in out["gpus"]] == [True]


def test_gpu_evidence_for_another_nonce_is_refused_when_required() -> None:
    nonce, h = b"n" * 16, b"\x07" * 32
    body, coll = _gpu_evidence(nonce, h, signed_nonce=b"\x01" * 32)
    required = dataclasses.replace(DEV, require_gpu=True)
    v = verify_evidence(body, nonce, h, None, required, now=T_OWN, gpu_collateral=coll)
    assert v.reasons == (Reason.GPU_NONCE,)
    # Not required: reported, not decisive.
    v = verify_evidence(body, nonce, h, None, DEV, now=T_OWN, gpu_collateral=coll)
    assert v.trusted
    assert [f["reason"] for f in v.to_json()["gpu_failures"]] == ["gpu-nonce"]


def test_gpus_in_devtools_mode_or_missing_are_refused() -> None:
    nonce, h = b"n" * 16, b"\x07" * 32
    required = dataclasses.replace(DEV, require_gpu=True)
    body, coll = _gpu_evidence(nonce, h, mode="devtools")
    v = verify_evidence(body, nonce, h, None, required, now=T_OWN, gpu_collateral=coll)
    assert v.reasons == (Reason.GPU_MODE,)
    body, coll = _gpu_evidence(nonce, h, count=2)
    v = verify_evidence(body, nonce, h, None, required, now=T_OWN, gpu_collateral=coll)
    assert v.reasons == (Reason.GPU_MISSING,)
    v = verify_evidence(_evidence(nonce, h), nonce, h, None, required)
    assert v.reasons == (Reason.GPU_MISSING,)
    assert v.to_json()["gpus"] == []


def test_gpu_verdict_on_the_real_8_gpu_file() -> None:
    raw = nvidia_data("ppcie_gpu_evidence_8xH100.json")
    v = verify_gpu_verdict(raw, GpuCollateral(), ANY, now=T_PPCIE, nonce=PPCIE_NONCE)
    assert v.trusted and v.binding and v.status == "Verified" and len(v.gpus) == 8
    assert v.measurement is None  # a GPU-only verdict: trusted by its devices
    v = verify_gpu_verdict(raw, GpuCollateral(), VerifyOptions(), now=T_PPCIE)
    assert set(v.reasons) == {Reason.GPU_UNJUDGED} and not v.trusted
    assert verify_gpu_verdict(b"[", GpuCollateral(), ANY, now=T_PPCIE).reasons == (
        Reason.GPU_MALFORMED,
    )
