"""certmgr.release.dstack_compose: app-compose.json, compose hash and RTMR3 as dstack makes them.

Real evidence (each file's README names its source):
- tests/data/dstack-mpc: a deployment's ``tcb_info`` with its ``app-compose.json`` bytes,
  RTMR3 and runtime events (local key provider, ``no_instance_id``);
- tests/data/dstack/tdx-lite-getquote.json: a real TDX quote and event log (KMS);
- tests/data/ratls/dstack: a v0 certificate's attestation (key provider none, with a
  ``gpu-policy-hash`` event).
The dstack SDKs' published compose-hash values check the SDK form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certmgr.attest import dstack
from certmgr.attest.intel import parse_quote
from certmgr.errors import ReleaseError
from certmgr.release import dstack_compose as dc
from tests.helpers.attest import ratls_artifact

DATA = Path(__file__).resolve().parents[3] / "data"
MPC = json.loads((DATA / "dstack-mpc" / "tcb_info.imr3.json").read_text())
LITE = json.loads((DATA / "dstack" / "tdx-lite-getquote.json").read_text())
DIGEST = "sha256:" + "ab" * 32


def _mpc_events() -> list[tuple[str, bytes]]:
    return [(e["event"], bytes.fromhex(e["event_payload"])) for e in MPC["event_log"]]


def _options_of(doc: dict[str, Any]) -> dc.AppComposeOptions:
    return dc.AppComposeOptions(
        name=doc["name"],
        kms_enabled=doc["kms_enabled"],
        gateway_enabled=doc["gateway_enabled"],
        local_key_provider_enabled=doc["local_key_provider_enabled"],
        key_provider_id=doc["key_provider_id"],
        public_logs=doc["public_logs"],
        public_sysinfo=doc["public_sysinfo"],
        allowed_envs=tuple(doc["allowed_envs"]),
        no_instance_id=doc["no_instance_id"],
        secure_time=doc["secure_time"],
    )


def test_app_compose_is_byte_for_byte_the_deployed_one() -> None:
    """From the docker-compose text and the options, the exact bytes the CVM measured."""
    deployed = MPC["app_compose"].encode()
    doc = json.loads(deployed)
    built = dc.app_compose_json(doc["docker_compose_file"], _options_of(doc))
    assert built == deployed
    assert dc.compose_hash(built).hex() == MPC["compose_hash"]
    events = dict(_mpc_events())
    assert events["compose-hash"] == dc.compose_hash(built)


def test_rtmr3_predicted_from_the_compose_equals_the_deployments() -> None:
    compose = dc.compose_hash(MPC["app_compose"].encode())
    recorded = _mpc_events()
    key_provider = dict(recorded)["key-provider"]
    assert json.loads(key_provider)["name"] == "local-sgx"
    rt = dc.DstackRuntime(
        key_provider=dc.key_provider_payload("local-sgx", json.loads(key_provider)["id"]),
        app_events=(recorded[-1],),  # the app's own event after system-ready
    )
    events = dc.runtime_events(compose, rt)
    assert list(events) == recorded  # names, order and payloads, app-id = compose[:20]
    assert dc.predicted_rtmr3(events).hex() == MPC["rtmr3"]
    # Each event's digest is the one the guest logged.
    for (name, payload), logged in zip(events, MPC["event_log"], strict=True):
        assert dstack.event_digest(name, payload).hex() == logged["digest"]


def _lite_events() -> list[tuple[str, bytes]]:
    log = json.loads(LITE["event_log"])
    return [(e["event"], bytes.fromhex(e["event_payload"])) for e in log if e["imr"] == 3]


def test_real_quote_rtmr3_and_mrconfigid_from_the_compose_hash() -> None:
    """The real quote (KMS deployment): RTMR3 and MRCONFIGID predicted from its compose hash
    and the deployment's inputs (instance id, OS image hash, KMS key) are the quote's."""
    q = parse_quote(bytes.fromhex(LITE["quote"]))
    recorded = dict(_lite_events())
    compose = recorded["compose-hash"]
    rt = dc.DstackRuntime(
        key_provider=recorded["key-provider"],
        instance_id=recorded["instance-id"],
        os_image_hash=recorded["os-image-hash"],
        storage_fs="zfs",
    )
    events = dc.runtime_events(compose, rt)
    assert list(events) == _lite_events()
    assert dc.predicted_rtmr3(events) == q.measurement.rt_mr3
    assert dc.mr_config_id_v1(compose) == q.measurement.mr_config_id
    assert json.loads(recorded["key-provider"])["name"] == "kms"
    name, key = json.loads(recorded["key-provider"]).values()
    assert dc.key_provider_payload(name, key) == recorded["key-provider"]


def test_certificate_attestation_with_gpu_policy_event() -> None:
    """The v0 certificate's quote: the gpu-policy-hash event sits after compose-hash."""
    cert = x509.load_pem_x509_certificate(ratls_artifact("dstack/tdx-lite-v0-get-tls-key.pem"))
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(dstack.ATTESTATION_OID))
    att = dstack.decode_attestation(dstack.unwrap_octets(ext.value.value))  # type: ignore[attr-defined]
    q = parse_quote(att.quote)
    recorded = dict(att.runtime_events)
    rt = dc.DstackRuntime(
        key_provider=dc.key_provider_payload("none"),
        instance_id=recorded["instance-id"],
        gpu_policy_hash=recorded["gpu-policy-hash"],
    )
    events = dc.runtime_events(recorded["compose-hash"], rt)
    assert list(events) == list(att.runtime_events)
    assert dc.predicted_rtmr3(events) == q.measurement.rt_mr3


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # dstack sdk/python tests/test_get_compose_hash.py (the JS SDK's reference values)
        (
            {
                "runner": "docker-compose",
                "requirements": {"os_version": ">=0.6.0", "gpu_policy": {"rego": "package x"}},
            },
            "0eb176e27fed3e305de09e5e83fec2dacc87485eaa612b0164a2d4d0b289ccb3",
        ),
        (
            {
                "runner": "docker-compose",
                "docker_config": {"registry": "docker.io", "future_key": 1},
            },
            "37cd67d88435bdb727b3e240a9a0ff57b7bebbc17eacd573c3d4746aacd104f6",
        ),
    ],
)
def test_sdk_form_matches_the_sdks_reference_hashes(doc: dict[str, object], expected: str) -> None:
    assert dc.compose_hash(dc.sdk_compose_json(doc)).hex() == expected


COMPOSE = f"services:\n  proxy:\n    image: teeproxy@{DIGEST}\n"


def test_image_references_pinned_by_digest() -> None:
    dc.check_image_references(COMPOSE, DIGEST)
    with pytest.raises(ReleaseError, match="does not reference"):
        dc.check_image_references(COMPOSE, "sha256:" + "cd" * 32)
    with pytest.raises(ReleaseError, match="not pinned"):
        dc.check_image_references(COMPOSE + "  db:\n    image: 'postgres:16'\n", DIGEST)
    with pytest.raises(ReleaseError, match="names no image"):
        dc.check_image_references("services: {}\n", DIGEST)
    assert dc.image_references(MPC_COMPOSE) == [
        "nearone/mpc-launcher@sha256:1f54b55bad22c45067228a9262bc6377e393ca1a07edb64e691e80704f49b74e"
    ]


MPC_COMPOSE = json.loads(MPC["app_compose"])["docker_compose_file"]


def test_a_changed_image_changes_compose_hash_and_rtmr3() -> None:
    opts = dc.AppComposeOptions(name="teeproxy", no_instance_id=True)
    other = COMPOSE.replace(DIGEST, "sha256:" + "cd" * 32)
    a = dc.compose_hash(dc.app_compose_json(COMPOSE, opts))
    b = dc.compose_hash(dc.app_compose_json(other, opts))
    assert a != b
    rt = dc.DstackRuntime(key_provider=dc.key_provider_payload("none"))
    ra = dc.predicted_rtmr3(dc.runtime_events(a, rt))
    rb = dc.predicted_rtmr3(dc.runtime_events(b, rt))
    assert ra != rb


def test_bad_runtime_inputs_are_refused() -> None:
    compose = bytes(32)
    with pytest.raises(ReleaseError, match="instance-id"):
        dc.runtime_events(compose, dc.DstackRuntime(key_provider=b"{}", instance_id=b"x"))
    with pytest.raises(ReleaseError, match="app-id"):
        dc.runtime_events(compose, dc.DstackRuntime(key_provider=b"{}", app_id=b"x"))
    with pytest.raises(ReleaseError, match="storage-fs"):
        dc.runtime_events(compose, dc.DstackRuntime(key_provider=b"{}", storage_fs="btrfs"))
    with pytest.raises(ReleaseError, match="key provider"):
        dc.key_provider_payload("vault")
    with pytest.raises(ReleaseError, match="32 bytes"):
        dc.mr_config_id_v1(b"short")
    with pytest.raises(ReleaseError, match="256 KiB"):
        dc.app_compose_json("x" * dc.MAX_APP_COMPOSE, dc.AppComposeOptions(name="big"))
