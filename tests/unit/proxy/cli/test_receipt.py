"""proxy.cli.receipt: ``teeproxy receipt verify`` with ``--signer``: files in, exit code and
reason out.

In process through ``proxy.cli.main`` (the installed command's argument parsing). The
``--attest`` form against a served proxy is in tests/integration/test_attestation_receipts.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from certmgr.receipts.format import Receipt
from certmgr.receipts.signing import SigningKey, sign_receipt
from proxy.cli.main import main

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
MID = bytes(range(32))
REQUEST = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
RESPONSE = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"hello"}}]}'


def _receipt(key: SigningKey = KEY, mid: bytes = MID) -> Receipt:
    return sign_receipt(
        key,
        request_sha256=hashlib.sha256(REQUEST).digest(),
        response_sha256=hashlib.sha256(RESPONSE).digest(),
        model="m",
        response_id="chatcmpl-1",
        timestamp=1700000000,
        measurement_id=mid,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "request": tmp_path / "req.json",
        "response": tmp_path / "resp.json",
        "receipt": tmp_path / "receipt.json",
    }
    paths["request"].write_bytes(REQUEST)
    paths["response"].write_bytes(RESPONSE)
    paths["receipt"].write_bytes(_receipt().to_json() + b"\n")
    return paths


def _run(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], *extra: str, signer: str = ""
) -> tuple[int, dict[str, Any], str]:
    args = ["receipt", "verify", "--request", str(files["request"])]
    args += ["--response", str(files["response"]), "--json"]
    if not any(a.startswith("--receipt") for a in extra):
        args += ["--receipt", str(files["receipt"])]
    rc = main([*args, "--signer", signer or KEY.address_hex, *extra])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if out.out.strip() else {}, out.err


def test_valid_receipt_json_and_header(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, _ = _run(capsys, files, "--measurement", "0x" + MID.hex())
    assert rc == 0 and doc["valid"] is True and doc["reason"] is None
    assert doc["expected_signer"] == KEY.address_hex and doc["signer_source"] == "command line"
    assert doc["receipt"]["signer"] == KEY.address_hex
    rc, doc, _ = _run(capsys, files, "--receipt-header", _receipt().to_header())
    assert rc == 0 and doc["valid"]
    # Mixed-case (EIP-55) --signer is the same address.
    rc, _, _ = _run(capsys, files, signer="0x" + KEY.address.hex().upper())
    assert rc == 0


def test_text_output(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["receipt", "verify", "--request", str(files["request"])]
    args += ["--response", str(files["response"]), "--receipt", str(files["receipt"])]
    assert main([*args, "--signer", KEY.address_hex]) == 0
    assert capsys.readouterr().out.startswith("receipt:  VALID")
    assert main([*args, "--signer", OTHER.address_hex]) == 1
    assert "INVALID: receipt signer is not the expected signer" in capsys.readouterr().out


def _flip(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("target", "index", "reason"),
    [
        ("request", 5, "request body does not match the receipt's request hash"),
        ("request", -1, "request body does not match the receipt's request hash"),
        ("response", 0, "response body does not match the receipt's response hash"),
    ],
)
def test_one_flipped_body_byte_is_rejected(
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    target: str,
    index: int,
    reason: str,
) -> None:
    _flip(files[target], index)
    rc, doc, _ = _run(capsys, files)
    assert (rc, doc["valid"], doc["reason"]) == (1, False, reason)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        # One bit of r: either no point has that x, or the signature recovers to another key.
        ("signature", "signature does not"),
        ("model", "signature does not match the receipt's signer (receipt altered)"),
        ("responseId", "signature does not match the receipt's signer (receipt altered)"),
        ("timestamp", "signature does not match the receipt's signer (receipt altered)"),
        ("signer", "signature does not match the receipt's signer (receipt altered)"),
        ("requestHash", "request body does not match the receipt's request hash"),
        ("responseHash", "response body does not match the receipt's response hash"),
        ("measurementId", "receipt measurement id is not the expected measurement"),
    ],
)
def test_one_flipped_receipt_field_is_rejected(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], field: str, reason: str
) -> None:
    doc = json.loads(files["receipt"].read_bytes())
    value = doc[field]
    if isinstance(value, int):
        doc[field] = value + 1
    elif value.startswith("0x"):
        # Flip one bit of a middle byte (the signature's r, not v, so it stays well-formed).
        i = 2 + 2 * 10
        doc[field] = value[:i] + format(int(value[i : i + 2], 16) ^ 1, "02x") + value[i + 2 :]
    else:
        doc[field] = chr(ord(value[0]) ^ 1) + value[1:]
    files["receipt"].write_bytes(json.dumps(doc).encode())
    rc, out, _ = _run(capsys, files, "--measurement", "0x" + MID.hex())
    assert rc == 1 and out["valid"] is False
    if field == "signature":
        assert out["reason"] in (
            "signature does not recover to a public key",
            "signature does not match the receipt's signer (receipt altered)",
        )
    else:
        assert out["reason"] == reason


def test_flipped_header_byte_and_malformed_receipts(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    header = _receipt().to_header()
    i = 60  # inside the response hash
    flipped = header[:i] + ("A" if header[i] != "A" else "B") + header[i + 1 :]
    rc, doc, _ = _run(capsys, files, "--receipt-header", flipped)
    assert rc == 1 and doc["reason"] == "response body does not match the receipt's response hash"
    rc, doc, _ = _run(capsys, files, "--receipt-header", header + "=")
    assert rc == 1 and doc["reason"].startswith("malformed receipt: ")
    files["receipt"].write_bytes(b"{" + b" " * 5000 + b"}")
    rc, doc, _ = _run(capsys, files)
    assert rc == 1 and "at most 4096" in doc["reason"]


def test_wrong_signer_and_measurement(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, _ = _run(capsys, files, signer=OTHER.address_hex)
    assert (rc, doc["reason"]) == (1, "receipt signer is not the expected signer")
    rc, doc, _ = _run(capsys, files, "--measurement", "0x" + "ee" * 32)
    assert (rc, doc["reason"]) == (1, "receipt measurement id is not the expected measurement")
    # Signed by another key that claims to be KEY: the signature does not recover to it.
    forged = json.loads(_receipt(OTHER).to_json())
    forged["signer"] = KEY.address_hex
    files["receipt"].write_bytes(json.dumps(forged).encode())
    rc, doc, _ = _run(capsys, files)
    assert rc == 1 and "receipt altered" in doc["reason"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--signer", "0x1234"],
        ["--signer", "ab" * 20],
        ["--measurement", "0x" + "ab" * 31],
        ["--max-body-bytes", "10"],
        ["--max-body-bytes", "-1"],
    ],
)
def test_input_errors_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    args = ["receipt", "verify", "--request", str(files["request"])]
    args += ["--response", str(files["response"]), "--receipt", str(files["receipt"])]
    if extra[0] != "--signer":
        args += ["--signer", KEY.address_hex]
    assert main([*args, *extra]) == 2
    assert capsys.readouterr().err.startswith("teeproxy receipt verify: ")


def test_missing_file_and_body_cap(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    files["request"] = tmp_path / "nope"
    rc, _, err = _run(capsys, files)
    assert rc == 2 and "nope" in err
    files["request"] = tmp_path / "req.json"
    rc, _, _ = _run(capsys, files, "--max-body-bytes", str(len(RESPONSE)))
    assert rc == 0  # exactly at the cap is fine
    rc, _, err = _run(capsys, files, "--max-body-bytes", str(len(RESPONSE) - 1))
    assert rc == 2 and "larger than" in err


def test_signer_and_attest_are_exclusive(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["receipt", "verify", "--request", str(files["request"])]
    args += ["--response", str(files["response"]), "--receipt", str(files["receipt"])]
    with pytest.raises(SystemExit) as ei:
        main([*args, "--signer", KEY.address_hex, "--attest", "https://127.0.0.1:1"])
    assert ei.value.code == 2
    with pytest.raises(SystemExit):
        main(args)  # neither: the expected signer must come from somewhere
    capsys.readouterr()
