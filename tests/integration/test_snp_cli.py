"""``teeproxy verify-quote`` on real SEV-SNP reports: the evidence kind is recognised from the
bytes, ``--collateral`` takes the endorsement certificates, one verdict shape for every TEE.

Vectors (tests/data/sev-snp/README.md): the go-sev-guest Milan report (v2, debug policy) and
the dstack Milan report (v3), each with the VCEK of its chip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "sev-snp"
TEEPROXY = [sys.executable, "-m", "proxy.cli"]
DSTACK_MEASUREMENT = (
    "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599"
    "847ff250dbffcd07e1ba639771d6f05d"
)


def _verify(*args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [*TEEPROXY, "verify-quote", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _reasons(verdict: dict[str, object]) -> set[str]:
    failures = verdict["failures"]
    assert isinstance(failures, list)
    return {f["reason"] for f in failures}


def test_dstack_report_with_its_vcek_is_up_to_date_and_trusted() -> None:
    rc, v = _verify(
        str(DATA / "dstack_sev_snp_report_raw.bin"),
        "--collateral",
        str(DATA / "dstack_sev_snp_vcek.pem"),
        "--snp-allow-smt",  # policy 0x30000: SMT allowed by the guest
        "--any-measurement",
    )
    assert rc == 0 and v["trusted"] is True
    assert v["tee"] == "sev-snp" and v["status"] == "UpToDate"
    assert v["measurement"] == DSTACK_MEASUREMENT
    assert v["report_data"] == b"attest-test-fixture-2026".ljust(64, b"\0").hex()
    assert v["failures"] == []


def test_smt_is_refused_unless_allowed() -> None:
    rc, v = _verify(
        str(DATA / "dstack_sev_snp_report_raw.bin"),
        "--collateral",
        str(DATA / "dstack_sev_snp_vcek.pem"),
        "--any-measurement",
    )
    assert rc == 1 and _reasons(v) == {"snp-policy"}


def test_without_collateral_the_report_is_unverified() -> None:
    rc, v = _verify(str(DATA / "dstack_sev_snp_report_raw.bin"), "--any-measurement")
    assert rc == 1 and v["status"] == "Unverified"
    assert _reasons(v) == {"unverified-tee"}


def test_a_flipped_byte_is_a_signature_failure(tmp_path: Path) -> None:
    raw = bytearray((DATA / "dstack_sev_snp_report_raw.bin").read_bytes())
    raw[0x90] ^= 0x01  # inside MEASUREMENT, under the signature
    bad = tmp_path / "report.bin"
    bad.write_bytes(bytes(raw))
    rc, v = _verify(
        str(bad),
        "--collateral",
        str(DATA / "dstack_sev_snp_vcek.pem"),
        "--snp-allow-smt",
        "--any-measurement",
    )
    assert rc == 1 and "snp-signature" in _reasons(v)


def test_a_genoa_chain_for_a_milan_vcek_is_a_chain_failure(tmp_path: Path) -> None:
    chain = tmp_path / "certs"
    chain.mkdir()
    shutil.copy(DATA / "dstack_sev_snp_vcek.pem", chain / "vcek.pem")
    shutil.copy(DATA / "ask_ark_genoa.pem", chain / "ask_ark.pem")
    rc, v = _verify(
        str(DATA / "dstack_sev_snp_report_raw.bin"),
        "--collateral",
        str(chain),
        "--snp-allow-smt",
        "--any-measurement",
    )
    assert rc == 1 and "snp-chain" in _reasons(v)


def test_the_debug_report_of_go_sev_guest_verifies_but_is_never_trusted() -> None:
    rc, v = _verify(
        str(DATA / "attestation.bin"),
        "--collateral",
        str(DATA / "vcek.testcer"),
        "--snp-allow-smt",
        "--any-measurement",
    )
    assert rc == 1 and v["status"] == "UpToDate"  # signature, chain and TCB check
    assert v["debug"] is True and _reasons(v) == {"debug"}
