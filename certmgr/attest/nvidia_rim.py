"""NVIDIA reference integrity manifests (RIMs): reading and verifying them (pure, no I/O).

NVIDIA publishes the expected ("golden") measurements of each GPU driver and VBIOS as a
TCG RIM in the ISO/IEC 19770-2:2015 SWID tag format, signed with an enveloped XML
signature (W3C XML-DSig 1.1; NVIDIA signs with ecdsa-sha384 over C14N 1.1) whose KeyInfo
carries the signing chain: ``HCC RIM L4 Signer <- Reference Value L3 <- Reference Value CA
<- NVIDIA CoRIM signing Root CA``. :func:`verify_rim` checks, in this order:

1. size (at most :data:`MAX_RIM_SIZE`) and no DOCTYPE, before any parsing; the parser never
   resolves entities, loads DTDs or touches the network (lxml ``resolve_entities=False,
   load_dtd=False, no_network=True``; signxml refuses DTDs and entities again);
2. the chain in KeyInfo: every certificate signed by the next with ECDSA P-384/SHA-384,
   CA bits on the issuers, the last one byte-identical to the pinned RIM root
   (:mod:`certmgr.attest.nvidia_roots`), each valid at the verification time (``--at``);
3. the XML signature, by signxml (a maintained XML-DSig implementation) with the chain's
   leaf given as the signing certificate, one reference, ecdsa-sha384 and sha384 only;
4. the measurements are read **only from the signed XML signxml returns**, never from the
   input document (what is signed is what is used).

A RIM's ``Payload`` lists ``Resource`` elements: ``index`` (0-based; SPDM block ``index+1``),
``active``, ``size``, ``alternatives`` and the values ``Hash0``.. in the
``http://www.w3.org/2001/04/xmlenc#sha384`` namespace. ``Meta/@colloquialVersion`` is the
driver or VBIOS version; ``SoftwareIdentity/@name`` (``GH100``) the product.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import (
    InvalidCertificate,
    InvalidDigest,
    InvalidInput,
    InvalidSignature,
    SignXMLException,
)
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from certmgr.attest.nvidia_chain import check_chain, nvidia_anchors
from certmgr.errors import VerifyError

__all__ = [
    "MAX_RIM_SIZE",
    "GoldenMeasurement",
    "Rim",
    "RimKind",
    "parse_rim_unverified",
    "verify_rim",
]

MAX_RIM_SIZE: Final = 1024 * 1024
"""Largest RIM read (NVIDIA's are about 20 KB)."""
MAX_RESOURCES: Final = 256
MAX_ALTERNATIVES: Final = 16
MAX_RIM_CHAIN: Final = 6

_SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
_DSIG = "{http://www.w3.org/2000/09/xmldsig#}"
_SHA384_NS = "{http://www.w3.org/2001/04/xmlenc#sha384}"

RimKind = str  # "driver" or "vbios"


@dataclass(frozen=True, slots=True)
class GoldenMeasurement:
    index: int  # 0-based (SPDM block index - 1)
    active: bool
    size: int
    values: tuple[bytes, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class Rim:
    """A RIM whose signature and chain verified (or, from :func:`parse_rim_unverified`,
    did not: ``verified`` says which)."""

    kind: RimKind
    tag_id: str
    product: str
    version: str  # colloquialVersion, lower case
    measurements: Mapping[int, GoldenMeasurement]
    chain_sha256: tuple[str, ...] = ()
    not_after: dt.datetime | None = None
    verified: bool = False
    signer: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def active(self) -> dict[int, GoldenMeasurement]:
        return {i: m for i, m in self.measurements.items() if m.active}

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tag_id": self.tag_id,
            "product": self.product,
            "version": self.version,
            "active_measurements": len(self.active()),
            "signer": self.signer,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "chain_sha256": list(self.chain_sha256),
        }


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        remove_comments=False,
    )


def _precheck(data: bytes) -> None:
    if len(data) > MAX_RIM_SIZE:
        raise VerifyError(f"RIM of {len(data)} bytes exceeds {MAX_RIM_SIZE}")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise VerifyError("RIM declares a DOCTYPE or entities: refused")


def _root(data: bytes) -> Any:
    _precheck(data)
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as e:
        raise VerifyError(f"RIM is not well-formed XML: {e}") from e
    if root.tag != f"{_SWID}SoftwareIdentity":
        raise VerifyError(f"RIM root element is {str(root.tag)[:80]!r}, not SWID SoftwareIdentity")
    return root


def _int(el: Any, name: str, lo: int, hi: int) -> int:
    text = el.get(name)
    if text is None or not text.isdigit() or len(text) > 6:
        raise VerifyError(f"RIM Resource attribute {name!r} is not a number")
    v = int(text)
    if not lo <= v <= hi:
        raise VerifyError(f"RIM Resource attribute {name}={v} is out of range")
    return v


def _measurements(root: Any) -> dict[int, GoldenMeasurement]:
    payloads = root.findall(f"{_SWID}Payload")
    if len(payloads) != 1:
        raise VerifyError(f"RIM has {len(payloads)} Payload elements, expected 1")
    out: dict[int, GoldenMeasurement] = {}
    resources = payloads[0].findall(f"{_SWID}Resource")
    if not resources or len(resources) > MAX_RESOURCES:
        raise VerifyError(f"RIM Payload has {len(resources)} Resources")
    for res in resources:
        if res.get("type") != "Measurement":
            continue
        index = _int(res, "index", 0, 253)
        size = _int(res, "size", 1, 64)
        alternatives = _int(res, "alternatives", 0, MAX_ALTERNATIVES)
        active_text = res.get("active")
        if active_text not in ("True", "False"):
            raise VerifyError(f"RIM measurement {index}: active is not True/False")
        values = []
        for k in range(alternatives):
            text = res.get(f"{_SHA384_NS}Hash{k}")
            if text is None:
                raise VerifyError(f"RIM measurement {index} lacks Hash{k}")
            try:
                value = bytes.fromhex(text)
            except ValueError:
                raise VerifyError(f"RIM measurement {index}: Hash{k} is not hex") from None
            if len(value) != size:
                raise VerifyError(f"RIM measurement {index}: Hash{k} is not {size} bytes")
            values.append(value)
        if index in out:
            raise VerifyError(f"RIM lists measurement index {index} twice")
        out[index] = GoldenMeasurement(
            index, active_text == "True", size, tuple(values), res.get("name") or ""
        )
    if not out:
        raise VerifyError("RIM has no measurements")
    return out


def _kind(root: Any) -> RimKind:
    # NVIDIA's driver RIMs carry the driver version (e.g. 545.00), VBIOS RIMs the VBIOS
    # version (96.00.5E.00.01): the five dotted fields tell them apart.
    version = _version(root)
    return "vbios" if version.count(".") == 4 else "driver"


def _version(root: Any) -> str:
    meta = root.findall(f"{_SWID}Meta")
    if len(meta) != 1:
        raise VerifyError(f"RIM has {len(meta)} Meta elements, expected 1")
    version = meta[0].get("colloquialVersion")
    if not version or len(version) > 64 or not version.isprintable():
        raise VerifyError("RIM Meta has no colloquialVersion")
    return str(version).lower()


def _describe(root: Any, *, verified: bool, **extra: Any) -> Rim:
    tag_id = root.get("tagId") or ""
    product = root.get("name") or ""
    return Rim(
        kind=_kind(root),
        tag_id=str(tag_id)[:128],
        product=str(product)[:64],
        version=_version(root),
        measurements=MappingProxyType(_measurements(root)),
        verified=verified,
        **extra,
    )


def parse_rim_unverified(data: bytes) -> Rim:
    """Read a RIM without checking its signature (to choose or report it; never to judge)."""
    return _describe(_root(data), verified=False)


def _chain(root: Any) -> list[x509.Certificate]:
    sig = root.findall(f"{_DSIG}Signature")
    if len(sig) != 1:
        raise VerifyError(f"RIM has {len(sig)} enveloped signatures, expected 1")
    certs = sig[0].findall(f"{_DSIG}KeyInfo/{_DSIG}X509Data/{_DSIG}X509Certificate")
    if not certs or len(certs) > MAX_RIM_CHAIN:
        raise VerifyError(f"RIM KeyInfo carries {len(certs)} certificates")
    out = []
    for c in certs:
        try:
            der = base64.b64decode("".join((c.text or "").split()), validate=True)
            out.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError) as e:
            raise VerifyError(f"RIM KeyInfo certificate unreadable: {e}") from e
    return out


def verify_rim(
    data: bytes, when: dt.datetime, *, root_certificate: x509.Certificate | None = None
) -> Rim:
    """Verify a RIM (module docstring) at ``when``; :class:`VerifyError` names what failed.

    ``root_certificate`` replaces the shipped, pinned NVIDIA RIM root (tests sign RIMs of
    their own); the returned measurements come from the signed XML only.
    """
    doc = _root(data)
    chain = _chain(doc)
    root_cert = root_certificate or nvidia_anchors().rim_root
    if chain[-1] != root_cert:
        chain.append(root_cert)  # KeyInfo may stop below the root: the pinned one ends it
    problems = check_chain(chain, root_cert, when, what="RIM signing chain")
    if problems:
        raise VerifyError("; ".join(msg for _, msg in problems))
    config = SignatureConfiguration(
        require_x509=True,
        location="./",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=when,
    )
    try:
        result = XMLVerifier().verify(
            data, x509_cert=chain[0], parser=_parser(), expect_config=config
        )
    except (InvalidSignature, InvalidDigest) as e:
        raise VerifyError(f"RIM XML signature does not verify: {e}") from e
    except (InvalidCertificate, InvalidInput, SignXMLException, ValueError) as e:
        raise VerifyError(f"RIM XML signature unusable: {e}") from e
    except etree.LxmlError as e:  # signxml validates the Signature element's schema (found
        raise VerifyError(f"RIM XML signature malformed: {e}") from e  # by fuzzing)
    if not isinstance(result, VerifyResult):
        raise VerifyError("RIM signature has more than one reference")
    signed = result.signed_xml
    if signed is None or signed.tag != f"{_SWID}SoftwareIdentity":
        raise VerifyError("RIM signature does not cover the SoftwareIdentity document")
    fingerprints = tuple(
        hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest() for c in chain
    )
    signer = chain[0].subject.rfc4514_string()
    return _describe(
        signed,
        verified=True,
        chain_sha256=fingerprints,
        not_after=min(c.not_valid_after_utc for c in chain),
        signer=signer[:200],
    )
