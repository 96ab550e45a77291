"""certmgr.attest.cmw: the RFC 9999 CMW extension with a Veraison TSM report, both ways.

The encoding is checked byte by byte against the specifications (RFC 9999's record
``[type, value, ind]`` inside a DER OCTET STRING, as veraison/cmw ``x509.go`` wraps it; the
TSM report map of veraison/ratsd ``tokens/tsm-report.go``), decoded here with cbor2 and by
hand, not with the module under test; the JSON forms are built by hand from the same texts.
"""

from __future__ import annotations

import base64
import contextlib
import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.cmw import (
    CMW_OID,
    MAX_CMW_SIZE,
    TSM_REPORT_CBOR,
    TSM_REPORT_JSON,
    TsmReport,
    decode_extension,
    encode_extension,
)
from certmgr.errors import RaTlsError
from tests.helpers.snp import dstack_cert_table, dstack_report

REPORT = TsmReport("sev_guest", dstack_report(), dstack_cert_table())


def _octets(data: bytes) -> bytes:
    n = len(data)
    head = bytes([n]) if n < 0x80 else bytes([0x82]) + n.to_bytes(2, "big")
    return b"\x04" + head + data


def _utf8(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    head = bytes([n]) if n < 0x80 else bytes([0x82]) + n.to_bytes(2, "big")
    return b"\x0c" + head + data


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_oid_is_id_pe_cmw() -> None:
    assert CMW_OID == "1.3.6.1.5.5.7.1.35"  # id-pe 35 (RFC 9999)


def test_encoding_is_the_specified_record() -> None:
    value = encode_extension(REPORT)
    assert value[0] == 0x04 and value[1] == 0x82  # OCTET STRING, two length bytes
    assert int.from_bytes(value[2:4], "big") == len(value) - 4
    record = cbor2.loads(value[4:])
    assert record[0] == "application/vnd.veraison.tsm-report+cbor"
    assert record[2] == 4  # RFC 9999 indicator: evidence
    tsm = cbor2.loads(record[1])
    assert tsm == {
        "provider": "sev_guest",  # text, as ratsd's Go code writes it
        "outblob": dstack_report(),
        "auxblob": dstack_cert_table(),
    }
    assert decode_extension(value) == REPORT


def test_reads_the_json_form_and_a_byte_string_provider() -> None:
    message = json.dumps(
        {
            "provider": "sev_guest",
            "outblob": _b64url(REPORT.outblob),
            "auxblob": _b64url(REPORT.auxblob),
        }
    ).encode()
    json_record = json.dumps([TSM_REPORT_JSON, _b64url(message), 4])
    assert decode_extension(_utf8(json_record)) == REPORT
    # JSON record around the CBOR TSM report.
    tsm_cbor = cbor2.dumps({"provider": "sev_guest", "outblob": REPORT.outblob})
    record = json.dumps([TSM_REPORT_CBOR, _b64url(tsm_cbor)])
    assert decode_extension(_utf8(record)) == TsmReport("sev_guest", REPORT.outblob)
    # The CDDL's byte-string provider.
    tsm = cbor2.dumps({"provider": b"sev_guest", "outblob": b"r"})
    assert decode_extension(_octets(cbor2.dumps([TSM_REPORT_CBOR, tsm]))).provider == "sev_guest"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\x30\x00", "neither OCTET STRING nor UTF8String"),
        (_octets(b"\xff"), "malformed CBOR"),
        (_octets(cbor2.dumps({"evidence": [TSM_REPORT_CBOR, b"x"]})), "no collection"),
        (_octets(cbor2.dumps([TSM_REPORT_CBOR, "text"])), "not a byte string"),
        (_octets(cbor2.dumps([TSM_REPORT_CBOR, b"x", 2])), "not marked as evidence"),
        (_octets(cbor2.dumps(["application/eat+cwt", b"x", 4])), "is not a TSM report"),
        (_octets(cbor2.dumps([TSM_REPORT_CBOR, cbor2.dumps({"outblob": b"r"})])), "no provider"),
        (_octets(cbor2.dumps([TSM_REPORT_CBOR, cbor2.dumps({"provider": "p"})])), "no outblob"),
        (
            _octets(cbor2.dumps([TSM_REPORT_CBOR, cbor2.dumps({"provider": "p", "x": 1})])),
            "unknown keys",
        ),
        (
            _octets(
                cbor2.dumps([TSM_REPORT_CBOR, cbor2.dumps({"provider": "p", "outblob": "text"})])
            ),
            "not a byte string",
        ),
        (_utf8("[1,"), "malformed JSON"),
        (_utf8(json.dumps([TSM_REPORT_JSON, "!!"])), "bad base64url|malformed JSON"),
        (_octets(b"x") + b"\x00", "after the value"),
        (b"\x04\x82\x01\x00" + bytes(3), "runs past"),
    ],
)
def test_malformed_is_refused_with_a_reason(value: bytes, message: str) -> None:
    with pytest.raises(RaTlsError, match=message):
        decode_extension(value)


def test_size_is_capped_before_decoding() -> None:
    with pytest.raises(RaTlsError, match="too large"):
        decode_extension(b"\x04" + bytes(MAX_CMW_SIZE))
    with pytest.raises(RaTlsError, match="too large"):
        encode_extension(TsmReport("sev_guest", bytes(MAX_CMW_SIZE)))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzzed_values_raise_only_ratls_error(data: st.DataObject) -> None:
    base = bytearray(encode_extension(REPORT))
    for _ in range(data.draw(st.integers(1, 8))):
        base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    with contextlib.suppress(RaTlsError):
        decode_extension(bytes(base[:cut]))
