"""Simulated quotes: the real TDX v4 quote layout, signed by a development attestation key.

INSECURE, for development and the demo only. The quote has the byte layout of an Intel TDX
v4 ECDSA quote (48-byte header, 584-byte TD report, signature data), but its signature data
holds an ECDSA P-256 signature over header || body by a *development attestation key*
generated on this machine, that key's raw public point, and certification data of type
``0x7E57`` (not an Intel type) saying "INSECURE". dcap-qvl rejects it (no PCK chain); the
teeproxy verifier accepts it only when the client names that development key explicitly
(``--trust-dev-key FILE``).

This module is the format (pure): building such a quote and checking its signature. The
provider that keeps the development key is :mod:`certmgr.attest.providers.simulated`.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from certmgr.attest.intel import ATT_KEY_ECDSA_P256, TD10_REPORT_SIZE, TEE_TYPE_TDX
from certmgr.attest.measurement import SIMULATED_CERT_DATA_TYPE, ParsedQuote, check_report_data

__all__ = [
    "SIMULATED_MR_TD",
    "build_simulated_quote",
    "public_key_from_raw",
    "raw_public_key",
    "verify_simulated_signature",
]


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
    try:
        pub = public_key_from_raw(q.attestation_key)
        sig = encode_dss_signature(
            int.from_bytes(q.signature[:32], "big"), int.from_bytes(q.signature[32:], "big")
        )
        pub.verify(sig, q.signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
