"""dstack's ``app-compose.json``, its compose hash, the RTMR3 runtime events and MRCONFIGID.

Pure: no I/O. What dstack does (Dstack-TEE/dstack), and so what this module reproduces:

- The VMM writes the ``compose_file`` string its client sent, verbatim, as
  ``shared/app-compose.json`` (``vmm/src/app.rs``, ``prepare_work_dir``); the guest's
  ``dstack-util`` measures SHA-256 of those bytes (``system_setup.rs``,
  ``measure_app_info``: ``sha256_file``). The compose hash is therefore over the client's
  bytes. dstack's own client (``vmm/src/vmm-cli.py compose``) writes
  ``json.dumps(app_compose, indent=4, ensure_ascii=False)`` of a dict in a fixed key order
  (:func:`app_compose_json` reproduces it byte for byte, checked on a real deployment's
  file); the SDKs' ``get_compose_hash`` hash a sorted, compact form instead
  (:func:`sdk_compose_json`).
- RTMR3 runtime events, in the order ``dstack-util`` emits them: ``system-preparing``,
  ``app-id``, ``compose-hash``, [``gpu-policy-hash``], ``instance-id``, ``boot-mr-done``,
  [``mr-kms``], [``os-image-hash``] (both while keys come from a KMS), ``key-provider``,
  ``storage-fs``, ``system-ready``; then whatever the app emits. Each digest is
  :func:`certmgr.attest.dstack.event_digest`, folded by
  :func:`certmgr.attest.dstack.replay_rtmr`.
- Per deployment, not from the source: ``instance-id`` is SHA-256(random seed || app id)[:20]
  unless the compose says ``no_instance_id`` (then empty); ``app-id`` is the compose hash's
  first 20 bytes without a KMS, the on-chain app id with one; ``key-provider`` names the key
  provider and its key (``{"name":"kms","id":HEX}``); ``os-image-hash`` and ``mr-kms`` come
  from the KMS. :class:`DstackRuntime` takes them as inputs.
- MRCONFIGID version 1: ``0x01 || compose hash || 15 zero bytes`` (48 bytes).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from certmgr.attest.dstack import event_digest, replay_rtmr
from certmgr.errors import ReleaseError

__all__ = [
    "MAX_APP_COMPOSE",
    "AppComposeOptions",
    "DstackRuntime",
    "app_compose_json",
    "check_image_references",
    "compose_hash",
    "image_references",
    "key_provider_payload",
    "mr_config_id_v1",
    "predicted_rtmr3",
    "runtime_events",
    "sdk_compose_json",
]

MAX_APP_COMPOSE = 256 * 1024
"""dstack-util refuses a larger ``app-compose.json`` (``HostShared::copy``: 256 KiB)."""

_DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")
_IMAGE_LINE = re.compile(r"""^\s*(?:-\s+)?image\s*:\s*["']?([^\s"'#]+)""", re.MULTILINE)
_KEY_PROVIDERS = frozenset({"none", "kms", "local-sgx", "tpm"})


@dataclass(frozen=True, slots=True)
class AppComposeOptions:
    """The fields ``vmm-cli.py compose`` writes, in its order; booleans default off as its
    ``store_true`` flags do. ``key_provider``, ``pre_launch_script`` and ``swap_size`` are
    written only when set, as there."""

    name: str
    kms_enabled: bool = False
    gateway_enabled: bool = False
    local_key_provider_enabled: bool = False
    key_provider_id: str = ""
    public_logs: bool = False
    public_sysinfo: bool = False
    allowed_envs: tuple[str, ...] = ()
    no_instance_id: bool = False
    secure_time: bool = False
    key_provider: str = ""
    pre_launch_script: str = ""
    swap_size: int = 0


def _document(docker_compose: str, o: AppComposeOptions) -> dict[str, object]:
    doc: dict[str, object] = {
        "manifest_version": 2,
        "name": o.name,
        "runner": "docker-compose",
        "docker_compose_file": docker_compose,
        "kms_enabled": o.kms_enabled,
        "gateway_enabled": o.gateway_enabled,
        "local_key_provider_enabled": o.local_key_provider_enabled,
        "key_provider_id": o.key_provider_id,
        "public_logs": o.public_logs,
        "public_sysinfo": o.public_sysinfo,
        "allowed_envs": list(o.allowed_envs),
        "no_instance_id": o.no_instance_id,
        "secure_time": o.secure_time,
    }
    if o.key_provider:
        doc["key_provider"] = o.key_provider
    if o.pre_launch_script:
        doc["pre_launch_script"] = o.pre_launch_script
    if o.swap_size > 0:
        doc["swap_size"] = o.swap_size
    return doc


def app_compose_json(docker_compose: str, options: AppComposeOptions) -> bytes:
    """The ``app-compose.json`` bytes ``vmm-cli.py compose`` writes for this compose file."""
    out = json.dumps(_document(docker_compose, options), indent=4, ensure_ascii=False)
    data = out.encode("utf-8")
    if len(data) > MAX_APP_COMPOSE:
        raise ReleaseError(f"app-compose.json would be {len(data)} bytes; dstack takes 256 KiB")
    return data


def sdk_compose_json(app_compose: dict[str, object]) -> bytes:
    """The SDKs' normalized form (``get_compose_hash``): keys sorted at every level, compact,
    UTF-8, no ASCII escaping. Hash these bytes only if they are the bytes deployed."""
    return json.dumps(
        app_compose, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def compose_hash(app_compose: bytes) -> bytes:
    """SHA-256 of the exact ``app-compose.json`` bytes (what the ``compose-hash`` event holds)."""
    return hashlib.sha256(app_compose).digest()


def image_references(docker_compose: str) -> list[str]:
    """The ``image:`` values of a compose file (a line scan: one ``image:`` per line)."""
    return _IMAGE_LINE.findall(docker_compose)


def check_image_references(docker_compose: str, digest: str) -> None:
    """Every image is pinned by digest (``name@sha256:HEX``) and one of them is ``digest``.

    A tag is refused: what a tag names can change after the prediction, so the measured
    compose file would no longer say which image runs.
    """
    refs = image_references(docker_compose)
    if not refs:
        raise ReleaseError("the compose file names no image")
    loose = [r for r in refs if not _DIGEST_REF.search(r)]
    if loose:
        raise ReleaseError(f"images not pinned by digest (name@sha256:...): {', '.join(loose)}")
    if not any(r.endswith("@" + digest) for r in refs):
        raise ReleaseError(f"the compose file does not reference the image {digest}")


def key_provider_payload(name: str, key_id: str = "") -> bytes:
    """The ``key-provider`` event's payload: serde_json of dstack's ``KeyProviderInfo``
    (``{"name":..,"id":..}``, compact, in that order). ``name``: none, kms (``id`` = the
    KMS root key, hex), local-sgx (``id`` = the key provider enclave's MR, hex), tpm."""
    if name not in _KEY_PROVIDERS:
        raise ReleaseError(f"key provider {name!r}: expected one of {sorted(_KEY_PROVIDERS)}")
    return json.dumps({"name": name, "id": key_id}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class DstackRuntime:
    """What RTMR3 holds that the source does not fix (see the module docstring).

    ``app_id`` None means dstack's rule without a KMS: the compose hash's first 20 bytes.
    ``instance_id`` is empty exactly when the compose sets ``no_instance_id``.
    """

    key_provider: bytes
    instance_id: bytes = b""
    app_id: bytes | None = None
    storage_fs: str = "zfs"
    gpu_policy_hash: bytes | None = None
    mr_kms: bytes | None = None
    os_image_hash: bytes | None = None
    app_events: tuple[tuple[str, bytes], ...] = ()

    def validate(self) -> None:
        if self.app_id is not None and len(self.app_id) != 20:
            raise ReleaseError("app-id must be 20 bytes")
        if self.instance_id and len(self.instance_id) != 20:
            raise ReleaseError("instance-id must be 20 bytes (or empty: no_instance_id)")
        if self.storage_fs not in ("zfs", "ext4"):
            raise ReleaseError("storage-fs must be zfs or ext4")
        if self.os_image_hash is not None and len(self.os_image_hash) != 32:
            raise ReleaseError("os-image-hash must be 32 bytes")


def runtime_events(compose: bytes, rt: DstackRuntime) -> tuple[tuple[str, bytes], ...]:
    """The RTMR3 events, in dstack's order, for compose hash ``compose`` (32 bytes)."""
    if len(compose) != 32:
        raise ReleaseError("a compose hash is 32 bytes")
    rt.validate()
    app_id = compose[:20] if rt.app_id is None else rt.app_id
    events: list[tuple[str, bytes]] = [
        ("system-preparing", b""),
        ("app-id", app_id),
        ("compose-hash", compose),
    ]
    if rt.gpu_policy_hash is not None:
        events.append(("gpu-policy-hash", rt.gpu_policy_hash))
    events += [("instance-id", rt.instance_id), ("boot-mr-done", b"")]
    if rt.mr_kms is not None:
        events.append(("mr-kms", rt.mr_kms))
    if rt.os_image_hash is not None:
        events.append(("os-image-hash", rt.os_image_hash))
    events += [
        ("key-provider", rt.key_provider),
        ("storage-fs", rt.storage_fs.encode()),
        ("system-ready", b""),
        *rt.app_events,
    ]
    return tuple(events)


def predicted_rtmr3(events: Sequence[tuple[str, bytes]]) -> bytes:
    """RTMR3 after ``events``: the SHA-384 fold of their digests from 48 zero bytes."""
    return replay_rtmr([event_digest(name, payload) for name, payload in events])


def mr_config_id_v1(compose: bytes) -> bytes:
    """MRCONFIGID version 1 naming the compose hash (as :mod:`certmgr.attest.dstack` checks)."""
    if len(compose) != 32:
        raise ReleaseError("a compose hash is 32 bytes")
    return b"\x01" + compose + bytes(15)
