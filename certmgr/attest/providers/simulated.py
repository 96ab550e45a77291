"""The simulated provider: quotes in the TDX layout, signed by a development key.

INSECURE, for development and the demo only (the format: :mod:`certmgr.attest.simulated`).
The development key is stored sealed (``key_file``) with its public key next to it
(``key_file`` minus ``.sealed`` plus ``.pub.pem``) for clients to trust by name
(``teeproxy verify --trust-dev-key FILE``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.simulated import build_simulated_quote, raw_public_key
from certmgr.keys import Sealer, atomic_write, generate_p256, load_sealed_key, store_sealed_key
from certmgr.log import attest_log as log

__all__ = ["SimulatedProvider", "public_key_pem_path"]


def public_key_pem_path(key_file: Path) -> Path:
    name = key_file.name.removesuffix(".sealed")
    return key_file.with_name(name + ".pub.pem")


class SimulatedProvider:
    """Quotes signed by a development key: NO hardware protection whatsoever."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, mr_config_id: bytes = b"") -> None:
        if mr_config_id and len(mr_config_id) != 48:
            raise ValueError("a simulated MRCONFIGID is 48 bytes")
        self._key = key
        self._mr_config_id = mr_config_id or bytes(48)

    @property
    def name(self) -> str:
        return "simulated"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @classmethod
    def load_or_create(
        cls, key_file: Path, sealer: Sealer, *, mr_config_id: bytes = b""
    ) -> SimulatedProvider:
        if key_file.exists():
            key = load_sealed_key(key_file, sealer)
        else:
            key = generate_p256()
            store_sealed_key(key_file, key, sealer)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pub_path = public_key_pem_path(key_file)
        if not pub_path.exists() or pub_path.read_bytes() != pem:
            atomic_write(pub_path, pem, mode=0o644)
        log.warning(
            "attestation provider is SIMULATED (INSECURE: no TEE, quotes signed by the "
            "development key %s); clients must opt in with --trust-dev-key %s",
            raw_public_key(key.public_key()).hex()[:16],
            pub_path,
        )
        return cls(key, mr_config_id)

    def get_quote(self, report_data: bytes) -> bytes:
        return build_simulated_quote(self._key, report_data, mr_config_id=self._mr_config_id)
