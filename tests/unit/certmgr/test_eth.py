"""certmgr.eth: importing and using the Ethereum stack keeps the process's recursion
limit (py_ecc and py-evm raise it to 100000 on import; deep recursion then overflows the C
stack instead of raising RecursionError)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_ethereum_stack_keeps_the_recursion_limit() -> None:
    """py_ecc / py-evm raise it to 100000 on import (then deep json.loads -> SIGSEGV)."""
    code = (
        "import sys; before = sys.getrecursionlimit()\n"
        "import certmgr.policy.rpc, certmgr.policy.devchain\n"
        "import proxy.control.governance, proxy.cli.policy\n"
        "import argparse; ns = argparse.Namespace(policy_command='create-keystore')\n"
        "import eth_account, web3\n"
        "print(before, sys.getrecursionlimit())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out[0] == out[1] == "1000"


def test_importing_and_using_receipt_keeps_the_recursion_limit() -> None:
    code = (
        "import sys; before = sys.getrecursionlimit()\n"
        "import hashlib, certmgr.receipts.signing as s, certmgr.receipts.verify as v\n"
        "e = hashlib.sha256(b'').digest()\n"
        "rec = s.sign_receipt(b'\\x01' * 32, request_sha256=e, response_sha256=e,"
        " model='', response_id='', timestamp=0, measurement_id=bytes(32))\n"
        "v.verify_receipt(rec, b'', b'', expected_signer=None, expected_measurement=None)\n"
        "print(before, sys.getrecursionlimit())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split()
    assert before == after == "1000"
