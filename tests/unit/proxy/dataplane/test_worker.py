"""proxy.dataplane.worker: the Host header without its port; what a worker process loads
(memory inside a TEE is scarce: no quote verifier, and the receipt signing stack only with
a signing key)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import proxy
from proxy.dataplane.worker import host_without_port
from tests.helpers.simulated_tee import prepare_simulated

# Never in a worker: the quote verifier (dcap-qvl and certmgr's verification modules), and
# without a signing key the receipt signing stack (libsecp256k1, pycryptodome's keccak, cffi
# and pycparser) and the receipt issuer; Nitro's ctypes and dstack's msgpack unless used.
FORBIDDEN = (
    "dcap_qvl",
    "certmgr.attest.verify",
    "certmgr.attest.collateral",
    "certmgr.attest.dip1",
    "coincurve",
    "Crypto",
    "cffi",
    "pycparser",
    "certmgr.receipts",
    "proxy.dataplane.receipts",
    "ctypes",
    "msgpack",
    "csv",
    "zipfile",
)

_REPO = Path(proxy.__file__).resolve().parents[1]

# Prints the forbidden modules loaded so far (a module or any of its submodules).
_LOADED = (
    "import json, sys\n"
    "def loaded():\n"
    "    return sorted(f for f in FORBIDDEN if any(m == f or m.startswith(f + '.')"
    " for m in sys.modules))\n"
)


def _run(code: str, stdin: bytes = b"") -> list[object]:
    """Run ``code`` in a fresh interpreter on this checkout; its JSON lines, parsed."""
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    prelude = f"FORBIDDEN = {FORBIDDEN!r}\n" + _LOADED
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        cwd=_REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("", ""),
        ("[", ""),
        ("[]", ""),
    ],
)
def test_host_without_port(header: str, host: str) -> None:
    assert host_without_port(header) == host


def test_importing_the_worker_loads_no_verifier_and_no_signing_stack() -> None:
    (loaded,) = _run("import proxy.dataplane.worker\nprint(json.dumps(loaded()))\n")
    assert loaded == []


def test_a_worker_runtime_loads_the_signer_only_with_receipts_and_a_key(tmp_path: Path) -> None:
    """Receipts off, or on without an attestation provider: nothing of the signing stack;
    on with a prepared key: the key loads (so does libsecp256k1) and the issuer signs."""
    cfg, _ = prepare_simulated(tmp_path / "state")  # the supervisor's part: the key is sealed
    # No GPU evidence source: pynvml (and its ctypes) is what [attestation] gpu asks for.
    cfg = cfg.replace(attestation=dataclasses.replace(cfg.attestation, gpu="off"))
    off = cfg.replace(receipts=dataclasses.replace(cfg.receipts, enabled=False))
    no_tee = cfg.replace(attestation=dataclasses.replace(cfg.attestation, provider="none"))
    code = (
        "import asyncio, pickle\n"
        "from certmgr.keys import InsecureDevSealer\n"
        "from proxy.dataplane import worker\n"
        "from proxy.runtime import build_runtime\n"
        "cfgs = pickle.loads(sys.stdin.buffer.read())\n"
        "for cfg in cfgs:\n"
        "    rt = build_runtime(cfg, prepare=False, sealer=InsecureDevSealer())\n"
        "    issuer = asyncio.run(worker._receipt_issuer(cfg, rt, ''))\n"
        "    print(json.dumps([rt.signing_address, issuer is not None, loaded()]))\n"
    )
    got = _run(code, pickle.dumps([off, no_tee, cfg]))
    assert got[0] == ["", False, []]
    assert got[1] == ["", False, []]
    address = (tmp_path / "state" / "signing" / "address").read_text().strip()
    assert got[2][:2] == [address, True]
    assert {"coincurve", "Crypto", "certmgr.receipts", "proxy.dataplane.receipts"} <= set(
        got[2][2]  # type: ignore[arg-type]
    )
    assert "dcap_qvl" not in got[2][2]  # type: ignore[operator]
