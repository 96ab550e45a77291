"""``teeproxy policy register-signer`` for a set of replicas: what gets registered (pure)."""

from __future__ import annotations

import pytest

from proxy.cli.main import build_parser
from proxy.cli.policy import plan_registrations
from proxy.errors import UsageError

A, B = b"\xaa" * 20, b"\xbb" * 20
M1, M2 = b"\x01" * 32, b"\x02" * 32


def test_a_shared_key_is_registered_once() -> None:
    good = {"r1": (A, M1), "r2": (A, M1), "r3": (A, M1)}
    assert plan_registrations(good, [], 3, shared=True) == [(A, M1)]


def test_per_replica_keys_are_registered_one_each() -> None:
    good = {"r1": (A, M1), "r2": (B, M2)}
    assert plan_registrations(good, [], 2, shared=False) == [(A, M1), (B, M2)]


def test_one_failed_replica_registers_nothing_and_names_it() -> None:
    with pytest.raises(UsageError) as e:
        plan_registrations({"r1": (A, M1)}, ["r2: NOT TRUSTED"], 2, shared=False)
    assert "1 of 2 replicas" in str(e.value) and "nothing registered" in str(e.value)
    assert "  - r2: NOT TRUSTED" in str(e.value)


def test_a_shared_key_reported_as_two_addresses_is_refused() -> None:
    with pytest.raises(UsageError, match="attest 2 addresses"):
        plan_registrations({"r1": (A, M1), "r2": (B, M1)}, [], 2, shared=True)


def test_one_signer_for_two_measurements_is_refused() -> None:
    with pytest.raises(UsageError, match="attested for 2 measurements"):
        plan_registrations({"r1": (A, M1), "r2": (A, M2)}, [], 2, shared=False)


def test_parser_takes_urls_or_cluster_members() -> None:
    args = build_parser().parse_args(
        ["policy", "register-signer", "https://a:1", "https://b:1", "--shared"]
    )
    assert args.urls == ["https://a:1", "https://b:1"] and args.shared
    args = build_parser().parse_args(
        [
            "policy",
            "register-signer",
            "--cluster-members",
            "--etcd",
            "http://e:2379",
            "--cluster",
            "f",
        ]
    )
    assert args.cluster_members and args.etcd == ["http://e:2379"] and args.cluster == "f"
