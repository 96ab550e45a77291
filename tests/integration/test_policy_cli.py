"""``teeproxy policy ...`` against anvil: keystores, every subcommand, dry runs, decoded reverts.

The CLI runs in a thread through ``proxy.cli.main`` (the installed command's own parser); the
keystore password comes from the environment, as an operator's script would pass it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.cli.main import main
from tests.helpers.chain import AnvilFactory, fund

PASSWORD = "operator-password"
MID = "0x" + "a1" * 32
MID2 = "0x" + "b2" * 32


@dataclass
class Cli:
    capsys: pytest.CaptureFixture[str]
    rpc: str
    address: str = ""

    async def __call__(self, *args: str, keystore: Path | None = None) -> tuple[int, str, str]:
        argv = ["policy", "--rpc", self.rpc]
        if self.address:
            argv += ["--address", self.address]
        if keystore is not None:
            argv += ["--keystore", str(keystore)]
        rc = await asyncio.to_thread(main, [*argv, *args])
        out, err = self.capsys.readouterr()
        return rc, out, err


async def keystore(path: Path, capsys: pytest.CaptureFixture[str], rpc: str) -> tuple[Path, str]:
    rc = await asyncio.to_thread(main, ["policy", "create-keystore", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    address = out.split("address ")[1].strip()
    await fund(rpc, address)
    return path, address


async def test_operator_workflow(
    anvil: AnvilFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEEPROXY_POLICY_PASSWORD", PASSWORD)
    node = await anvil()
    owner, owner_addr = await keystore(tmp_path / "owner.json", capsys, node.url)
    other, other_addr = await keystore(tmp_path / "other.json", capsys, node.url)
    stored = json.loads(await asyncio.to_thread(owner.read_text))
    assert "crypto" in stored and PASSWORD not in json.dumps(stored)  # encrypted keystore
    assert (await asyncio.to_thread(owner.stat)).st_mode & 0o077 == 0
    # A keystore is never overwritten.
    assert await asyncio.to_thread(main, ["policy", "create-keystore", str(owner)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err

    cli = Cli(capsys, node.url)
    rc, out, _ = await cli("deploy", keystore=owner)
    assert rc == 0
    cli.address = out.split("contract:")[1].split()[0]
    assert "version:     0" in out and "transaction: 0x" in out

    rc, out, _ = await cli("allow", MID, "--label", "v1", keystore=owner)
    assert rc == 0 and "version:     1" in out

    # --dry-run prints the unsigned transaction and changes nothing.
    rc, out, _ = await cli("--dry-run", "revoke", MID, keystore=owner)
    assert rc == 0
    doc = json.loads(out)
    assert doc["function"] == "revoke"
    assert doc["transaction"]["to"] == cli.address
    assert doc["transaction"]["from"] == owner_addr
    assert doc["transaction"]["data"].endswith("a1" * 32)
    rc, out, _ = await cli("status", MID)
    assert rc == 0 and "ALLOWED (v1)" in out and "version:       1" in out

    # Reverts are shown with the decoded custom error, and nothing is sent.
    rc, _, err = await cli("allow", MID2, keystore=other)
    assert rc == 1 and f"NotOwner({other_addr})" in err
    rc, _, err = await cli("allow", MID, keystore=owner)
    assert rc == 1 and f"AlreadyAllowed({MID})" in err
    rc, _, err = await cli("revoke", MID2, keystore=owner)
    assert rc == 1 and f"NotAllowed({MID2})" in err

    rc, out, _ = await cli("replace", MID, MID2, "--label", "v2", keystore=owner)
    assert rc == 0 and "version:     2" in out
    rc, out, _ = await cli("list")
    assert MID2 in out and MID not in out and "v2" in out
    rc, out, _ = await cli("status", MID)
    assert rc == 3 and "NOT ALLOWED" in out

    # Guardian: may revoke, nothing else.
    rc, out, _ = await cli("set-guardian", other_addr, keystore=owner)
    assert rc == 0 and "version:     3" in out
    rc, _, err = await cli("allow", MID, keystore=other)
    assert rc == 1 and f"NotOwner({other_addr})" in err
    rc, out, _ = await cli("revoke", MID2, keystore=other)
    assert rc == 0 and "version:     4" in out

    # Two-step ownership transfer.
    rc, _, err = await cli("accept-ownership", keystore=other)
    assert rc == 1 and f"NotPendingOwner({other_addr})" in err
    rc, out, _ = await cli("transfer-ownership", other_addr, keystore=owner)
    assert rc == 0
    rc, out, _ = await cli("status")
    assert f"pending owner: {other_addr}" in out and f"owner:         {owner_addr}" in out
    rc, out, _ = await cli("accept-ownership", keystore=other)
    assert rc == 0 and "version:     6" in out
    rc, out, _ = await cli("status")
    assert f"owner:         {other_addr}" in out and "pending owner: -" in out


async def test_keystore_password_handling(
    anvil: AnvilFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = await anvil()
    monkeypatch.setenv("OPS_PW", PASSWORD)
    rc = await asyncio.to_thread(
        main, ["policy", "--password-env", "OPS_PW", "create-keystore", str(tmp_path / "k.json")]
    )
    assert rc == 0
    capsys.readouterr()
    cli = Cli(capsys, node.url, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    monkeypatch.setenv("TEEPROXY_POLICY_PASSWORD", "wrong password")
    rc, _, err = await cli("revoke", MID, keystore=tmp_path / "k.json")
    assert rc == 1 and "cannot decrypt keystore" in err
    # No variable and no terminal: a clear error, never a hang on a prompt.
    monkeypatch.delenv("TEEPROXY_POLICY_PASSWORD")
    rc, _, err = await cli("revoke", MID, keystore=tmp_path / "k.json")
    assert rc == 1 and "set TEEPROXY_POLICY_PASSWORD" in err
    rc, _, err = await cli("revoke", MID)
    assert rc == 1 and "--keystore is required" in err
    rc, _, err = await cli("revoke", "0x1234", keystore=tmp_path / "k.json")
    assert rc == 1 and "32 bytes" in err


def test_register_signer_timeouts_do_not_collide() -> None:
    """``policy --timeout`` (transaction wait) and ``register-signer --timeout`` (the
    attestation connection, an option shared with ``teeproxy verify``) are separate."""
    from proxy.cli.main import build_parser

    args = build_parser().parse_args(
        ["policy", "--timeout", "7", "register-signer", "https://h:1", "--timeout", "3"]
    )
    assert (args.tx_timeout, args.timeout) == (7.0, 3.0)
    assert args.no_nonce is False  # registration always checks fresh evidence
    args = build_parser().parse_args(["policy", "register-signer", "https://h:1"])
    assert (args.tx_timeout, args.timeout) == (120.0, 10.0)
