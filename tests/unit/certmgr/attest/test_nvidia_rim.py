"""NVIDIA RIMs: NVIDIA's real sample RIMs verify at a time their signers were valid, expire
after it, and any edit, DOCTYPE or foreign signer is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certmgr.attest.nvidia_rim import MAX_RIM_SIZE, parse_rim_unverified, verify_rim
from certmgr.errors import VerifyError
from tests.helpers.nvidia import T_H100, T_RIM_EXPIRED, data, rim_signer, rim_xml

WHEN = dt.datetime.fromtimestamp(T_H100, dt.UTC)
DRIVER = "Driver_RIM_test_no_gpu.swidtag"
VBIOS = "1010_0200_882_96005E0001_PROD.swidtag"


def test_nvidias_driver_and_vbios_rims_verify() -> None:
    drv = verify_rim(data(DRIVER), WHEN)
    assert (drv.kind, drv.version, drv.product, drv.verified) == ("driver", "545.00", "GH100", True)
    assert len(drv.active()) == 21 and sorted(drv.active())[:3] == [7, 21, 22]
    assert drv.signer.startswith("CN=HCC RIM L4 Signer")
    assert (
        drv.chain_sha256[-1] == "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
    )
    vb = verify_rim(data(VBIOS), WHEN)
    assert (vb.kind, vb.version) == ("vbios", "96.00.5e.00.01")
    assert len(vb.active()) == 12
    assert vb.not_after == dt.datetime(2025, 6, 22, 9, 30, 33, tzinfo=dt.UTC)


def test_expired_rim_signers_are_refused_at_a_later_time() -> None:
    later = dt.datetime.fromtimestamp(T_RIM_EXPIRED, dt.UTC)
    for name in (DRIVER, VBIOS):
        with pytest.raises(VerifyError, match=r"HCC RIM L4 Signer' valid .* not at 2026-01-01"):
            verify_rim(data(name), later)


def test_an_edited_measurement_fails_the_digest() -> None:
    raw = data(DRIVER)
    i = raw.index(b'Hash0="0e0ee1') + 8
    edited = raw[:i] + b"1" + raw[i + 1 :]
    with pytest.raises(VerifyError, match="does not verify: Digest mismatch"):
        verify_rim(edited, WHEN)
    # Unverified reading sees the edit; verification never returns it.
    assert parse_rim_unverified(edited).measurements[7].values[0].hex().startswith("010ee1")


def test_an_edited_signature_fails() -> None:
    raw = data(VBIOS)
    j = raw.index(b"<ds:SignatureValue>") + 25
    edited = raw[:j] + (b"A" if raw[j : j + 1] != b"A" else b"B") + raw[j + 1 :]
    with pytest.raises(VerifyError, match="signature does not verify"):
        verify_rim(edited, WHEN)


@pytest.mark.parametrize(
    "prefix",
    [
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]>',
        b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "file:///etc/passwd">',
    ],
)
def test_doctypes_and_entities_are_refused_before_parsing(prefix: bytes) -> None:
    with pytest.raises(VerifyError, match="DOCTYPE"):
        verify_rim(prefix + data(DRIVER), WHEN)


def test_malformed_inputs_are_refused() -> None:
    with pytest.raises(VerifyError, match="exceeds"):
        verify_rim(b" " * (MAX_RIM_SIZE + 1), WHEN)
    with pytest.raises(VerifyError, match="not well-formed"):
        verify_rim(b"<SoftwareIdentity", WHEN)
    with pytest.raises(VerifyError, match="not SWID"):
        verify_rim(b"<a/>", WHEN)


def test_a_rim_of_another_signer_is_refused_and_accepted_under_its_own_root() -> None:
    signer = rim_signer()
    doc = signer.sign(rim_xml("550.90.07", {0: (b"\x01" * 48,), 3: (b"\x02" * 48, b"\x03" * 48)}))
    with pytest.raises(VerifyError, match="NVIDIA CoRIM signing Root CA"):
        verify_rim(doc, WHEN)
    rim = verify_rim(doc, WHEN, root_certificate=signer.root.cert)
    assert rim.version == "550.90.07" and rim.kind == "driver"
    assert rim.measurements[3].values == (b"\x02" * 48, b"\x03" * 48)


def test_content_added_after_signing_fails() -> None:
    signer = rim_signer()
    doc = signer.sign(rim_xml("550.90.07", {0: (b"\x01" * 48,)}))
    extra = b'<Resource type="Measurement" index="9" active="True" alternatives="0" size="48"/>'
    edited = doc.replace(b"</Payload>", extra + b"</Payload>")
    assert edited != doc
    with pytest.raises(VerifyError, match="Digest mismatch"):
        verify_rim(edited, WHEN, root_certificate=signer.root.cert)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_real_rims_fail_only_with_verify_error(d: st.DataObject) -> None:
    raw = bytearray(data(DRIVER))
    for _ in range(d.draw(st.integers(1, 3))):
        raw[d.draw(st.integers(0, len(raw) - 1))] = d.draw(st.integers(0, 255))
    blob = bytes(raw[: d.draw(st.integers(0, len(raw)))]) if d.draw(st.booleans()) else bytes(raw)
    try:
        verify_rim(blob, WHEN)
    except VerifyError:
        return
    # A mutation that still verifies can only have touched what the signature ignores.
    assert parse_rim_unverified(blob).measurements == verify_rim(data(DRIVER), WHEN).measurements


def test_a_signature_element_off_its_schema_is_refused() -> None:
    # Found by fuzzing: signxml's schema check raised lxml's DocumentInvalid.
    raw = data(DRIVER).replace(b"<ds:SignedInfo>", b"<ds:SignedInfo>x", 1)
    with pytest.raises(VerifyError, match="malformed"):
        verify_rim(raw, WHEN)
