"""``teeproxy cluster status``: the human form of a replica's /cluster document."""

from __future__ import annotations

from proxy.cli.cluster import format_status
from proxy.cli.main import build_parser

DOC = {
    "enabled": True,
    "cluster": "fleet",
    "member_id": "r1",
    "measurement_id": "0x" + "11" * 32,
    "key_epoch": 2,
    "has_key": True,
    "rotations": 1,
    "renewer": None,
    "certificate_version": 3,
    "etcd_endpoint": "http://127.0.0.1:2379",
    "members": {
        "r1": {"measurement_id": "0x" + "11" * 32, "verdict": "self", "has_key": True},
        "r3": {
            "measurement_id": "0x" + "33" * 32,
            "verdict": "refused",
            "reasons": ["measurement 0x33.. is not allowed"],
            "has_key": False,
        },
    },
}


def test_format_status() -> None:
    out = format_status(DOC)
    assert "key epoch:    2 (held here: True, rotations here: 1)" in out
    assert "renewer:      -" in out
    assert f"  r3                   0x{'33' * 32}  refused, no key" in out
    assert "- measurement 0x33.. is not allowed" in out


def test_format_status_names_the_shared_signer_and_the_one_it_replaced() -> None:
    new, old = "0x" + "aa" * 20, "0x" + "bb" * 20
    signer = {"mode": "shared", "address": new, "version": 2, "epoch": 2, "previous": old}
    out = format_status({**DOC, "receipt_signer": signer})
    assert f"receipts:     shared signer {new} (version 2, sealed under epoch 2)" in out
    assert (
        f"replaced {old}: unregister it on chain (teeproxy policy unregister-signer {old})" in out
    )
    own = {"mode": "per-replica", "address": new}
    members = {
        "r2": {"measurement_id": "0x" + "22" * 32, "verdict": "trusted", "signing_address": old}
    }
    out = format_status({**DOC, "receipt_signer": own, "members": members})
    assert f"receipts:     per-replica, signer {new} (each member its own)" in out
    assert f"receipt signer {old}" in out


def test_format_status_tolerates_a_malformed_document() -> None:
    assert "members:" in format_status({"members": ["not", "a", "map"]})


def test_parser() -> None:
    args = build_parser().parse_args(["cluster", "status", "--admin", "127.0.0.1:9901"])
    assert args.admin == "127.0.0.1:9901" and not args.json
