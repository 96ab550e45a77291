"""SPDM measurement reports and NVIDIA's JSON evidence list: strict parsing on real evidence."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certmgr.attest.nvidia import (
    GPU_NONCE_DOMAIN,
    MAX_EVIDENCE_JSON,
    MAX_REPORT_SIZE,
    DeviceKind,
    GpuArch,
    describe_nvattest_result,
    encode_nvidia_evidence,
    format_vbios_version,
    gpu_nonce,
    looks_like_nvidia_evidence,
    parse_nvidia_evidence,
    parse_nvidia_evidence_json,
    parse_spdm_report,
    split_devices,
)
from certmgr.errors import EvidenceError, QuoteError
from tests.helpers.nvidia import (
    H100_NONCE,
    PPCIE_NONCE,
    data,
    h100_report,
    ppcie_gpus,
    ppcie_switches,
)


def test_the_real_h100_report_parses_with_its_fields() -> None:
    r = parse_spdm_report(h100_report())
    assert len(r.raw) == 4117
    assert r.request_nonce == H100_NONCE
    assert len(r.measurements) == 64 and set(r.measurements) == set(range(1, 65))
    assert all(len(v) == 48 for v in r.measurements.values())
    assert r.driver_version == "550.90.07"
    assert r.vbios_version == "96.00.9f.00.01"
    assert r.fwid is not None and r.fwid.hex().startswith("f5c384aebb579217")
    assert (r.text(17), r.text(18), r.text(15)) == ("1010", "0200", "882")
    assert r.nvdec0_disabled
    assert r.signed == r.raw[:-96] and r.signature == r.raw[-96:]
    assert r.slot == 0


def test_the_real_ppcie_evidence_parses_gpus_and_switches() -> None:
    gpus, switches = ppcie_gpus(), ppcie_switches()
    assert len(gpus) == 8 and len(switches) == 4
    assert {g.arch for g in gpus} == {GpuArch.HOPPER}
    assert {s.arch for s in switches} == {GpuArch.LS10}
    assert {g.kind for g in gpus} == {DeviceKind.GPU}
    assert {s.kind for s in switches} == {DeviceKind.SWITCH}
    assert all(e.nonce == PPCIE_NONCE for e in gpus + switches)
    g = parse_spdm_report(gpus[0].report)
    assert g.driver_version == "590.12" and g.vbios_version == "96.00.a5.00.01"
    assert gpus[0].extra["vbios_version"] == "96.00.A5.00.01"
    assert len(g.pdis()) == 18  # one NVSwitch PDI per NVLink
    s = parse_spdm_report(switches[0].report)
    assert s.vbios_version == "96.10.73.00.01"  # switches report it as text
    assert len(s.pdis()) == 1 and len(s.switch_gpu_pdis()) == 8
    assert split_devices(gpus + switches) == (gpus, switches)


def test_vbios_version_format_matches_nvidia() -> None:
    assert format_vbios_version(bytes.fromhex("009f009601000000")) == "96.00.9f.00.01"
    with pytest.raises(QuoteError):
        format_vbios_version(b"\x00" * 7)


def _edit(raw: bytes, offset: int, value: int) -> bytes:
    b = bytearray(raw)
    b[offset] = value
    return bytes(b)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0x12, "only 1.1"),
        (1, 0xE1, "GET_MEASUREMENTS"),
        (2, 0x00, "signature"),
        (3, 0x01, "all measurements"),
        (36, 0x10, "reserved bits"),
        (37, 0x10, "version"),
        (38, 0x61, "MEASUREMENTS"),
        (41, 0x00, "no measurement blocks"),
        (44, 0xFF, "runs past"),
        (42, 0xFF, "signature after its opaque data"),
    ],
)
def test_header_fields_are_checked(offset: int, value: int, message: str) -> None:
    with pytest.raises(QuoteError, match=message):
        parse_spdm_report(_edit(h100_report(), offset, value))


def test_lengths_are_exact() -> None:
    raw = h100_report()
    with pytest.raises(QuoteError, match="signature"):
        parse_spdm_report(raw + b"\0")
    with pytest.raises(QuoteError):
        parse_spdm_report(raw[:-1])
    with pytest.raises(QuoteError, match="too short"):
        parse_spdm_report(raw[:100])
    with pytest.raises(QuoteError, match="exceeds"):
        parse_spdm_report(raw + bytes(MAX_REPORT_SIZE))


def test_measurement_blocks_are_checked() -> None:
    raw = bytearray(h100_report())
    first = 37 + 8  # the first block's header
    raw[first] = raw[first + 4 + 51]  # block 1 takes block 2's index
    with pytest.raises(QuoteError, match="repeated"):
        parse_spdm_report(bytes(raw))
    raw = bytearray(h100_report())
    raw[first + 1] = 0x02  # not DMTF
    with pytest.raises(QuoteError, match="DMTF"):
        parse_spdm_report(bytes(raw))
    raw = bytearray(h100_report())
    raw[first + 5] = 47  # DMTF value size disagrees with the block size
    with pytest.raises(QuoteError, match="value size"):
        parse_spdm_report(bytes(raw))


def test_opaque_fields_are_checked() -> None:
    raw = h100_report()
    rec_len = int.from_bytes(raw[37 + 5 : 37 + 8], "little")
    opaque_at = 37 + 8 + rec_len + 32 + 2
    first_type = raw[opaque_at : opaque_at + 2]
    # Make the second field claim the first one's type: a duplicate.
    size0 = struct.unpack("<H", raw[opaque_at + 2 : opaque_at + 4])[0]
    second = opaque_at + 4 + size0
    dup = raw[:second] + first_type + raw[second + 2 :]
    with pytest.raises(QuoteError, match="twice"):
        parse_spdm_report(dup)
    # A field that runs past the opaque data.
    big = raw[: opaque_at + 2] + b"\xff\x0f" + raw[opaque_at + 4 :]
    with pytest.raises(QuoteError, match="runs past"):
        parse_spdm_report(big)


def test_gpu_nonce_is_the_documented_rule() -> None:
    claims = b"\xa1dnonceB\x01\x02"
    assert GPU_NONCE_DOMAIN == b"teeproxy/gpu-nonce/v1"
    assert gpu_nonce(claims) == hashlib.sha256(b"teeproxy/gpu-nonce/v1" + claims).digest()
    assert gpu_nonce(claims) != gpu_nonce(claims + b"\0")


def test_json_shape_round_trips() -> None:
    raw = data("ppcie_gpu_evidence_8xH100.json")
    assert looks_like_nvidia_evidence(raw)
    assert not looks_like_nvidia_evidence(h100_report())
    items = parse_nvidia_evidence_json(raw)
    again = parse_nvidia_evidence(json.loads(json.dumps(encode_nvidia_evidence(items))))
    assert again == items


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "list"),
        ([], "list"),
        (["x"], "object"),
        ([{"arch": "AMPERE", "evidence": "", "certificate": ""}], "unknown arch"),
        ([{"arch": "HOPPER", "evidence": "!!", "certificate": ""}], "base64"),
        ([{"arch": "HOPPER", "evidence": 5, "certificate": ""}], "base64 string"),
        ([{"arch": "HOPPER", "evidence": "", "certificate": "", "nonce": "zz"}], "nonce"),
        ([{"arch": "HOPPER", "evidence": "", "certificate": "", "nonce": "00"}], "32 bytes"),
        ([{"arch": "HOPPER", "evidence": "A" * 20000, "certificate": ""}], "longer"),
        ([{"arch": "LS10", "evidence": "", "certificate": ""}] * 65, "more than"),
    ],
)
def test_json_shape_is_strict(doc: object, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        parse_nvidia_evidence(doc)


def test_json_size_is_capped_before_decoding() -> None:
    with pytest.raises(EvidenceError, match="exceeds"):
        parse_nvidia_evidence_json(b"[" + b" " * MAX_EVIDENCE_JSON + b"]")
    with pytest.raises(EvidenceError, match="not JSON"):
        parse_nvidia_evidence_json(b"[{")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_real_reports_fail_only_with_quote_error(d: st.DataObject) -> None:
    raw = bytearray(h100_report() if d.draw(st.booleans()) else ppcie_switches()[0].report)
    for _ in range(d.draw(st.integers(1, 4))):
        raw[d.draw(st.integers(0, len(raw) - 1))] = d.draw(st.integers(0, 255))
    cut = d.draw(st.integers(0, len(raw)))
    blob = bytes(raw[:cut]) if d.draw(st.booleans()) else bytes(raw)
    try:
        r = parse_spdm_report(blob)
    except QuoteError:
        return
    # A report that parses is safe to read: no accessor fails later.
    assert r.summary()["measurement_blocks"] == len(r.measurements)
    assert all(len(p) == 8 for p in r.pdis() + r.switch_gpu_pdis())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(blob: bytes) -> None:
    with contextlib.suppress(QuoteError):
        parse_spdm_report(blob)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
        max_leaves=20,
    )
)
def test_fuzz_json_documents(doc: object) -> None:
    with contextlib.suppress(EvidenceError):
        parse_nvidia_evidence(doc)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["arch", "evidence", "certificate", "nonce"]), st.text(max_size=40))
def test_fuzz_fields_of_a_real_item(key: str, value: str) -> None:
    item = json.loads(data("ppcie_switch_evidence.json"))[0]
    item[key] = value
    try:
        (ev,) = parse_nvidia_evidence([item])
    except EvidenceError:
        return
    assert ev.report == base64.b64decode(item["evidence"])


def test_an_nvattest_result_is_described_not_parsed_as_evidence() -> None:
    d = describe_nvattest_result(data("dstack_gpu_attestation_h100.json"))
    assert d is not None and d["eat_alg"] == "none" and d["result_code"] == 0
    assert d["devices"][0]["hwmodel"] == "GH100 A01 GSP BROM"
    assert describe_nvattest_result(data("ppcie_switch_evidence.json")) is None
    assert describe_nvattest_result(b'{"claims": [{}]}') is None
    assert describe_nvattest_result(b"{") is None
