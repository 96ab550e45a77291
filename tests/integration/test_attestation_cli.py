"""``teeproxy measure``, ``verify-quote`` and ``verify-cert`` on real vectors and files.

In process through ``proxy.cli.main`` (the same argument parsing as the installed command);
exit codes and JSON are the interface under test.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certmgr.attest.endorsements import (
    SNP_REPORT_TAG,
    IntelCollateral,
    encode_intel_endorsements,
)
from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import measurement_id
from proxy.cli.main import main
from tests.helpers.attest import (
    DATA,
    DEV_KEY,
    T_SGX,
    T_TDX,
    at,
    collateral_text,
    make_ratls,
    vector,
)
from tests.helpers.snp import T_DSTACK, dstack_cert_table, dstack_report, snp_cmw


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


# -- verify-cert with the collateral the certificate carries (offline, no PCCS, no KDS) -----


def _pem(der: bytes, path: Path) -> str:
    path.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    return str(path)


def _failures(doc: dict[str, Any]) -> set[str]:
    return {f["reason"] for f in doc["failures"]}


def test_verify_cert_uses_the_embedded_intel_collateral(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real TDX quote (its report_data binds other data: binding fails, honestly) in a
    certificate carrying the real collateral: the quote verifies UpToDate with nothing else."""
    value = encode_intel_endorsements(IntelCollateral.from_json(collateral_text("tdx_quote")))
    when = at(T_TDX) - dt.timedelta(minutes=5)
    der, _ = make_ratls(quote=vector("tdx_quote"), not_before=when, endorsements=value)
    cert = _pem(der, tmp_path / "tdx.pem")
    common = ["--at", str(T_TDX), "--any-measurement", "--json"]
    rc, doc = _run(capsys, "verify-cert", cert, *common)
    assert rc == 1 and doc["status"] == "UpToDate" and doc["tee"] == "tdx"
    assert doc["collateral_source"] == "certificate"
    assert doc["endorsements"]["kind"] == "intel"
    assert _failures(doc) == {"report-data", "report-data-padding"}
    rc, doc = _run(
        capsys,
        "verify-cert",
        cert,
        *common,
        "--collateral",
        str(DATA / "tdx_quote_collateral.json"),
    )
    assert doc["collateral_source"] == "argument" and doc["status"] == "UpToDate"
    der, _ = make_ratls(quote=vector("tdx_quote"), not_before=when)
    rc, doc = _run(capsys, "verify-cert", _pem(der, tmp_path / "bare.pem"), *common)
    assert rc == 1 and "collateral-missing" in _failures(doc) and doc["collateral_source"] is None
    # The human-readable form says where the collateral came from.
    assert main(["verify-cert", cert, "--at", str(T_TDX), "--any-measurement"]) == 1
    assert "collateral: certificate" in capsys.readouterr().out


def test_verify_cert_uses_the_embedded_snp_cert_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(T_DSTACK.timestamp())
    der, _ = make_ratls(
        quote=dstack_report(),
        not_before=at(now) - dt.timedelta(minutes=5),
        cmw=snp_cmw(dstack_report(), dstack_cert_table()),
    )
    cert = _pem(der, tmp_path / "snp.pem")
    args = ["verify-cert", cert, "--at", str(now), "--any-measurement", "--json"]
    rc, doc = _run(capsys, *args, "--snp-allow-smt")
    assert rc == 1 and doc["tee"] == "sev-snp" and doc["status"] == "UpToDate"
    assert doc["collateral_source"] == "certificate"
    assert _failures(doc) == {"report-data"}
    assert doc["sev_snp"]["product"] == "Milan"
    rc, doc = _run(capsys, *args)  # without --snp-allow-smt the guest policy is refused
    assert _failures(doc) == {"report-data", "snp-policy"}


def test_verify_cert_refuses_malformed_endorsements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "dev.pub.pem"
    key.write_bytes(
        DEV_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    trust = ["--trust-dev-key", str(key), "--any-measurement", "--json"]
    # A teeproxy-built certificate (simulated quote) with well-formed endorsements parses
    # and verifies (a simulated quote needs no collateral).
    snp_kind = cbor2.dumps(cbor2.CBORTag(SNP_REPORT_TAG, [1, dstack_cert_table()]))
    der, _ = make_ratls(
        endorsements=encode_intel_endorsements(
            IntelCollateral.from_json(collateral_text("tdx_quote"))
        )
    )
    rc, doc = _run(capsys, "verify-cert", _pem(der, tmp_path / "ok.pem"), *trust)
    assert rc == 0 and doc["trusted"] and doc["endorsements"]["kind"] == "intel"
    # Over the endorsements cap, inside the certificate cap (a DER file: as PEM the whole
    # certificate would already exceed 128 KiB).
    for name, value in (("junk", b"\x00\x01"), ("kind", snp_kind), ("big", b"\x5a" * 100_000)):
        der, _ = make_ratls(endorsements=value)
        (tmp_path / f"{name}.der").write_bytes(der)
        rc, doc = _run(capsys, "verify-cert", str(tmp_path / f"{name}.der"), *trust)
        assert rc == 1 and _failures(doc) == {"endorsements-malformed"}, name
    assert "too large" in str(doc["failures"])
