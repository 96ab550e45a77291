"""TEE sealing providers: the key that :class:`certmgr.keys.Sealer` encrypts stored keys under.

- ``gramine``: Gramine SGX exposes 128-bit sealing keys as files: reading
  ``/dev/attestation/keys/_sgx_mrenclave`` gives the key bound to this enclave's
  measurement (``_sgx_mrsigner``: bound to the signer, survives upgrades). Gramine docs,
  "Attestation and Secret Provisioning", section "Sealing keys".
- ``dstack``: the dstack guest agent derives per-application keys: ``POST /GetKey`` with
  ``{"path": ..., "purpose": ...}`` over the unix socket ``/var/run/dstack.sock`` answers
  ``{"key": "<hex>", "signature_chain": [...]}`` (dstack-sdk 0.5 ``get_key``). The key depends
  on the app's identity (compose hash) and the path, so it survives restarts and migrations
  of the same app and no other app can derive it.

Either raw key is stretched with HKDF-SHA256 (RFC 5869, info ``teeproxy-seal/<provider>``)
into the AES-256-GCM key of :class:`certmgr.keys._AESGCMSealer`. Key material is never
logged; answers are size-capped and length-checked before use. A configured provider that
is unavailable is an error (fail closed): there is no silent fallback to the development key.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certmgr.errors import SealingUnavailable
from certmgr.keys import InsecureDevSealer, Sealer, _AESGCMSealer
from certmgr.unixhttp import UnixHTTPConnection

__all__ = ["DstackSealer", "GramineSealer", "SealingUnavailable", "make_sealer"]


_MAX_ANSWER = 64 * 1024


def _derive(raw: bytes, provider: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"teeproxy-seal/{provider}".encode()
    ).derive(raw)


class GramineSealer(_AESGCMSealer):
    """Sealing key from Gramine's ``/dev/attestation/keys/<name>`` (16 bytes)."""

    def __init__(self, key_path: str = "/dev/attestation/keys/_sgx_mrenclave") -> None:
        try:
            with Path(key_path).open("rb") as f:
                raw = f.read(17)
        except OSError as e:
            raise SealingUnavailable(f"gramine sealing key {key_path}: {e.strerror}") from e
        if len(raw) != 16:
            raise SealingUnavailable(f"gramine sealing key {key_path}: expected 16 bytes")
        provider = "gramine-" + Path(key_path).name.lstrip("_").replace("_", "-")
        super().__init__(_derive(raw, provider), provider)


class DstackSealer(_AESGCMSealer):
    """Sealing key from the dstack guest agent's ``GetKey`` (deterministic per app and path)."""

    PROVIDER = "dstack-getkey"

    def __init__(
        self,
        socket_path: str = "/var/run/dstack.sock",
        key_path: str = "teeproxy/sealing",
        timeout: float = 10.0,
    ) -> None:
        body = json.dumps({"path": key_path, "purpose": "seal"}).encode()
        conn = UnixHTTPConnection(socket_path, timeout)
        try:
            conn.request("POST", "/GetKey", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read(_MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as e:
            raise SealingUnavailable(f"dstack GetKey via {socket_path}: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise SealingUnavailable(f"dstack GetKey answered HTTP {resp.status}")
        if len(data) > _MAX_ANSWER:
            raise SealingUnavailable("dstack GetKey answer too large")
        try:
            raw = bytes.fromhex(json.loads(data)["key"])
        except (ValueError, KeyError, TypeError) as e:
            raise SealingUnavailable(f"dstack GetKey answer malformed: {type(e).__name__}") from e
        if len(raw) < 16:
            raise SealingUnavailable(f"dstack GetKey key too short ({len(raw)} bytes)")
        super().__init__(_derive(raw, f"{self.PROVIDER}:{key_path}"), self.PROVIDER)


PROVIDERS = ("insecure-development", "gramine", "dstack")


def make_sealer(
    provider: str,
    *,
    gramine_key_path: str = "/dev/attestation/keys/_sgx_mrenclave",
    dstack_socket: str = "/var/run/dstack.sock",
    dstack_key_path: str = "teeproxy/sealing",
    timeout: float = 10.0,
) -> Sealer:
    """The sealer for ``sealing.provider`` (blocking: reads a device or asks the agent)."""
    if provider == "gramine":
        return GramineSealer(gramine_key_path)
    if provider == "dstack":
        return DstackSealer(dstack_socket, dstack_key_path, timeout)
    if provider == "insecure-development":
        return InsecureDevSealer()
    raise ValueError(f"unknown sealing provider {provider!r}")
