"""``teeproxy verify-quote`` on real NVIDIA GPU evidence: NVIDIA's JSON list shape is
recognised from the bytes, verdicts have the common shape with a ``gpus`` list, ``--at``
pins certificate and RIM validity, a loopback RIM service and OCSP responder stand in for
NVIDIA's (tests/data/nvidia/README.txt: source, commit and the expected results)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.nvidia import (
    DATA,
    H100_NONCE,
    PPCIE_NONCE,
    T_BEFORE_CHAIN,
    T_H100,
    T_PPCIE,
    T_RIM_EXPIRED,
    flip,
    h100_chain,
    h100_report,
)

TEEPROXY = [sys.executable, "-m", "proxy.cli"]
GPUS = str(DATA / "ppcie_gpu_evidence_8xH100.json")
SWITCHES = str(DATA / "ppcie_switch_evidence.json")


def _verify(*args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [*TEEPROXY, "verify-quote", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _reasons(v: dict[str, object]) -> set[str]:
    failures = v["failures"]
    assert isinstance(failures, list)
    return {f["reason"] for f in failures}


def _h100_file(tmp_path: Path, report: bytes | None = None) -> str:
    """The single H100 sample in NVIDIA's JSON list shape (upstream ships it as hex + PEM)."""
    item = {
        "arch": "HOPPER",
        "certificate": base64.b64encode(h100_chain()).decode(),
        "evidence": base64.b64encode(report or h100_report()).decode(),
        "nonce": H100_NONCE.hex(),
    }
    path = tmp_path / "h100.json"
    path.write_text(json.dumps([item]))
    return str(path)


def test_the_8_gpu_board_and_its_switches_verify_as_one_set() -> None:
    rc, v = _verify(
        GPUS, "--nvswitch-evidence", SWITCHES, "--at", str(T_PPCIE), "--any-measurement",
        "--gpu-nonce", PPCIE_NONCE.hex(),
    )  # fmt: skip
    assert rc == 0 and v["trusted"] is True
    assert v["tee"] == "nvidia-gpu" and v["status"] == "Verified" and v["binding"] is True
    gpus = v["gpus"]
    assert isinstance(gpus, list) and len(gpus) == 12
    assert [g["kind"] for g in gpus] == ["gpu"] * 8 + ["switch"] * 4
    assert all(g["trusted"] and g["nonce"] == PPCIE_NONCE.hex() for g in gpus)
    assert v["gpu_set"] == {
        "gpus": 8,
        "switches": 4,
        "topology": {"checked": True, "gpus": 8, "switches": 4},
    }


def test_without_rims_the_measurements_are_not_judged() -> None:
    rc, v = _verify(GPUS, "--at", str(T_PPCIE))
    assert rc == 1 and v["trusted"] is False
    assert v["status"] == "Verified"  # genuine and fresh, not judged
    assert _reasons(v) == {"gpu-measurements-unverified"}
    assert v["nonce_source"] == "evidence" and v["binding"] is False


def test_another_nonce_is_refused() -> None:
    rc, v = _verify(GPUS, "--at", str(T_PPCIE), "--any-measurement", "--gpu-nonce", "00" * 32)
    assert rc == 1 and _reasons(v) == {"gpu-nonce"} and v["status"] == "Invalid"


def test_the_single_h100_verifies_and_its_sample_rims_are_for_other_versions(
    tmp_path: Path,
) -> None:
    path = _h100_file(tmp_path)
    rc, v = _verify(path, "--at", str(T_H100), "--any-measurement")
    assert rc == 0 and v["trusted"] is True
    (g,) = v["gpus"]  # type: ignore[misc]
    assert g["driver_version"] == "550.90.07" and g["vbios_version"] == "96.00.9f.00.01"
    rc, v = _verify(path, "--at", str(T_H100), "--gpu-rim", str(DATA))
    assert rc == 1 and _reasons(v) == {"gpu-measurements-unverified"}
    (g,) = v["gpus"]  # type: ignore[misc]
    assert "rim_errors" not in g["rim"]  # NVIDIA's RIMs all verified at T_H100
    assert "driver 545.00" in v["failures"][0]["message"]  # type: ignore[index]


def test_expired_rim_signers_are_named_at_a_later_time(tmp_path: Path) -> None:
    rc, v = _verify(_h100_file(tmp_path), "--at", str(T_RIM_EXPIRED), "--gpu-rim", str(DATA))
    assert rc == 1
    (f,) = v["failures"]  # type: ignore[misc]
    assert f["reason"] == "gpu-measurements-unverified"
    assert "RIMs refused" in f["message"] and "HCC RIM L4 Signer" in f["message"]


def test_before_the_device_chain_was_valid_is_refused(tmp_path: Path) -> None:
    rc, v = _verify(_h100_file(tmp_path), "--at", str(T_BEFORE_CHAIN), "--any-measurement")
    assert rc == 1 and _reasons(v) == {"gpu-validity"} and v["status"] == "Invalid"


@pytest.mark.parametrize("offset", [10, 37 + 8 + 100, 4117 - 3])
def test_a_flipped_byte_is_a_signature_failure(tmp_path: Path, offset: int) -> None:
    path = _h100_file(tmp_path, flip(h100_report(), offset))
    rc, v = _verify(path, "--at", str(T_H100), "--any-measurement")
    assert rc == 1 and "gpu-signature" in _reasons(v)
    sig = [f for f in v["failures"] if f["reason"] == "gpu-signature"]  # type: ignore[union-attr]
    assert "signature does not verify" in sig[0]["message"]


def test_ocsp_require_fails_offline_and_off_does_not_look(tmp_path: Path) -> None:
    path = _h100_file(tmp_path)
    rc, v = _verify(
        path, "--at", str(T_H100), "--any-measurement", "--ocsp", "require",
        "--ocsp-url", "http://127.0.0.1:9/",
    )  # fmt: skip
    assert rc == 1 and _reasons(v) == {"gpu-ocsp"}
    assert len(v["failures"]) == 3  # BROM, Provisioner ICA, Identity  # type: ignore[arg-type]
    rc, v = _verify(path, "--at", str(T_H100), "--any-measurement", "--ocsp", "off")
    assert rc == 0 and v["gpus"][0]["ocsp"] == {"mode": "off"}  # type: ignore[index]
    rc, v = _verify(path, "--at", str(T_H100), "--any-measurement")  # default: cached
    assert rc == 0 and v["gpus"][0]["ocsp"]["GH100 A01 GSP BROM"] == "missing"  # type: ignore[index]


def test_malformed_gpu_evidence_is_a_verdict(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"arch": "HOPPER", "evidence": "!!", "certificate": ""}]))
    rc, v = _verify(str(path))
    assert rc == 1 and _reasons(v) == {"gpu-evidence-malformed"}


def test_bad_gpu_nonce_is_a_usage_error() -> None:
    done = subprocess.run(
        [*TEEPROXY, "verify-quote", GPUS, "--gpu-nonce", "abcd"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--gpu-nonce" in done.stderr


def test_an_nvattest_result_is_reported_as_not_evidence() -> None:
    # dstack's fixture: the output of NVIDIA's verifier (claims 3.0, detached EAT with alg
    # "none"), not evidence: read to say so, never trusted.
    rc, v = _verify(str(DATA / "dstack_gpu_attestation_h100.json"))
    assert rc == 1 and v["trusted"] is False and v["status"] == "NotEvidence"
    assert _reasons(v) == {"gpu-evidence-malformed"}
    result = v["nvattest_result"]
    assert result["eat_alg"] == "none" and result["claims_version"] == "3.0"  # type: ignore[index]
    (device,) = result["devices"]  # type: ignore[index]
    assert device["x-nvidia-gpu-driver-version"] == "580.159.03"
    assert device["x-nvidia-gpu-vbios-version"] == "96.00.D9.00.01"
    assert device["eat_nonce"] == "11" * 32 and device["measres"] == "success"
