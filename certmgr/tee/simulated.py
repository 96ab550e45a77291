"""The simulated provider: real TDX v4 quote layout, signed by a development attestation key.

INSECURE, for development and the demo only. The quote has the byte layout of an Intel TDX
v4 ECDSA quote (48-byte header, 584-byte TD report, signature data), but its signature data
holds an ECDSA P-256 signature over header || body by a *development attestation key*
generated on this machine, that key's raw public point, and certification data of type
``0x7E57`` (not an Intel type) saying "INSECURE". dcap-qvl rejects it (no PCK chain); the
teeproxy verifier accepts it only when the client names that development key explicitly
(``--trust-dev-key FILE``).

The development key is stored sealed (``KEY_FILE``) with its public key next to it
(``KEY_FILE`` minus ``.sealed`` plus ``.pub.pem``) for clients to trust.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from certmgr.keys import Sealer, atomic_write, generate_p256, load_sealed_key, store_sealed_key
from certmgr.quote import (
    ATT_KEY_ECDSA_P256,
    SIMULATED_CERT_DATA_TYPE,
    TD10_REPORT_SIZE,
    TEE_TYPE_TDX,
    ParsedQuote,
)
from certmgr.tee.base import check_report_data

__all__ = [
    "SIMULATED_MR_TD",
    "SimulatedProvider",
    "build_simulated_quote",
    "public_key_pem_path",
    "raw_public_key",
    "verify_simulated_signature",
]

log = logging.getLogger("teeproxy.attest")

SIM_QE_VENDOR_ID = b"TEEPROXY-SIM-DEV"  # 16 bytes, not Intel's QE vendor id
SIM_CERT_DATA = b"teeproxy INSECURE simulated quote: development attestation key, no TEE"
SIMULATED_MR_TD = hashlib.sha384(b"teeproxy simulated TD (INSECURE)").digest()


def raw_public_key(pub: ec.EllipticCurvePublicKey) -> bytes:
    """The 64-byte x || y form quotes carry for the attestation key."""
    n = pub.public_numbers()
    return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def public_key_from_raw(raw: bytes) -> ec.EllipticCurvePublicKey:
    if len(raw) != 64:
        raise ValueError("attestation key must be 64 bytes")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def public_key_pem_path(key_file: Path) -> Path:
    name = key_file.name.removesuffix(".sealed")
    return key_file.with_name(name + ".pub.pem")


def build_simulated_quote(
    key: ec.EllipticCurvePrivateKey,
    report_data: bytes,
    *,
    mr_td: bytes = SIMULATED_MR_TD,
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4,
    mr_config_id: bytes = bytes(48),
    debug: bool = False,
) -> bytes:
    """A TDX v4 quote over ``report_data`` signed by the development key ``key``."""
    check_report_data(report_data)
    header = struct.pack("<HHIHH", 4, ATT_KEY_ECDSA_P256, TEE_TYPE_TDX, 0, 0)
    header += SIM_QE_VENDOR_ID + bytes(20)
    td_attributes = (1 if debug else 0).to_bytes(8, "little")
    body = (
        bytes(16)  # TEE_TCB_SVN
        + bytes(48)  # MRSEAM
        + bytes(48)  # MRSIGNERSEAM
        + bytes(8)  # SEAMATTRIBUTES
        + td_attributes
        + (0x00000000000618E7).to_bytes(8, "little")  # XFAM (a typical value)
        + mr_td
        + mr_config_id
        + bytes(48)  # MROWNER
        + bytes(48)  # MROWNERCONFIG
        + b"".join(rtmrs)
        + report_data
    )
    if len(body) != TD10_REPORT_SIZE:
        raise ValueError("measurement registers must be 48 bytes each")
    der_sig = key.sign(header + body, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der_sig)
    sig_data = (
        r.to_bytes(32, "big")
        + s.to_bytes(32, "big")
        + raw_public_key(key.public_key())
        + struct.pack("<HI", SIMULATED_CERT_DATA_TYPE, len(SIM_CERT_DATA))
        + SIM_CERT_DATA
    )
    return header + body + struct.pack("<I", len(sig_data)) + sig_data


def verify_simulated_signature(q: ParsedQuote) -> bool:
    """Whether the quote's signature verifies under the attestation key it carries."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

    try:
        pub = public_key_from_raw(q.attestation_key)
        sig = encode_dss_signature(
            int.from_bytes(q.signature[:32], "big"), int.from_bytes(q.signature[32:], "big")
        )
        pub.verify(sig, q.signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


class SimulatedProvider:
    """Quotes signed by a development key: NO hardware protection whatsoever."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    @property
    def name(self) -> str:
        return "simulated"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @classmethod
    def load_or_create(cls, key_file: Path, sealer: Sealer) -> SimulatedProvider:
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
        return cls(key)

    def get_quote(self, report_data: bytes) -> bytes:
        return build_simulated_quote(self._key, report_data)
