"""GPU and NVSwitch evidence verified against NVIDIA's roots: the real H100 and 8-GPU vectors
at their pinned times, one flipped byte per signed region, and devices, RIMs and OCSP
responses of our own for the paths no real vector reaches."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.x509 import ocsp

from certmgr.attest.nvidia import DeviceEvidence, GpuArch, parse_spdm_report
from certmgr.attest.nvidia_chain import fingerprint
from certmgr.attest.nvidia_verify import (
    GpuCollateral,
    GpuPolicy,
    GpuReason,
    OcspMode,
    chip_arch,
    rim_ids,
    verify_device,
    verify_devices,
)
from tests.helpers.nvidia import (
    H100_NONCE,
    PPCIE_NONCE,
    T_BEFORE_CHAIN,
    T_H100,
    T_OWN,
    T_PPCIE,
    flip,
    h100_evidence,
    make_ca,
    ocsp_response,
    own_device,
    ppcie_gpus,
    ppcie_switches,
    rim_signer,
    rim_xml,
    rims,
)

INSPECT = GpuPolicy(judge_measurements=False)


def reasons(result: object) -> set[GpuReason]:
    return {f.reason for f in result.failures}  # type: ignore[attr-defined]


def test_real_h100_verifies_at_its_pinned_time() -> None:
    r = verify_device(h100_evidence(), H100_NONCE, T_H100, INSPECT, GpuCollateral())
    assert r.trusted, r.failures
    assert r.details["leaf"] == "GH100 A01 GSP FMC LF"
    assert r.details["chain_sha256"][-1] == (
        "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    )
    assert r.details["fwid_checked"] is True
    assert r.details["ocsp"]["GH100 A01 GSP BROM"] == "missing"  # cached mode, offline
    assert r.to_json()["driver_version"] == "550.90.07"


def test_real_h100_with_nvidias_test_rims_is_not_judged_they_are_for_other_versions() -> None:
    # NVIDIA's sample RIMs verify (signature, chain, at a time before their signers
    # expired) but describe driver 545.00 and VBIOS 96.00.5E.00.01, not this report's.
    r = verify_device(h100_evidence(), H100_NONCE, T_H100, GpuPolicy(), GpuCollateral(rims()))
    assert reasons(r) == {GpuReason.UNJUDGED}
    (f,) = r.failures
    assert "550.90.07" in f.message and "96.00.9f.00.01" in f.message
    assert "driver 545.00" in f.message and "vbios 96.00.5e.00.01" in f.message
    assert r.details["rim"]["driver_rim_id"] == "NV_GPU_DRIVER_GH100_550.90.07"
    assert r.details["rim"]["vbios_rim_id"] == "NV_GPU_VBIOS_1010_0200_882_96009F0001"


def test_real_8_gpu_board_with_its_nvswitches_verifies_as_one_set() -> None:
    devices = ppcie_gpus() + ppcie_switches()
    res = verify_devices(devices, PPCIE_NONCE, T_PPCIE, INSPECT, GpuCollateral())
    assert res.trusted, res.all_failures()
    assert len(res.devices) == 12
    assert res.details["topology"] == {"switches": 4, "gpus": 8, "checked": True}


def test_a_missing_switch_breaks_the_topology() -> None:
    devices = ppcie_gpus() + ppcie_switches()[:3]
    res = verify_devices(devices, PPCIE_NONCE, T_PPCIE, INSPECT, GpuCollateral())
    assert all(d.trusted for d in res.devices)
    assert not res.trusted
    assert {f.reason for f in res.failures} == {GpuReason.TOPOLOGY}


def test_a_gpu_of_another_board_breaks_the_topology() -> None:
    devices = (h100_evidence(nonce=PPCIE_NONCE), *ppcie_gpus()[1:], *ppcie_switches())
    res = verify_devices(devices, PPCIE_NONCE, T_PPCIE, INSPECT, GpuCollateral())
    assert GpuReason.TOPOLOGY in {f.reason for f in res.failures}


def _regions() -> dict[str, int]:
    raw = h100_evidence().report
    rec_len = int.from_bytes(raw[37 + 5 : 37 + 8], "little")
    return {
        "request slot": 36,
        "request nonce": 10,
        "response header": 39,
        "measurement record": 37 + 8 + 100,
        "response nonce": 37 + 8 + rec_len + 5,
        "opaque data": 37 + 8 + rec_len + 32 + 2 + 10,
        "signature r": len(raw) - 90,
        "signature s": len(raw) - 3,
    }


@pytest.mark.parametrize("region", list(_regions()))
def test_one_flipped_byte_in_each_signed_region_fails_the_signature(region: str) -> None:
    offset = _regions()[region]
    ev = h100_evidence(report=flip(h100_evidence().report, offset))
    r = verify_device(ev, H100_NONCE, T_H100, INSPECT, GpuCollateral())
    assert not r.trusted
    if GpuReason.MALFORMED in reasons(r):
        pytest.fail(f"{region}: the edit made the report unparseable, pick another byte")
    assert GpuReason.SIGNATURE in reasons(r), r.failures
    assert any("signature" in f.message for f in r.failures)


def test_a_flipped_byte_in_the_chain_fails_the_chain() -> None:
    pem = h100_evidence().chain_pem
    lines = pem.split(b"\n")
    lines[30] = lines[30][:10] + (b"A" if lines[30][10:11] != b"A" else b"B") + lines[30][11:]
    r = verify_device(
        h100_evidence(chain_pem=b"\n".join(lines)), H100_NONCE, T_H100, INSPECT, GpuCollateral()
    )
    assert reasons(r) & {GpuReason.CHAIN, GpuReason.MALFORMED, GpuReason.SIGNATURE}
    assert not r.trusted


def test_another_nonce_fails() -> None:
    r = verify_device(h100_evidence(), bytes(32), T_H100, INSPECT, GpuCollateral())
    assert reasons(r) == {GpuReason.NONCE}
    r = verify_device(h100_evidence(), None, T_H100, INSPECT, GpuCollateral())
    assert reasons(r) == {GpuReason.NONCE}
    r = verify_device(h100_evidence(nonce=bytes(32)), H100_NONCE, T_H100, INSPECT, GpuCollateral())
    assert reasons(r) == {GpuReason.NONCE}


def test_the_claimed_architecture_must_be_the_certificates() -> None:
    r = verify_device(
        h100_evidence(arch=GpuArch.BLACKWELL), H100_NONCE, T_H100, INSPECT, GpuCollateral()
    )
    assert GpuReason.ARCH in reasons(r)
    only_blackwell = GpuPolicy(
        judge_measurements=False, architectures=frozenset({GpuArch.BLACKWELL})
    )
    r = verify_device(h100_evidence(), H100_NONCE, T_H100, only_blackwell, GpuCollateral())
    assert reasons(r) == {GpuReason.ARCH}
    assert chip_arch("GB100 A01 FSP FMC LF") is GpuArch.BLACKWELL
    assert chip_arch("LS_10 A01 FSP FMC LF") is GpuArch.LS10
    assert chip_arch("TU102") is None


def test_before_the_chain_was_valid_fails_with_validity() -> None:
    r = verify_device(h100_evidence(), H100_NONCE, T_BEFORE_CHAIN, INSPECT, GpuCollateral())
    assert reasons(r) == {GpuReason.VALIDITY}


def test_an_expired_device_chain_fails_with_validity() -> None:
    dev = own_device(leaf_not_after=dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    coll = GpuCollateral(device_root=dev.root.cert)
    nonce = b"\x07" * 32
    assert verify_device(dev.evidence(nonce), nonce, 1735689600, INSPECT, coll).trusted
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, INSPECT, coll)
    assert reasons(r) == {GpuReason.VALIDITY}
    assert "FMC LF" in r.failures[0].message


def test_a_chain_to_another_root_fails() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, INSPECT, GpuCollateral())
    assert reasons(r) == {GpuReason.CHAIN}
    assert "pinned NVIDIA root" in r.failures[0].message


def test_a_short_or_long_chain_fails() -> None:
    dev = own_device()
    dev.chain = [dev.chain[0], dev.chain[1], dev.chain[-1]]  # BROM signed by... not the root
    nonce = b"\x07" * 32
    r = verify_device(
        dev.evidence(nonce), nonce, T_OWN, INSPECT, GpuCollateral(device_root=dev.root.cert)
    )
    assert GpuReason.CHAIN in reasons(r)
    assert any("expected 5" in f.message for f in r.failures)


def test_fwid_must_match_the_leaf() -> None:
    dev = own_device()
    coll = GpuCollateral(device_root=dev.root.cert)
    nonce = b"\x07" * 32
    dev.fwid = b"\x11" * 48  # the report says so; the leaf certificate says 5a..
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, INSPECT, coll)
    assert reasons(r) == {GpuReason.FWID}


def test_collector_versions_must_be_the_reports() -> None:
    ev = h100_evidence()
    ev = DeviceEvidence(ev.arch, ev.report, ev.chain_pem, ev.nonce, {"driver_version": "1.0"})
    r = verify_device(ev, H100_NONCE, T_H100, INSPECT, GpuCollateral())
    assert reasons(r) == {GpuReason.VERSION}


# -- measurements against RIMs of our own -----------------------------------------------


def _rims_for(dev_measurements: dict[int, bytes], *, driver: set[int], vbios: set[int]):
    signer = rim_signer()
    golden = {i - 1: (v,) for i, v in dev_measurements.items()}
    drv = signer.sign(rim_xml("550.90.07", {i: golden[i] for i in driver}))
    vb = signer.sign(rim_xml("96.00.9f.00.01", {i: golden[i] for i in vbios}))
    return signer, drv, vb


def test_measurements_matching_the_rims_are_trusted() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    signer, drv, vb = _rims_for(dev.measurements(), driver=set(range(20, 40)), vbios=set(range(20)))
    coll = GpuCollateral(rims=(drv, vb), rim_root=signer.root.cert, device_root=dev.root.cert)
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, GpuPolicy(), coll)
    assert r.trusted, r.failures
    assert r.details["rim"]["matched"] is True
    assert r.details["rim"]["compared"] == 40


def test_one_measurement_off_the_rims_fails_naming_its_index() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    golden = dict(dev.measurements())
    golden[8] = b"\xee" * 48  # SPDM block 8 is RIM index 7
    signer, drv, vb = _rims_for(golden, driver=set(range(20, 40)), vbios=set(range(20)))
    coll = GpuCollateral(rims=(drv, vb), rim_root=signer.root.cert, device_root=dev.root.cert)
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, GpuPolicy(), coll)
    assert reasons(r) == {GpuReason.MEASUREMENT}
    assert r.details["rim"]["mismatched_indexes"] == [7]


def test_two_rims_setting_one_index_fail() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    signer, drv, vb = _rims_for(dev.measurements(), driver={3, 4}, vbios={4, 5})
    coll = GpuCollateral(rims=(drv, vb), rim_root=signer.root.cert, device_root=dev.root.cert)
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, GpuPolicy(), coll)
    assert GpuReason.RIM in reasons(r)


def test_rims_under_another_root_are_refused() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    _, drv, vb = _rims_for(dev.measurements(), driver={1}, vbios={2})
    coll = GpuCollateral(rims=(drv, vb), device_root=dev.root.cert)  # the pinned RIM root
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, GpuPolicy(), coll)
    assert reasons(r) == {GpuReason.UNJUDGED}
    assert "RIMs refused" in r.failures[0].message
    assert "not signed by 'NVIDIA CoRIM signing Root CA'" in r.failures[0].message


# -- OCSP ------------------------------------------------------------------------------


def _ocsp_all(dev, **kw) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Good responses for BROM, provisioner and identity (the leaf is not asked about)."""
    chain = dev.chain
    return {
        fingerprint(chain[i].cert): ocsp_response(chain[i].cert, chain[i + 1], **kw)
        for i in range(1, len(chain) - 1)
    }


def test_ocsp_require_without_responses_fails_offline() -> None:
    require = GpuPolicy(judge_measurements=False, ocsp=OcspMode.REQUIRE)
    r = verify_device(h100_evidence(), H100_NONCE, T_H100, require, GpuCollateral())
    assert reasons(r) == {GpuReason.OCSP}
    assert len(r.failures) == 3 and all("no OCSP response" in f.message for f in r.failures)
    off = GpuPolicy(judge_measurements=False, ocsp=OcspMode.OFF)
    r = verify_device(h100_evidence(), H100_NONCE, T_H100, off, GpuCollateral())
    assert r.trusted and r.details["ocsp"] == {"mode": "off"}


@pytest.mark.parametrize("mode", [OcspMode.CACHED, OcspMode.REQUIRE])
def test_ocsp_good_responses_pass(mode: OcspMode) -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    coll = GpuCollateral(device_root=dev.root.cert, ocsp=_ocsp_all(dev))
    r = verify_device(
        dev.evidence(nonce), nonce, T_OWN, GpuPolicy(judge_measurements=False, ocsp=mode), coll
    )
    assert r.trusted, r.failures
    assert set(r.details["ocsp"].values()) == {str(mode), "good"}


def test_ocsp_revoked_fails_even_when_only_cached() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    responses = _ocsp_all(dev)
    brom = dev.chain[1]
    responses[fingerprint(brom.cert)] = ocsp_response(
        brom.cert, dev.chain[2], status=ocsp.OCSPCertStatus.REVOKED
    )
    coll = GpuCollateral(device_root=dev.root.cert, ocsp=responses)
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, INSPECT, coll)
    assert reasons(r) == {GpuReason.OCSP}
    assert "revoked (key_compromise)" in r.failures[0].message


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"next_update": dt.datetime(2025, 12, 31, 12, tzinfo=dt.UTC)}, "expired"),
        ({"this_update": dt.datetime(2026, 2, 1, tzinfo=dt.UTC)}, "produced after"),
        (
            {"this_update": dt.datetime(2025, 12, 1, tzinfo=dt.UTC), "next_update": None},
            "older than",
        ),
    ],
)
def test_ocsp_responses_out_of_time_are_invalid(kw: dict[str, object], message: str) -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    coll = GpuCollateral(device_root=dev.root.cert, ocsp=_ocsp_all(dev, **kw))
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, INSPECT, coll)
    assert reasons(r) == {GpuReason.OCSP}
    assert all(message in f.message for f in r.failures)


def test_ocsp_responses_by_strangers_are_invalid_delegates_are_accepted() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    stranger = make_ca("Stranger")
    brom, provisioner = dev.chain[1], dev.chain[2]
    forged = ocsp_response(
        brom.cert, provisioner, responder=make_ca("R", stranger, ocsp_signer=True)
    )
    delegate = make_ca("NVIDIA OCSP Responder", dev.chain[3], ocsp_signer=True, ca=False)
    good = ocsp_response(brom.cert, provisioner, responder=delegate)
    no_eku = ocsp_response(brom.cert, provisioner, responder=make_ca("R2", dev.chain[3], ca=False))
    policy = GpuPolicy(judge_measurements=False, ocsp=OcspMode.REQUIRE)
    for response, ok, message in (
        (forged, False, "not issued by a CA of this chain"),
        (no_eku, False, "OCSPSigning"),
        (good, True, ""),
    ):
        responses = _ocsp_all(dev)
        responses[fingerprint(brom.cert)] = response
        coll = GpuCollateral(device_root=dev.root.cert, ocsp=responses)
        r = verify_device(dev.evidence(nonce), nonce, T_OWN, policy, coll)
        assert r.trusted is ok, r.failures
        if not ok:
            assert message in r.failures[0].message


def test_rim_ids_follow_nvidias_naming() -> None:
    report = parse_spdm_report(ppcie_gpus()[0].report)
    assert rim_ids(report, "GH100 A01 GSP FMC LF") == (
        "NV_GPU_DRIVER_GH100_590.12",
        "NV_GPU_VBIOS_G520_0200_885_9600A50001",
    )


def test_two_verified_rims_of_one_version_must_agree() -> None:
    dev = own_device()
    nonce = b"\x07" * 32
    signer, drv, vb = _rims_for(dev.measurements(), driver={20}, vbios={1})
    other = signer.sign(rim_xml("96.00.9f.00.01", {1: (b"\xee" * 48,)}))
    coll = GpuCollateral(
        rims=(drv, vb, other), rim_root=signer.root.cert, device_root=dev.root.cert
    )
    r = verify_device(dev.evidence(nonce), nonce, T_OWN, GpuPolicy(), coll)
    assert GpuReason.RIM in reasons(r)
    assert any("2 vbios RIMs for 96.00.9f.00.01 disagree" in f.message for f in r.failures)
    same = GpuCollateral(rims=(drv, vb, vb), rim_root=signer.root.cert, device_root=dev.root.cert)
    assert verify_device(dev.evidence(nonce), nonce, T_OWN, GpuPolicy(), same).trusted
