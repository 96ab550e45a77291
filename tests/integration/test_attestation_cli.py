"""``teeproxy measure``, ``verify-quote`` and ``verify-cert`` on real vectors and files.

In process through ``proxy.cli.main`` (the same argument parsing as the installed command);
exit codes and JSON are the interface under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import measurement_id
from proxy.cli.main import main
from tests.helpers.attest import DATA, DEV_KEY, T_SGX, T_TDX, make_ratls


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    rc = main(list(args))
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip().startswith("{") else {"text": out}


def test_measure(capsys: pytest.CaptureFixture[str]) -> None:
    q = str(DATA / "tdx_quote")
    rc = main(["measure", q])
    text = capsys.readouterr().out.strip()
    expected = (
        "0x" + measurement_id(parse_quote((DATA / "tdx_quote").read_bytes()).measurement).hex()
    )
    assert (rc, text) == (0, expected)
    rc, doc = _run(capsys, "measure", str(DATA / "sgx_quote"), "--json")
    assert rc == 0 and doc["tee"] == "sgx" and len(str(doc["mr_enclave"])) == 64


def test_measure_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "q"
    bad.write_bytes(b"\x04\x00\x02\x00" + bytes(10))
    assert main(["measure", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_verify_quote_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    tdx = [
        "verify-quote",
        str(DATA / "tdx_quote"),
        "--collateral",
        str(DATA / "tdx_quote_collateral.json"),
    ]
    rc, doc = _run(capsys, *tdx, "--at", str(T_TDX), "--any-measurement", "--json")
    assert rc == 0 and doc["status"] == "UpToDate" and doc["tee"] == "tdx"
    rc, doc = _run(capsys, *tdx, "--json", "--any-measurement")  # today: collateral expired
    assert rc == 1 and [f["reason"] for f in doc["failures"]] == ["collateral-expired"]
    sgx = [
        "verify-quote",
        str(DATA / "sgx_quote"),
        "--collateral",
        str(DATA / "sgx_quote_collateral.json"),
    ]
    rc, doc = _run(capsys, *sgx, "--at", str(T_SGX), "--any-measurement", "--json")
    assert rc == 1 and doc["status"] == "ConfigurationAndSWHardeningNeeded"
    rc, doc = _run(
        capsys,
        *sgx,
        "--at",
        str(T_SGX),
        "--any-measurement",
        "--json",
        "--accept-status",
        "ConfigurationAndSWHardeningNeeded",
    )
    assert rc == 0 and doc["advisories"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert main([*sgx, "--at", str(T_SGX), "--accept-status", "Bogus"]) == 2


def test_verify_cert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    der, _ = make_ratls()
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    cert = tmp_path / "ratls.pem"
    cert.write_bytes(pem)
    key = tmp_path / "dev.pub.pem"
    key.write_bytes(
        DEV_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rc, doc = _run(capsys, "verify-cert", str(cert), "--json", "--any-measurement")
    assert rc == 1 and doc["binding"] is True
    rc, doc = _run(
        capsys, "verify-cert", str(cert), "--json", "--trust-dev-key", str(key), "--any-measurement"
    )
    assert rc == 0 and doc["trusted"] and doc["format"] == "tcg-cmw"
    rc, doc = _run(capsys, "verify-cert", str(cert), "--trust-dev-key", str(key))
    assert rc == 1 and "no-measurement-policy" in str(doc["text"])
    garbage = tmp_path / "g.pem"
    garbage.write_bytes(b"not a certificate")
    rc, doc = _run(capsys, "verify-cert", str(garbage), "--json", "--any-measurement")
    assert rc == 1 and doc["failures"][0]["reason"] == "cert-malformed"


# Other producers' real certificates (tests/data/ratls/*/README.txt), through the CLI as a
# client runs it, inside each certificate's validity window.
REAL = Path(__file__).resolve().parents[1] / "data" / "ratls"


@pytest.mark.parametrize(
    ("name", "at", "fmt", "rule", "reasons"),
    [
        (
            "gramine/ccc-interop-gramine-cert.pem",
            "1700000000",
            "tcg-cmw",
            "claims-sha256",
            {"collateral-missing", "debug"},
        ),
        (
            "intel-sgxsdk/ccc-interop-intel-sgxsdk-cert.pem",
            "1700000000",
            "tcg-cmw",
            "claims-sha256",
            {"collateral-missing", "debug"},
        ),
        (
            "rats-tls/ccc-interop-rats-tls-cert.pem",
            "1680000000",
            "tcg-cmw",
            "claims-sha256",
            {"collateral-missing", "debug"},
        ),
        (
            "rats-tls-legacy/rats-tls-cert-sample.pem",
            "1700000000",
            "intel-legacy",
            "pkcs1-sha256",
            {"collateral-missing"},
        ),
        (
            "dstack/tdx-lite-v1-issue-cert.leaf.pem",
            "1700000000",
            "dstack",
            "dstack-sha512",
            {"collateral-missing"},
        ),
    ],
)
def test_verify_cert_of_other_producers(  # noqa: PLR0917  # pytest passes parameters by name
    capsys: pytest.CaptureFixture[str], name: str, at: str, fmt: str, rule: str, reasons: set[str]
) -> None:
    rc, v = _run(capsys, "verify-cert", str(REAL / name), "--any-measurement", "--at", at, "--json")
    assert rc == 1 and v["trusted"] is False
    assert (v["format"], v["binding_rule"], v["binding"]) == (fmt, rule, True)
    assert {f["reason"] for f in v["failures"]} == reasons
