"""certmgr.attest.snp_verify: SEV-SNP reports against AMD's roots, on the real vectors."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.sevsnp import SigningKey, SnpProduct, parse_snp
from certmgr.attest.snp_roots import ARK_SHA256, ASK_SHA256, ASVK_SHA256
from certmgr.attest.snp_verify import (
    SnpCollateral,
    SnpPolicy,
    SnpReason,
    SnpTcbFloor,
    amd_anchors,
    check_cert_chain,
    check_vek,
    load_certificates,
    vek_extensions,
    verify_snp_report,
)
from certmgr.errors import VerifyError
from tests.helpers.snp import (
    T_DSTACK,
    T_GOSEV,
    certs,
    data,
    dstack_collateral,
    dstack_report,
    edit,
    fake_vek,
    gosev_collateral,
    gosev_report,
    sign_report,
    synthetic_report,
    with_key_info,
    with_policy,
)

SMT_OK = SnpPolicy(allow_smt=True)


def _checks(res: object) -> set[tuple[SnpReason, str]]:
    return {(f.reason, f.check) for f in res.failures}  # type: ignore[attr-defined]


# -- the vectors' expectations ------------------------------------------------------------


def test_go_sev_guest_vector_verifies() -> None:
    res = verify_snp_report(gosev_report(), gosev_collateral(), T_GOSEV, SMT_OK)
    # Signature, chain (VCEK <- ASK <- ARK Milan) and TCB check: UpToDate. Its guest policy
    # 0xb0000 allows DEBUG, which is refused always, and nothing else fails.
    assert res.status == "UpToDate"
    assert _checks(res) == {(SnpReason.POLICY, "debug")}
    assert res.product is SnpProduct.MILAN and res.signer is SigningKey.VCEK
    assert res.report is not None and res.report.policy.raw == 0xB0000
    assert res.chain_sha256[2] == ARK_SHA256[SnpProduct.MILAN]
    d = res.details()
    assert d["reported_tcb"] == {"blSPL": 2, "teeSPL": 0, "snpSPL": 5, "ucodeSPL": 68}
    assert d["signing_key"] == "VCEK"


def test_go_sev_guest_vector_default_policy_refuses_smt_too() -> None:
    res = verify_snp_report(gosev_report(), gosev_collateral(), T_GOSEV)
    assert res.status == "UpToDate"
    assert _checks(res) == {(SnpReason.POLICY, "debug"), (SnpReason.POLICY, "smt")}
    assert not res.ok


def test_go_sev_guest_vector_offline_with_only_the_vcek() -> None:
    # ASK and ARK default to the shipped, pinned certificates.
    coll = SnpCollateral(vek=data("vcek.testcer"))
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert res.status == "UpToDate"
    assert res.chain_sha256[1:] == (ASK_SHA256[SnpProduct.MILAN], ARK_SHA256[SnpProduct.MILAN])


def test_dstack_vector_verifies() -> None:
    res = verify_snp_report(dstack_report(), dstack_collateral(), T_DSTACK, SMT_OK)
    assert res.status == "UpToDate"
    assert res.failures == ()
    assert res.ok
    r = res.report
    assert r is not None and r.version == 3 and r.policy.raw == 0x30000
    assert res.details()["firmware"] == "1.55.29"


def test_dstack_vector_default_policy_refuses_smt_only() -> None:
    res = verify_snp_report(dstack_report(), dstack_collateral(), T_DSTACK)
    assert res.status == "UpToDate"
    assert _checks(res) == {(SnpReason.POLICY, "smt")}


def test_amds_serial_number_zero_warning_does_not_escape() -> None:
    # Both real VCEKs have serial number 0; cryptography 50 warns on loading them.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_snp_report(dstack_report(), dstack_collateral(), T_DSTACK, SMT_OK).ok
        load_certificates(data("dstack_sev_snp_vcek.pem"))


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_certificates_as_pem_or_der_are_the_same() -> None:
    vcek = certs("dstack_sev_snp_vcek.pem")[0]
    pem = x509.load_der_x509_certificate(vcek).public_bytes(serialization.Encoding.PEM)
    assert load_certificates(pem) == (vcek,)
    assert load_certificates(vcek) == (vcek,)
    with pytest.raises(VerifyError):
        load_certificates(b"not a certificate")
    with pytest.raises(VerifyError, match="exceeds"):
        load_certificates(bytes(300 * 1024))


# -- signature ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gosev", "dstack"])
def test_a_flipped_byte_anywhere_in_the_signed_region_fails(which: str) -> None:
    raw, coll, when = (
        (gosev_report(), gosev_collateral(), T_GOSEV)
        if which == "gosev"
        else (dstack_report(), dstack_collateral(), T_DSTACK)
    )
    signature_failures = 0
    for pos in range(0x2A0):
        flipped = edit(raw, pos, bytes([raw[pos] ^ 0x01]))
        res = verify_snp_report(flipped, coll, when, SMT_OK)
        assert not res.ok and res.status != "UpToDate", pos
        if SnpReason.MALFORMED in res.reasons:
            continue  # a reserved byte or bit: refused before any signature check
        assert SnpReason.SIGNATURE in res.reasons, pos
        signature_failures += 1
    assert signature_failures > 400  # every field that is not reserved


def test_flipped_signature_bytes_fail() -> None:
    raw = gosev_report()
    for pos in (0x2A0, 0x2A0 + 47, 0x2E8, 0x2E8 + 47):
        res = verify_snp_report(
            edit(raw, pos, bytes([raw[pos] ^ 0x80])), gosev_collateral(), T_GOSEV, SMT_OK
        )
        assert SnpReason.SIGNATURE in res.reasons


def test_signature_algorithm_must_be_ecdsa_p384() -> None:
    raw = edit(dstack_report(), 0x34, struct.pack("<I", 2))
    res = verify_snp_report(raw, dstack_collateral(), T_DSTACK, SMT_OK)
    assert any(
        f.reason is SnpReason.SIGNATURE and "SIGNATURE_ALGO 2" in f.message for f in res.failures
    )


def test_unsigned_report() -> None:
    res = verify_snp_report(
        with_key_info(dstack_report(), 7 << 2), dstack_collateral(), T_DSTACK, SMT_OK
    )
    assert any("not signed" in f.message for f in res.failures)
    assert res.status == "Invalid"


def test_report_says_vlek_but_a_vcek_is_given() -> None:
    res = verify_snp_report(
        with_key_info(dstack_report(), 1 << 2), dstack_collateral(), T_DSTACK, SMT_OK
    )
    assert (SnpReason.CHAIN, "signing-key") in _checks(res)


# -- chain --------------------------------------------------------------------------------


def test_genoa_chain_for_a_milan_vcek_fails() -> None:
    ask, ark = certs("ask_ark_genoa.pem")
    coll = SnpCollateral(vek=data("vcek.testcer"), ask=ask, ark=ark)
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert res.status == "Invalid"
    assert SnpReason.CHAIN in res.reasons
    assert SnpReason.SIGNATURE not in res.reasons  # the VCEK itself still signed the report


def test_genoa_ask_alone_for_a_milan_vcek_fails() -> None:
    coll = SnpCollateral(vek=data("vcek.testcer"), ask=certs("ask_ark_genoa.pem")[0])
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert SnpReason.CHAIN in res.reasons


def test_asvk_for_a_vcek_fails() -> None:
    coll = SnpCollateral(vek=data("vcek.testcer"), ask=certs("ask_ark_milan_vlek.pem")[0])
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert SnpReason.CHAIN in res.reasons


def _self_signed_ark(cn: str = "ARK-Milan") -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(
            key,
            hashes.SHA384(),
            rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
        )
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_an_ark_that_is_not_amds_fails() -> None:
    coll = SnpCollateral(vek=data("vcek.testcer"), ark=_self_signed_ark())
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert any(
        f.reason is SnpReason.CHAIN and "not one of AMD's roots" in f.message for f in res.failures
    )


def test_dstack_vcek_with_the_go_sev_guest_report_fails() -> None:
    # Another chip's genuine VCEK: the signature and the chip binding fail.
    coll = SnpCollateral(vek=certs("dstack_sev_snp_vcek.pem")[0])
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert SnpReason.SIGNATURE in res.reasons
    assert (SnpReason.TCB, "chip-id") in _checks(res)
    assert (SnpReason.TCB, "reported-tcb") in _checks(res)


@pytest.mark.parametrize(
    "when",
    [dt.datetime(2022, 9, 23, tzinfo=dt.UTC), dt.datetime(2029, 9, 25, tzinfo=dt.UTC)],
    ids=["not-yet-valid", "expired"],
)
def test_vcek_outside_its_validity(when: dt.datetime) -> None:
    res = verify_snp_report(gosev_report(), gosev_collateral(), when, SMT_OK)
    assert res.status == "Invalid"
    assert any(
        f.reason is SnpReason.VALIDITY and f.message.startswith("VCEK") for f in res.failures
    )


def test_unix_seconds_are_accepted_as_time() -> None:
    res = verify_snp_report(dstack_report(), dstack_collateral(), T_DSTACK.timestamp(), SMT_OK)
    assert res.ok
    assert not verify_snp_report(dstack_report(), dstack_collateral(), 0, SMT_OK).ok
    with pytest.raises(VerifyError, match="verification time"):
        verify_snp_report(dstack_report(), dstack_collateral(), float("inf"))


def test_collateral_sorts_ask_and_asvk_by_the_key_given() -> None:
    ask, ark = certs("ask_ark_milan.pem")
    asvk = certs("ask_ark_milan_vlek.pem")[0]
    vcek = data("vcek.testcer")
    coll = SnpCollateral.from_certificates([asvk, vcek, ask, ark])
    assert (coll.vek, coll.ask, coll.ark) == (vcek, ask, ark)
    assert SnpCollateral.from_certificates([asvk]).ask == asvk
    with pytest.raises(VerifyError, match="two different ASK"):
        SnpCollateral.from_certificates([ask, certs("ask_ark_genoa.pem")[0]])
    with pytest.raises(VerifyError, match="not an AMD"):
        SnpCollateral.from_certificates([_self_signed_ark("example")])


def test_garbage_collateral_is_a_failure_not_an_exception() -> None:
    res = verify_snp_report(dstack_report(), SnpCollateral(vek=b"junk"), T_DSTACK, SMT_OK)
    assert res.reasons == (SnpReason.COLLATERAL_MALFORMED,)
    # An ARK given where the VCEK belongs.
    res = verify_snp_report(
        dstack_report(), SnpCollateral(vek=certs("ask_ark_milan.pem")[1]), T_DSTACK, SMT_OK
    )
    assert res.status == "Invalid"


def test_no_collateral_is_unverified() -> None:
    for coll in (None, SnpCollateral()):
        res = verify_snp_report(dstack_report(), coll, T_DSTACK, SMT_OK)
        assert res.status == "Unverified"
        assert res.reasons == (SnpReason.COLLATERAL_MISSING,)


def test_malformed_report() -> None:
    res = verify_snp_report(b"\x00" * 10, dstack_collateral(), T_DSTACK)
    assert res.reasons == (SnpReason.MALFORMED,) and res.report is None


# -- TCB ----------------------------------------------------------------------------------


def test_mismatched_chip_id_is_a_tcb_failure() -> None:
    raw = dstack_report()
    res = verify_snp_report(
        edit(raw, 0x1A0, bytes([raw[0x1A0] ^ 0xFF])), dstack_collateral(), T_DSTACK, SMT_OK
    )
    assert (SnpReason.TCB, "chip-id") in _checks(res)
    assert SnpReason.SIGNATURE in res.reasons


def test_masked_chip_id_is_a_tcb_failure() -> None:
    res = verify_snp_report(
        edit(dstack_report(), 0x1A0, bytes(64)), dstack_collateral(), T_DSTACK, SMT_OK
    )
    assert any(f.check == "chip-id" and "masked" in f.message for f in res.failures)


def test_mismatched_reported_tcb_is_a_tcb_failure() -> None:
    # snpSPL 23 -> 24 (byte 6 of REPORTED_TCB on Milan).
    res = verify_snp_report(
        edit(dstack_report(), 0x186, b"\x18"), dstack_collateral(), T_DSTACK, SMT_OK
    )
    assert (SnpReason.TCB, "reported-tcb") in _checks(res)
    assert SnpReason.SIGNATURE in res.reasons
    assert res.status == "Invalid"


def test_minimum_tcb() -> None:
    floor = (SnpTcbFloor(SnpProduct.MILAN, bootloader=4, snp=24, microcode=213),)
    res = verify_snp_report(
        dstack_report(), dstack_collateral(), T_DSTACK, SnpPolicy(allow_smt=True, min_tcb=floor)
    )
    # REPORTED_TCB has snpSPL 23 < 24: only the floor fails, so the status is OutOfDate.
    assert res.status == "OutOfDate"
    assert _checks(res) == {(SnpReason.TCB, "min-tcb")}
    ok = (SnpTcbFloor(SnpProduct.MILAN, bootloader=4, snp=23, microcode=213),)
    other = (SnpTcbFloor(SnpProduct.GENOA, snp=99),)
    for f in (ok, other):
        res = verify_snp_report(
            dstack_report(), dstack_collateral(), T_DSTACK, SnpPolicy(allow_smt=True, min_tcb=f)
        )
        assert res.ok
    with pytest.raises(VerifyError):
        SnpTcbFloor(SnpProduct.MILAN, snp=256)
    with pytest.raises(VerifyError, match="two TCB floors"):
        SnpPolicy(min_tcb=(SnpTcbFloor(SnpProduct.MILAN), SnpTcbFloor(SnpProduct.MILAN)))
    assert hash(SnpPolicy(min_tcb=ok)) == hash(SnpPolicy(min_tcb=ok))


# -- policy -------------------------------------------------------------------------------


def test_debug_policy_is_refused() -> None:
    raw = with_policy(dstack_report(), 0x30000 | 1 << 19)
    res = verify_snp_report(
        raw, dstack_collateral(), T_DSTACK, SnpPolicy(allow_smt=True, allow_migration_agent=True)
    )
    assert (SnpReason.POLICY, "debug") in _checks(res)
    assert SnpReason.SIGNATURE in res.reasons


def test_migration_agent_refused_unless_allowed() -> None:
    raw = with_policy(dstack_report(), 0x30000 | 1 << 18)
    res = verify_snp_report(raw, dstack_collateral(), T_DSTACK, SMT_OK)
    assert (SnpReason.POLICY, "migrate-ma") in _checks(res)
    res = verify_snp_report(
        raw, dstack_collateral(), T_DSTACK, SnpPolicy(allow_smt=True, allow_migration_agent=True)
    )
    assert (SnpReason.POLICY, "migrate-ma") not in _checks(res)


def test_minimum_firmware_products_and_signing_keys() -> None:
    res = verify_snp_report(
        dstack_report(),
        dstack_collateral(),
        T_DSTACK,
        SnpPolicy(allow_smt=True, min_firmware=(1, 56)),
    )
    assert _checks(res) == {(SnpReason.POLICY, "firmware")}
    assert res.status == "UpToDate"
    res = verify_snp_report(
        dstack_report(),
        dstack_collateral(),
        T_DSTACK,
        SnpPolicy(allow_smt=True, min_firmware=(1, 55)),
    )
    assert res.ok
    res = verify_snp_report(
        dstack_report(),
        dstack_collateral(),
        T_DSTACK,
        SnpPolicy(allow_smt=True, products=frozenset({SnpProduct.GENOA})),
    )
    assert _checks(res) == {(SnpReason.POLICY, "product")}
    res = verify_snp_report(
        dstack_report(),
        dstack_collateral(),
        T_DSTACK,
        SnpPolicy(allow_smt=True, signing_keys=frozenset({SigningKey.VLEK})),
    )
    assert _checks(res) == {(SnpReason.POLICY, "signing-key")}
    with pytest.raises(VerifyError):
        SnpPolicy(signing_keys=frozenset({SigningKey.NONE}))


# -- trust anchors and extensions ---------------------------------------------------------


def test_shipped_anchors_match_their_pins_and_the_vectors() -> None:
    a = amd_anchors()
    vectors = {
        SnpProduct.MILAN: certs("ask_ark_milan.pem"),
        SnpProduct.GENOA: certs("ask_ark_genoa.pem"),
        SnpProduct.TURIN: certs("ask_ark_turin_vcek.pem"),
    }
    for product, (ask, ark) in vectors.items():
        assert hashlib.sha256(ark).hexdigest() == ARK_SHA256[product]
        assert hashlib.sha256(ask).hexdigest() == ASK_SHA256[product]
        check_cert_chain(ask, ark, product)
        assert a.ark_product(x509.load_der_x509_certificate(ark)) is product
    asvk_milan = certs("ask_ark_milan_vlek.pem")[0]
    assert hashlib.sha256(asvk_milan).hexdigest() == ASVK_SHA256[SnpProduct.MILAN]
    for product in SnpProduct:
        der = a.asvk[product].public_bytes(serialization.Encoding.DER)
        check_cert_chain(der, a.ark[product].public_bytes(serialization.Encoding.DER), product)
        assert a.asvk[product].subject.rfc4514_string().startswith(f"CN=SEV-VLEK-{product}")
    with pytest.raises(VerifyError, match="not AMD's Genoa root"):
        ask, ark = certs("ask_ark_milan.pem")
        check_cert_chain(ask, ark, SnpProduct.GENOA)


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_vcek_extensions() -> None:
    for name in ("vcek.testcer", "dstack_sev_snp_vcek.pem"):
        der = certs(name)[0]
        assert check_vek(der, SnpProduct.MILAN) is SigningKey.VCEK
        with pytest.raises(VerifyError):
            check_vek(der, SnpProduct.GENOA)
    ext = vek_extensions(x509.load_der_x509_certificate(data("vcek.testcer")))
    assert ext.product_name == "Milan-B0" and ext.product is SnpProduct.MILAN
    assert ext.spl == {
        "blSPL": 2,
        "teeSPL": 0,
        "snpSPL": 5,
        "spl4": 0,
        "spl5": 0,
        "spl6": 0,
        "spl7": 0,
        "ucodeSPL": 68,
    }
    assert ext.hwid == parse_snp(gosev_report()).chip_id
    assert ext.csp_id is None


# -- endorsement keys of our own: signature encoding, VLEK and Turin paths ----------------

MILAN_TCB = {"blSPL": 4, "teeSPL": 0, "snpSPL": 23, "ucodeSPL": 213}
MILAN_TCB_RAW = int.from_bytes(bytes([4, 0, 0, 0, 0, 0, 23, 213]), "little")
TURIN_TCB = {"fmcSPL": 1, "blSPL": 9, "teeSPL": 2, "snpSPL": 5, "ucodeSPL": 0x48}
TURIN_TCB_RAW = int.from_bytes(bytes([1, 9, 2, 5, 0, 0, 0, 0x48]), "little")
CHIP = bytes(range(64))
NOT_AMD = {(SnpReason.CHAIN, "")}


def _non_chain(res: object) -> set[tuple[SnpReason, str]]:
    return {c for c in _checks(res) if c[0] is not SnpReason.CHAIN}


def test_own_vcek_signature_and_binding_check_but_not_the_chain() -> None:
    vek, key = fake_vek(spl=MILAN_TCB, hwid=CHIP)
    raw = sign_report(synthetic_report(reported_tcb=MILAN_TCB_RAW, chip_id=CHIP), key)
    res = verify_snp_report(raw, SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    # r and s were written little-endian and read back: the signature verifies; the chip
    # and TCB bind; only AMD's signature on the VCEK is missing.
    assert _non_chain(res) == set()
    assert any("not signed by the ASK" in f.message for f in res.failures)
    assert res.status == "Invalid"
    res = verify_snp_report(edit(raw, 0x50, b"\x01"), SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    assert SnpReason.SIGNATURE in res.reasons


def test_own_vlek() -> None:
    vek, key = fake_vek(kind="VLEK", spl=MILAN_TCB, csp_id="example-csp")
    raw = sign_report(with_key_info(synthetic_report(reported_tcb=MILAN_TCB_RAW), 1 << 2), key)
    res = verify_snp_report(raw, SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    assert res.signer is SigningKey.VLEK
    assert _non_chain(res) == set()
    assert any("not signed by the ASVK" in f.message for f in res.failures)
    # A VCEK-signed report with a VLEK certificate.
    vcek_flag = sign_report(synthetic_report(reported_tcb=MILAN_TCB_RAW), key)
    res = verify_snp_report(vcek_flag, SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    assert (SnpReason.CHAIN, "signing-key") in _checks(res)
    # A VLEK with a hwID is malformed.
    bad, key = fake_vek(kind="VLEK", spl=MILAN_TCB, csp_id="x", hwid=CHIP)
    res = verify_snp_report(sign_report(raw, key), SnpCollateral(vek=bad), T_DSTACK, SMT_OK)
    assert SnpReason.COLLATERAL_MALFORMED in res.reasons


def test_turin_tcb_and_hwid_binding() -> None:
    chip = bytes(range(1, 9)) + bytes(56)
    report = synthetic_report(family=0x1A, model=0x02, reported_tcb=TURIN_TCB_RAW, chip_id=chip)
    vek, key = fake_vek(product="Turin", spl=TURIN_TCB, hwid=chip[:8])
    raw = sign_report(report, key)
    res = verify_snp_report(raw, SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    assert res.product is SnpProduct.TURIN
    assert _non_chain(res) == set()
    for spl, hwid, expect in (
        ({**TURIN_TCB, "fmcSPL": 2}, chip[:8], (SnpReason.TCB, "reported-tcb")),
        (TURIN_TCB, bytes(8), (SnpReason.TCB, "chip-id")),
        (TURIN_TCB, chip, (SnpReason.TCB, "chip-id")),  # 64-byte hwID on Turin
        ({k: v for k, v in TURIN_TCB.items() if k != "fmcSPL"}, chip[:8],
         (SnpReason.COLLATERAL_MALFORMED, "")),
    ):  # fmt: skip
        vek, key = fake_vek(product="Turin", spl=spl, hwid=hwid)
        res = verify_snp_report(sign_report(report, key), SnpCollateral(vek=vek), T_DSTACK)
        assert expect in _checks(res), (spl, hwid)


def test_version_2_report_takes_the_chains_product() -> None:
    # No CPUID in version 2: a Turin VCEK makes the TCB read in the Turin layout.
    report = synthetic_report(version=2, reported_tcb=TURIN_TCB_RAW, chip_id=CHIP[:8] + bytes(56))
    vek, key = fake_vek(product="Turin", spl=TURIN_TCB, hwid=CHIP[:8])
    res = verify_snp_report(sign_report(report, key), SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    assert _non_chain(res) == set()
    assert res.report is not None and res.report.turin_tcb


def test_report_cpuid_contradicting_the_chain() -> None:
    report = synthetic_report(family=0x19, model=0x11, reported_tcb=MILAN_TCB_RAW, chip_id=CHIP)
    vek, key = fake_vek(spl=MILAN_TCB, hwid=CHIP)  # a Milan VCEK for a Genoa report
    res = verify_snp_report(sign_report(report, key), SnpCollateral(vek=vek), T_DSTACK, SMT_OK)
    assert any("CPUID names Genoa" in f.message for f in res.failures)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_collateral_never_raises(edits: list[tuple[int, int]]) -> None:
    vek = bytearray(_DSTACK_VCEK)
    for pos, value in edits:
        vek[pos % len(vek)] = value
    res = verify_snp_report(_DSTACK_REPORT, SnpCollateral(vek=bytes(vek)), T_DSTACK, SMT_OK)
    if bytes(vek) != _DSTACK_VCEK:
        assert res.status in ("Invalid", "UpToDate")


_DSTACK_VCEK = certs("dstack_sev_snp_vcek.pem")[0]
_DSTACK_REPORT = dstack_report()
