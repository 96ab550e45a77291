"""Verification of AWS Nitro Enclaves attestation documents against the AWS Nitro root G1.

Pure: a function of the document bytes, the time and an explicit policy; no I/O. The root
is shipped here and pinned by the SHA-256 of its DER,
``641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b``: the value AWS
publishes for ``AWS_NitroEnclaves_Root-G1`` (user guide, "Verifying the root of trust";
the PEM is the one Dstack-TEE/dstack ships as ``nsm-qvl/certs/AWS_NitroEnclaves_Root-G1.pem``).

:func:`verify_nitro_document` checks, each failure with its own :class:`NitroReason`
(rules from aws-nitro-enclaves-nsm-api ``docs/attestation_process.md`` section 3.2.3):

1. the document parses strictly (:mod:`certmgr.attest.nitro`) (``malformed``);
2. the chain (``chain``, ``validity``): ``cabundle[0]`` is byte-identical to the shipped
   root; ``certificate <- cabundle[N-1] <- ... <- cabundle[1] <- root``, each link
   ECDSA P-384 with SHA-384 (ecdsa-with-SHA384) by a P-384 key, issuer name = the parent's
   subject; every CA certificate has basicConstraints CA (critical) with a pathLen the
   path respects and keyUsage keyCertSign; the leaf is not a CA and, when it has keyUsage,
   allows digitalSignature; no unknown critical extension (RFC 5280 section 4.2); every
   certificate, the root included, is valid both at the document's timestamp and at the
   verification time ``now``;
3. the signature (``signature``): ES384 by the leaf's key over the Sig_structure of RFC
   9052 section 4.4 with empty external_aad;
4. the timestamp (``timestamp``): not later than ``now`` plus :attr:`NitroPolicy.clock_skew`
   and, when :attr:`NitroPolicy.max_age` is set, not older than that.

Not checked: revocation (AWS's CRLs are on S3 and need the network; AWS's own process
disables CRL checking, section 3.2.4). Bindings (``user_data``, ``nonce``, ``public_key``)
are the caller's: :mod:`certmgr.attest.verify` compares them.

Why COSE is verified here and not with pycose: it is one algorithm (ES384) over one
structure, a dozen lines with ``cryptography`` (already a dependency), while pycose has had
no release since 1.1.0 (2023-12) and would add the ``ecdsa`` package. The Sig_structure is
built byte by byte (:func:`certmgr.attest.nitro.sig_structure`) so its encoding is evident.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from certmgr.attest.nitro import NitroDocument, parse_nitro_document, sig_structure
from certmgr.errors import QuoteError, VerifyError

__all__ = [
    "AWS_NITRO_ROOT_G1_PEM",
    "AWS_NITRO_ROOT_G1_SHA256",
    "NitroFailure",
    "NitroPolicy",
    "NitroReason",
    "NitroVerification",
    "nitro_root",
    "verify_nitro_document",
    "verify_nitro_parsed",
]

AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

# CN=aws.nitro-enclaves, C=US, O=Amazon, OU=AWS; 2019-10-28 .. 2049-10-28; ECDSA P-384.
AWS_NITRO_ROOT_G1_PEM = b"""\
-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""

_KNOWN_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


class NitroReason(enum.StrEnum):
    """Why a Nitro attestation document is not trusted; one code per kind of check."""

    MALFORMED = "malformed"
    CHAIN = "chain"
    VALIDITY = "validity"
    SIGNATURE = "signature"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True, slots=True)
class NitroFailure:
    reason: NitroReason
    message: str


@dataclass(frozen=True, slots=True)
class NitroPolicy:
    """``max_age``: seconds a document may be old at ``now`` (None: only the leaf
    certificate's own validity, about three hours, bounds it); ``clock_skew``: seconds a
    document's timestamp may lie after ``now``."""

    max_age: float | None = None
    clock_skew: float = 60.0

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= 0:
            raise VerifyError("Nitro max_age must be positive")
        if self.clock_skew < 0:
            raise VerifyError("Nitro clock_skew must not be negative")


@dataclass(frozen=True, slots=True)
class NitroVerification:
    """``status`` is ``Verified`` when nothing failed, else ``Invalid``."""

    status: str
    failures: tuple[NitroFailure, ...]
    document: NitroDocument | None
    chain_sha256: tuple[str, ...] = ()  # leaf first, root last

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def reasons(self) -> tuple[NitroReason, ...]:
        return tuple(f.reason for f in self.failures)

    def details(self) -> dict[str, Any]:
        """A JSON-ready summary of the document (bytes in hex)."""
        d = self.document
        if d is None:
            return {}

        def hx(b: bytes | None) -> str | None:
            return None if b is None else b.hex()

        return {
            "module_id": d.module_id,
            "digest": d.digest,
            "timestamp_ms": d.timestamp_ms,
            "pcrs": {str(i): v.hex() for i, v in d.pcrs.items()},
            "user_data": hx(d.user_data),
            "nonce": hx(d.nonce),
            "public_key": hx(d.public_key),
            "chain_sha256": list(self.chain_sha256),
        }


@functools.cache
def nitro_root() -> x509.Certificate:
    """The shipped AWS Nitro root G1; a pin mismatch is a broken install."""
    cert = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM)
    if _sha256(cert) != AWS_NITRO_ROOT_G1_SHA256:
        raise VerifyError("shipped AWS Nitro root G1 does not match its pin")
    return cert


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _p384(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    return None


def _ext(cert: x509.Certificate, cls: type[Any]) -> x509.Extension[Any] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def _profile(cert: x509.Certificate, name: str, *, ca: bool, below: int) -> list[str]:
    """What is wrong with one certificate's profile; ``below`` counts the CA certificates
    between it and the leaf (RFC 5280 section 4.2.1.9 pathLenConstraint)."""
    problems = []
    if _p384(cert) is None:
        problems.append(f"{name}: key is not ECDSA P-384")
    try:
        cert.extensions  # noqa: B018 - parsed lazily: a malformed one raises here
    except (ValueError, x509.DuplicateExtension) as e:
        return [*problems, f"{name}: malformed extensions: {e}"]
    critical = {e.oid for e in cert.extensions if e.critical} - _KNOWN_CRITICAL
    if critical:
        problems.append(
            f"{name}: unknown critical extension {sorted(o.dotted_string for o in critical)}"
        )
    bc, ku = _ext(cert, x509.BasicConstraints), _ext(cert, x509.KeyUsage)
    if ca:
        if bc is None or not bc.critical or not bc.value.ca:
            problems.append(f"{name}: not a CA (basicConstraints CA, critical)")
        elif bc.value.path_length is not None and below > bc.value.path_length:
            problems.append(f"{name}: pathLenConstraint {bc.value.path_length} exceeded")
        if ku is None or not ku.value.key_cert_sign:
            problems.append(f"{name}: keyUsage lacks keyCertSign")
    else:
        if bc is not None and bc.value.ca:
            problems.append(f"{name}: the signing certificate is a CA")
        if ku is not None and not ku.value.digital_signature:
            problems.append(f"{name}: keyUsage lacks digitalSignature")
    return problems


def _valid_at(cert: x509.Certificate, when: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _check_chain(
    doc: NitroDocument, times: dict[str, dt.datetime]
) -> tuple[list[NitroFailure], list[x509.Certificate]]:
    fails: list[NitroFailure] = []
    root = nitro_root()
    if doc.cabundle[0] != root.public_bytes(serialization.Encoding.DER):
        return [
            NitroFailure(NitroReason.CHAIN, "cabundle does not start with the AWS Nitro root G1")
        ], []
    try:
        loaded = [
            x509.load_der_x509_certificate(c) for c in (doc.certificate, *doc.cabundle[:0:-1])
        ]
    except ValueError as e:
        return [NitroFailure(NitroReason.CHAIN, f"unreadable certificate: {e}")], []
    chain = [*loaded, root]  # leaf, cabundle[N-1], ..., cabundle[1], root
    names = ["leaf"] + [f"cabundle[{len(doc.cabundle) - i}]" for i in range(1, len(chain) - 1)]
    names.append("root")
    for i, (cert, name) in enumerate(zip(chain, names, strict=True)):
        for problem in _profile(cert, name, ca=i > 0, below=max(i - 1, 0)):
            fails.append(NitroFailure(NitroReason.CHAIN, problem))
        for what, when in times.items():
            if not _valid_at(cert, when):
                fails.append(
                    NitroFailure(
                        NitroReason.VALIDITY,
                        f"{name} valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
                        f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not at {what} "
                        f"{when:%Y-%m-%dT%H:%M:%SZ}",
                    )
                )
        if i == len(chain) - 1:
            break
        parent = chain[i + 1]
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            fails.append(NitroFailure(NitroReason.CHAIN, f"{name} is not signed ecdsa-with-SHA384"))
            continue
        try:
            cert.verify_directly_issued_by(parent)
        except InvalidSignature:
            fails.append(
                NitroFailure(NitroReason.CHAIN, f"{name}: issuer signature does not verify")
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            fails.append(
                NitroFailure(NitroReason.CHAIN, f"{name} is not issued by {names[i + 1]}: {e}")
            )
    return fails, chain


def _check_signature(doc: NitroDocument, leaf: x509.Certificate) -> list[NitroFailure]:
    key = _p384(leaf)
    if key is None:
        return [NitroFailure(NitroReason.SIGNATURE, "signing certificate has no P-384 key")]
    sig = doc.cose.signature
    der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    try:
        key.verify(
            der, sig_structure(doc.cose.protected, doc.cose.payload), ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        return [NitroFailure(NitroReason.SIGNATURE, "COSE_Sign1 ES384 signature does not verify")]
    return []


def verify_nitro_document(
    raw: bytes, now: float, policy: NitroPolicy | None = None
) -> NitroVerification:
    """Verify one attestation document at unix time ``now`` (see the module docstring)."""
    try:
        doc = parse_nitro_document(raw)
    except QuoteError as e:
        return NitroVerification("Invalid", (NitroFailure(NitroReason.MALFORMED, str(e)),), None)
    return verify_nitro_parsed(doc, now, policy)


def verify_nitro_parsed(
    doc: NitroDocument, now: float, policy: NitroPolicy | None = None
) -> NitroVerification:
    """:func:`verify_nitro_document` for a document already parsed."""
    policy = policy or NitroPolicy()
    try:
        issued = dt.datetime.fromtimestamp(doc.timestamp_ms / 1000, dt.UTC)
        at = dt.datetime.fromtimestamp(now, dt.UTC)
    except (OverflowError, OSError, ValueError) as e:
        return NitroVerification(
            "Invalid", (NitroFailure(NitroReason.TIMESTAMP, f"unusable time: {e}"),), doc
        )
    fails, chain = _check_chain(doc, {"document time": issued, "verification time": at})
    if chain:
        fails.extend(_check_signature(doc, chain[0]))
    else:
        try:
            leaf = x509.load_der_x509_certificate(doc.certificate)
        except ValueError as e:
            fails.append(
                NitroFailure(NitroReason.SIGNATURE, f"unreadable signing certificate: {e}")
            )
        else:
            fails.extend(_check_signature(doc, leaf))
    age = now - doc.timestamp_ms / 1000
    if age < -policy.clock_skew:
        fails.append(NitroFailure(NitroReason.TIMESTAMP, f"document is {-age:.0f} s in the future"))
    if policy.max_age is not None and age > policy.max_age:
        fails.append(
            NitroFailure(
                NitroReason.TIMESTAMP, f"document is {age:.0f} s old (at most {policy.max_age:.0f})"
            )
        )
    return NitroVerification(
        "Invalid" if fails else "Verified",
        tuple(fails),
        doc,
        tuple(_sha256(c) for c in chain),
    )
