"""Certificate checks shared by NVIDIA device chains and RIM signing chains (pure, no I/O).

- :func:`nvidia_anchors`: the shipped roots (:mod:`certmgr.attest.nvidia_roots`), parsed
  once and pin-checked;
- :func:`check_chain`: leaf first, each certificate directly issued by the next (names
  and an ECDSA P-384 / SHA-384 signature, as NVIDIA signs every certificate of both
  chains), CA basic constraints and keyCertSign on every issuer, path length constraints,
  every certificate valid at the verification time, and the last one byte-identical to
  the pinned root;
- :func:`fwid_of`: the TCG DICE FWID (``tcg-dice-TcbInfo`` 2.23.133.5.4.1, TCG DICE
  Attestation Architecture section 6.1.1) of a device leaf: NVIDIA's GPU firmware puts
  one SHA-384 FWID last, which the SPDM report repeats in its opaque data;
- :func:`ocsp_status`: an OCSP response (RFC 6960) for one certificate, judged offline:
  the response is for this certificate and issuer, signed by the issuer or by a responder
  certificate with id-kp-OCSPSigning issued by a CA of the same chain (NVIDIA's OCSP
  service signs with such a delegated responder; RFC 6960 4.2.2.2 asks for the issuer
  itself, NVIDIA's verifier accepts any CA above: so does this), and current at the
  verification time (``thisUpdate <= t <= nextUpdate``, or ``t - thisUpdate <= max_age``
  when the responder gives no nextUpdate).
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from certmgr.attest.nvidia_roots import (
    DEVICE_ROOT_PEM,
    DEVICE_ROOT_SHA256,
    RIM_ROOT_PEM,
    RIM_ROOT_SHA256,
)
from certmgr.errors import VerifyError

__all__ = [
    "ChainProblem",
    "NvidiaAnchors",
    "OcspStatus",
    "at_time",
    "check_chain",
    "common_name",
    "fingerprint",
    "fwid_of",
    "load_pem_chain",
    "nvidia_anchors",
    "ocsp_status",
]

TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")
MAX_CHAIN_CERTS = 8

ChainProblem = tuple[str, str]  # ("chain" | "validity", message)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return names[0].value if len(names) == 1 and isinstance(names[0].value, str) else ""


def at_time(now: float | dt.datetime) -> dt.datetime:
    """``now`` (unix seconds or a datetime) as an aware UTC datetime; VerifyError if absurd."""
    if isinstance(now, dt.datetime):
        return now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    try:
        return dt.datetime.fromtimestamp(now, dt.UTC)
    except (OverflowError, ValueError, OSError) as e:
        raise VerifyError(f"verification time {now!r}: {e}") from e


@dataclass(frozen=True, slots=True)
class NvidiaAnchors:
    device_root: x509.Certificate
    rim_root: x509.Certificate


@functools.cache
def nvidia_anchors() -> NvidiaAnchors:
    """The shipped roots, parsed once; a pin mismatch is a broken install."""
    device = x509.load_pem_x509_certificate(DEVICE_ROOT_PEM)
    rim = x509.load_pem_x509_certificate(RIM_ROOT_PEM)
    if fingerprint(device) != DEVICE_ROOT_SHA256 or fingerprint(rim) != RIM_ROOT_SHA256:
        raise VerifyError("a shipped NVIDIA root does not match its pin")
    return NvidiaAnchors(device, rim)


def load_pem_chain(pem: bytes, *, max_certs: int = MAX_CHAIN_CERTS) -> list[x509.Certificate]:
    """The certificates of a PEM chain, in order; VerifyError if unreadable or too many."""
    if pem.count(b"-----BEGIN CERTIFICATE-----") > max_certs:
        raise VerifyError(f"certificate chain of more than {max_certs} certificates")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise VerifyError(f"unreadable PEM certificate chain: {e}") from e
    return list(certs)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None when ``issuer`` signed ``cert`` with ECDSA P-384 / SHA-384, else why not."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        return f"signature algorithm {cert.signature_algorithm_oid.dotted_string}, not ecdsa-sha384"
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return "issuer key is not ECDSA P-384"
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError:
        return "issuer name is not the signer's subject name"
    except InvalidSignature:
        return "signature does not verify"
    except (TypeError, UnsupportedAlgorithm) as e:
        return f"signature unusable: {e}"
    return None


def _ca_info(cert: x509.Certificate) -> tuple[bool, int | None, bool]:
    """(is a CA, path length, may sign certificates); unreadable extensions: nothing."""
    try:
        cert.extensions  # noqa: B018 - parsed lazily: a malformed one raises here
    except (ValueError, x509.DuplicateExtension):
        return False, None, False
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca, path = bc.ca, bc.path_length
    except x509.ExtensionNotFound:
        ca, path = False, None
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        sign = ku.key_cert_sign
    except x509.ExtensionNotFound:
        sign = True
    return ca, path, sign


def check_chain(
    chain: Sequence[x509.Certificate], root: x509.Certificate, when: dt.datetime, *, what: str
) -> list[ChainProblem]:
    """Problems of ``chain`` (leaf first, root last), each ("chain" | "validity", message)."""
    problems: list[ChainProblem] = []
    if len(chain) < 2:
        return [("chain", f"{what} has {len(chain)} certificate(s), needs at least 2")]
    if len(chain) > MAX_CHAIN_CERTS:
        return [("chain", f"{what} has more than {MAX_CHAIN_CERTS} certificates")]
    if chain[-1].public_bytes(serialization.Encoding.DER) != root.public_bytes(
        serialization.Encoding.DER
    ):
        problems.append(
            ("chain", f"{what} ends in {common_name(chain[-1])!r}, not the pinned NVIDIA root")
        )
    why = _signed_by(chain[-1], chain[-1])
    if why is not None:
        problems.append(("chain", f"{what}: root self-signature: {why}"))
    for i in range(len(chain) - 1):
        cert, issuer = chain[i], chain[i + 1]
        why = _signed_by(cert, issuer)
        if why is not None:
            problems.append(
                (
                    "chain",
                    f"{what}: {common_name(cert)!r} not signed by {common_name(issuer)!r}: {why}",
                )
            )
        ca, path_len, sign = _ca_info(issuer)
        if not ca or not sign:
            problems.append(("chain", f"{what}: issuer {common_name(issuer)!r} is not a CA"))
        below = i  # CA certificates between this issuer and the leaf
        if path_len is not None and below > path_len:
            problems.append(
                ("chain", f"{what}: {common_name(issuer)!r} path length {path_len} exceeded")
            )
    for cert in chain:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            problems.append(
                (
                    "validity",
                    f"{what}: {common_name(cert)!r} valid "
                    f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
                    f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, "
                    f"not at {when:%Y-%m-%dT%H:%M:%SZ}",
                )
            )
    return problems


def fwid_of(leaf: x509.Certificate) -> bytes | None:
    """The SHA-384 FWID ending the leaf's TcbInfo extension, None without the extension.

    DiceTcbInfo's last field is ``fwids [6] FWIDLIST``; NVIDIA's leaves hold one FWID, so
    the extension ends with ``SEQUENCE { OID sha384, OCTET STRING (48) }``: that tail is
    required exactly (VerifyError otherwise).
    """
    try:
        ext = leaf.extensions.get_extension_for_oid(TCG_DICE_TCB_INFO)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension) as e:
        raise VerifyError(f"device leaf extensions unreadable: {e}") from e
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    tail = _SHA384_OID_DER + b"\x04\x30"
    if len(raw) < len(tail) + 48 or raw[-(48 + len(tail)) : -48] != tail:
        raise VerifyError("device leaf TcbInfo does not end with a SHA-384 FWID")
    return bytes(raw[-48:])


class OcspStatus(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the responder does not know the certificate
    MISSING = "missing"  # no response at hand
    INVALID = "invalid"  # a response that does not verify or is not current
    NOT_CHECKED = "not-checked"


def ocsp_status(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    chain: Sequence[x509.Certificate],
    response_der: bytes | None,
    when: dt.datetime,
    *,
    max_age: dt.timedelta = dt.timedelta(days=7),
) -> tuple[OcspStatus, str]:
    """The status one OCSP response gives ``cert`` (issued by ``issuer``), and why."""
    if response_der is None:
        return OcspStatus.MISSING, "no OCSP response"
    if len(response_der) > 64 * 1024:
        return OcspStatus.INVALID, "OCSP response too large"
    try:
        resp = ocsp.load_der_ocsp_response(response_der)
    except ValueError as e:
        return OcspStatus.INVALID, f"OCSP response unreadable: {e}"
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return OcspStatus.INVALID, f"OCSP responder answered {resp.response_status.name}"
    single = None
    try:
        raw_key = _spki_bits(issuer.public_key())
    except ValueError as e:
        return OcspStatus.INVALID, f"OCSP issuer key unusable: {e}"
    for r in resp.responses:
        if r.serial_number != cert.serial_number:
            continue
        try:
            name_hash = hashlib.new(r.hash_algorithm.name, issuer.subject.public_bytes()).digest()
            key_hash = hashlib.new(r.hash_algorithm.name, raw_key).digest()
        except (ValueError, TypeError) as e:
            return OcspStatus.INVALID, f"OCSP CertID unusable: {e}"
        if r.issuer_name_hash == name_hash and r.issuer_key_hash == key_hash:
            single = r
            break
    if single is None:
        return OcspStatus.INVALID, "OCSP response is not for this certificate"
    why = _responder_ok(resp, issuer, chain, when)
    if why is not None:
        return OcspStatus.INVALID, why
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update > when:
        return OcspStatus.INVALID, f"OCSP response produced after {when:%Y-%m-%dT%H:%M:%SZ}"
    if next_update is not None and when > next_update:
        return OcspStatus.INVALID, f"OCSP response expired {next_update:%Y-%m-%dT%H:%M:%SZ}"
    if next_update is None and when - this_update > max_age:
        return OcspStatus.INVALID, f"OCSP response older than {max_age}"
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.GOOD:
        return OcspStatus.GOOD, "good"
    if status is ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        return OcspStatus.REVOKED, f"revoked ({reason.name if reason else 'no reason given'})"
    return OcspStatus.UNKNOWN, "the responder does not know this certificate"


def _spki_bits(key: object) -> bytes:
    """The subjectPublicKey BIT STRING content (what RFC 6960 CertID hashes) of an EC key."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("issuer key is not an EC key")
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _responder_ok(
    resp: ocsp.OCSPResponse,
    issuer: x509.Certificate,
    chain: Sequence[x509.Certificate],
    when: dt.datetime,
) -> str | None:
    """None when the response is signed by the issuer or a delegated responder, else why."""
    signer: x509.Certificate | None = None
    if resp.certificates:
        responder = resp.certificates[0]
        above = [c for c in chain if _ca_info(c)[0]]
        if not any(_signed_by(responder, ca) is None for ca in above):
            return "OCSP responder certificate is not issued by a CA of this chain"
        try:
            eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return "OCSP responder certificate lacks id-kp-OCSPSigning"
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            return "OCSP responder certificate lacks id-kp-OCSPSigning"
        if not responder.not_valid_before_utc <= when <= responder.not_valid_after_utc:
            return "OCSP responder certificate is not valid at the verification time"
        signer = responder
    else:
        signer = issuer
    key = signer.public_key()
    algo = resp.signature_hash_algorithm
    if not isinstance(key, ec.EllipticCurvePublicKey) or algo is None:
        return "OCSP response is not ECDSA-signed"
    try:
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algo))
    except InvalidSignature:
        return "OCSP response signature does not verify"
    return None
