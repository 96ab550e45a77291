"""The verifier clients use: is this quote, certificate or evidence trustworthy, and why not.

Importable without the server (no aiohttp, no proxy imports). Pure: verification is a
function of the bytes, the collateral, an explicit policy and the time, and does no I/O;
collateral comes from :mod:`certmgr.attest.collateral`, allowlists from
:mod:`certmgr.policy.allowlist`, the on-chain policy from :mod:`certmgr.policy.rpc`.

Checks, each failing with its own reason code (:class:`Reason`):

1. structure: the certificate (:mod:`certmgr.attest.ratls`) and the quote
   (:mod:`certmgr.attest.quote`)
   parse strictly;
2. the quote is genuine: Intel quotes with dcap-qvl against Intel's SGX root CA and the
   collateral; SEV-SNP reports against AMD's ARK with their VCEK/VLEK (below); simulated
   quotes only when the caller trusts that development key by name;
3. TCB policy: ``UpToDate`` is accepted, any other status only when named in
   :attr:`TcbPolicy.accept`, ``Revoked`` never; advisories on the deny list reject;
4. binding: the claims' pubkey-hash is the certificate's SPKI hash, report_data[:32] is
   SHA-256(claims) and report_data[32:] is all zero (DESIGN "Trust formats");
5. the certificate's validity window contains ``now``; its self-signature verifies;
6. the TEE is not in debug mode, and is of the expected type when one is required;
7. the measurement id is allowed, by a :class:`certmgr.attest.policycheck.PolicyCheck` (an
   allowlist file, or the on-chain policy);
8. the ``"signing-address"`` claim (the receipt signing key, :mod:`certmgr.receipts.signing`), when
   present, is ``0x`` + 40 lowercase hex: :attr:`Verdict.signing_address` (20 bytes). A
   client that checks a certificate and fresh evidence together also requires both to name
   the same address (:func:`signing_address_agreement`).

SEV-SNP reports are verified by :func:`certmgr.attest.snp_verify.verify_snp_report` when the
caller passes an :class:`~certmgr.attest.snp_verify.SnpCollateral` (the VCEK or VLEK, and
optionally the ASK/ASVK and ARK) as ``collateral``: report signature, chain to AMD's shipped
roots, the VCEK bound to the chip and REPORTED_TCB, and :attr:`VerifyOptions.snp` (debug never,
SMT and migration agent only when allowed, optional minimum TCB and firmware). Its status
(``UpToDate``, ``OutOfDate``, ``Invalid``) is the verdict's; its failures map to
``snp-signature``, ``snp-chain``, ``snp-tcb``, ``snp-policy`` and ``collateral-expired``.
Without SNP collateral a report is ``Unverified`` (``unverified-tee``) and never trusted.

Where the collateral comes from: the ``collateral`` argument when the caller gives one;
otherwise what the evidence carries: a certificate's endorsements extension
``2.23.133.5.4.2`` (:mod:`certmgr.attest.endorsements`: Intel collateral, or an SEV-SNP
certificate table), the nonce evidence's ``endorsements`` (an SEV-SNP certificate table).
That material is only ever input to the same checks (Intel's and AMD's signatures over it,
against the pinned roots), so it is as good as collateral from a PCCS or KDS; the verdict
says which was used (``collateral_source``: ``"argument"``, ``"certificate"``,
``"evidence"`` or ``null``). A malformed endorsements extension is a failure
(``endorsements-malformed``) whichever collateral is used.

AWS Nitro attestation documents need no collateral: :func:`certmgr.attest.nitro_verify.
verify_nitro_document` checks the COSE_Sign1 signature and the chain to the shipped AWS
Nitro root G1 (status ``Verified``; failures ``nitro-signature``, ``nitro-chain``,
``nitro-timestamp`` and ``collateral-expired`` for a certificate outside its validity at the
document's time or at ``now``), under :attr:`VerifyOptions.nitro`. The document's
``user_data`` is its report_data (64 bytes bind; anything else fails ``report-data``).

NVIDIA GPU and NVSwitch evidence (:mod:`certmgr.attest.nvidia_verify`) is verified by
:func:`verify_gpu_verdict` (a file in NVIDIA's JSON list shape, ``teeproxy verify-quote``)
and, when the proxy's fresh evidence carries a ``gpu`` list, by :func:`verify_evidence`
with the nonce :func:`certmgr.attest.nvidia.gpu_nonce` of the evidence's claims. Each
device's result is in :attr:`Verdict.gpus`; its failures map to ``gpu-*`` reason codes. A
GPU-only verdict is trusted when every device passes; next to a CPU quote, the GPUs count
towards ``trusted`` when :attr:`VerifyOptions.require_gpu` says so (then at least one GPU,
in confidential-computing mode without devtools, is required).
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dcap_qvl  # type: ignore[import-untyped]  # ships .pyi but no py.typed
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest import dstack as dstack_format
from certmgr.attest.claims import Claims
from certmgr.attest.cmw import CMW_OID
from certmgr.attest.cmw import decode_extension as decode_cmw
from certmgr.attest.collateral import dcap_collateral
from certmgr.attest.dip1 import parse_dip1
from certmgr.attest.endorsements import ENDORSEMENTS_OID, decode_endorsements
from certmgr.attest.evidence import parse_evidence_json
from certmgr.attest.measurement import Measurement, ParsedQuote, TeeType, measurement_id
from certmgr.attest.nitro_verify import NitroPolicy, NitroReason, verify_nitro_document
from certmgr.attest.nvidia import (
    DeviceKind,
    describe_nvattest_result,
    gpu_nonce,
    parse_nvidia_evidence_json,
)
from certmgr.attest.nvidia_verify import (
    DeviceResult,
    GpuCollateral,
    GpuPolicy,
    GpuReason,
    GpuSetResult,
    verify_devices,
)
from certmgr.attest.policycheck import PolicyCheck
from certmgr.attest.quote import is_snp_report
from certmgr.attest.quote import parse_evidence as parse_quote_bytes
from certmgr.attest.ratls import (
    RaTlsCert,
    claims_report_data,
    legacy_binding,
    parse_certificate,
    pubkey_hash_matches,
    report_data_for_claims,
)
from certmgr.attest.sevsnp import parse_snp
from certmgr.attest.simulated import verify_simulated_signature
from certmgr.attest.snp_verify import (
    SnpCollateral,
    SnpPolicy,
    SnpReason,
    collateral_from_cert_table,
    verify_snp_report,
)
from certmgr.errors import EvidenceError, QuoteError, RaTlsError, VerifyError

__all__ = [
    "KNOWN_TCB_STATUSES",
    "SNP_CERT_TABLE_FORMAT",
    "CarriedCollateral",
    "Reason",
    "TcbPolicy",
    "Verdict",
    "VerifyOptions",
    "certificate_collateral",
    "check_binding",
    "evidence_collateral",
    "load_dev_key",
    "parse_signing_address",
    "report_data_key",
    "signing_address_agreement",
    "verify_certificate",
    "verify_dstack_evidence",
    "verify_evidence",
    "verify_gpu_verdict",
    "verify_quote",
    "verify_quote_verdict",
]


KNOWN_TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
_ADDRESS = re.compile(r"0x[0-9a-f]{40}", re.ASCII)


class Reason(enum.StrEnum):
    """Why evidence was rejected; one code per check."""

    CERT_MALFORMED = "cert-malformed"
    CBOR = "cbor"
    DUPLICATE_EXTENSION = "duplicate-extension"
    SELF_SIGNATURE = "self-signature"
    VALIDITY = "validity"
    QUOTE_MALFORMED = "quote-malformed"
    QUOTE_SIGNATURE = "quote-signature"
    QUOTE_VERIFICATION = "quote-verification"
    COLLATERAL_MISSING = "collateral-missing"
    COLLATERAL_EXPIRED = "collateral-expired"
    TCB_STATUS = "tcb-status"
    ADVISORY = "advisory"
    SIMULATED_UNTRUSTED = "simulated-untrusted"
    UNVERIFIED_TEE = "unverified-tee"
    PUBKEY_HASH = "pubkey-hash"
    REPORT_DATA = "report-data"
    REPORT_DATA_PADDING = "report-data-padding"
    TEE_TYPE = "tee-type"
    DEBUG = "debug"
    MEASUREMENT = "measurement-not-allowed"
    NO_MEASUREMENT_POLICY = "no-measurement-policy"
    NONCE = "nonce"
    SPKI = "spki-mismatch"
    EVIDENCE_MALFORMED = "evidence-malformed"
    SIGNING_ADDRESS = "signing-address"  # the "signing-address" claim is malformed
    SIGNING_ADDRESS_MISMATCH = "signing-address-mismatch"  # certificate and evidence differ
    SNP_SIGNATURE = "snp-signature"  # the SEV-SNP report signature does not verify
    SNP_CHAIN = "snp-chain"  # VCEK/VLEK <- ASK/ASVK <- AMD ARK does not hold (or is unreadable)
    SNP_TCB = "snp-tcb"  # the VCEK is not this chip's or TCB's, or the TCB is below the minimum
    SNP_POLICY = "snp-policy"  # the guest policy or firmware is not accepted (SMT, MA, ...)
    EXTRA_QUOTE = "extra-quote"  # a second quote extension disagrees with the evidence
    EVENT_LOG = "event-log"  # dstack: RTMR3 does not replay, or an event's digest is wrong
    MR_CONFIG_ID = "mr-config-id"  # dstack: MRCONFIGID does not name the measured compose hash
    APP_ID = "app-id"  # dstack: the certificate's app id is not the measured one
    ENDORSEMENTS = "endorsements-malformed"  # 2.23.133.5.4.2 / evidence endorsements unusable
    DSTACK_CONFIG = "dstack-config"  # dstack Nitro: the VM config's os_image_hash is not the PCRs'
    NITRO_SIGNATURE = "nitro-signature"  # the COSE_Sign1 signature does not verify
    NITRO_CHAIN = "nitro-chain"  # leaf <- cabundle <- AWS Nitro root G1 does not hold
    NITRO_TIMESTAMP = "nitro-timestamp"  # the document is from the future or too old
    PUBLIC_KEY = "public-key"  # a Nitro document's public_key is not the expected one
    # NVIDIA GPUs and NVSwitches (certmgr.attest.nvidia_verify.GpuReason, prefixed)
    GPU_MALFORMED = "gpu-evidence-malformed"
    GPU_CHAIN = "gpu-chain"  # no chain to the pinned NVIDIA Device Identity CA
    GPU_VALIDITY = "gpu-validity"  # a device or RIM certificate is expired or not yet valid
    GPU_ARCH = "gpu-arch"
    GPU_SIGNATURE = "gpu-signature"  # the SPDM measurement signature does not verify
    GPU_NONCE = "gpu-nonce"
    GPU_FWID = "gpu-fwid"
    GPU_VERSION = "gpu-version"
    GPU_RIM = "gpu-rim"
    GPU_MEASUREMENT = "gpu-measurement"  # measurements differ from NVIDIA's RIMs
    GPU_UNJUDGED = "gpu-measurements-unverified"  # no verified RIMs to judge them by
    GPU_OCSP = "gpu-ocsp"
    GPU_TOPOLOGY = "gpu-topology"
    GPU_MISSING = "gpu-missing"  # --require-gpu and no GPU evidence, or fewer than claimed
    GPU_MODE = "gpu-mode"  # the GPUs are not in confidential-computing mode, or in devtools


@dataclass(frozen=True, slots=True)
class TcbPolicy:
    """Which TCB statuses pass. ``accept`` names every status besides UpToDate explicitly."""

    accept: frozenset[str] = frozenset()
    deny_advisories: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = self.accept - KNOWN_TCB_STATUSES
        if unknown:
            raise VerifyError(f"unknown TCB status(es): {', '.join(sorted(unknown))}")

    def allows(self, status: str) -> bool:
        return status == "UpToDate" or status in self.accept


def load_dev_key(data: bytes) -> bytes:
    """A trusted development attestation key (PEM public key or 64-byte hex x||y) as raw."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            pub = serialization.load_pem_public_key(text)
        except ValueError as e:
            raise VerifyError(f"development key: {e}") from e
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise VerifyError("development key must be an ECDSA P-256 public key")
        nums = pub.public_numbers()
        return nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise VerifyError(f"development key: not PEM or hex: {e}") from e
    if len(raw) != 64:
        raise VerifyError("development key in hex must be 64 bytes (x || y)")
    return raw


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    tcb: TcbPolicy = field(default_factory=TcbPolicy)
    trusted_dev_keys: tuple[bytes, ...] = ()
    policy: PolicyCheck | None = None
    any_measurement: bool = False  # inspect only: skip the measurement decision
    expect_tee: TeeType | None = None
    snp: SnpPolicy = field(default_factory=SnpPolicy)  # SEV-SNP guest policy and TCB floor
    nitro: NitroPolicy = field(default_factory=NitroPolicy)  # Nitro document age and skew
    gpu: GpuPolicy = field(default_factory=GpuPolicy)  # NVIDIA GPUs: OCSP mode, architectures
    require_gpu: bool = False  # fresh evidence must carry trusted GPU evidence


@dataclass(frozen=True, slots=True)
class Failure:
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result: ``trusted`` only when no check failed."""

    tee: str = ""
    status: str = ""
    advisories: tuple[str, ...] = ()
    binding: bool = False
    measurement: Measurement | None = None
    failures: tuple[Failure, ...] = ()
    simulated: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    # The receipt signing key's 20-byte Ethereum address from the "signing-address" claim
    # (None when there is no such claim, or it is malformed: then a failure says so). Only
    # as trustworthy as the verdict: use it when ``trusted``.
    signing_address: bytes | None = None
    gpus: tuple[DeviceResult, ...] = ()  # NVIDIA GPU and NVSwitch results, in evidence order

    @property
    def trusted(self) -> bool:
        return not self.failures and (self.measurement is not None or bool(self.gpus))

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return tuple(f.reason for f in self.failures)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trusted": self.trusted,
            "tee": self.tee,
            "status": self.status,
            "advisories": list(self.advisories),
            "binding": self.binding,
            "simulated": self.simulated,
            "signing_address": (
                "0x" + self.signing_address.hex() if self.signing_address is not None else None
            ),
        }
        if self.measurement is not None:
            out["measurement_id"] = "0x" + measurement_id(self.measurement).hex()
            out["debug"] = self.measurement.debug
            out.update(self.measurement.registers())
        out.update(self.details)
        out["gpus"] = [g.to_json() for g in self.gpus]
        out["failures"] = [{"reason": f.reason.value, "message": f.message} for f in self.failures]
        return out


# -- checks --------------------------------------------------------------------------------


def _dcap_reason(message: str) -> Reason:
    m = message.lower()
    if "expired" in m:
        return Reason.COLLATERAL_EXPIRED
    if "no matching tcb level" in m or "revoked" in m:
        return Reason.TCB_STATUS
    if "signature" in m or "certificate" in m or "cert" in m:
        return Reason.QUOTE_SIGNATURE
    return Reason.QUOTE_VERIFICATION


@dataclass(frozen=True, slots=True)
class QuoteResult:
    parsed: ParsedQuote | None
    status: str
    advisories: tuple[str, ...]
    failures: tuple[Failure, ...]
    details: Mapping[str, Any] = field(default_factory=dict)  # per-TEE extras (SEV-SNP)


def _verdict(
    q: QuoteResult,
    fails: list[Failure],
    binding: bool,
    details: dict[str, Any],
    signing_address: bytes | None = None,
    *,
    gpus: tuple[DeviceResult, ...] = (),
) -> Verdict:
    """The verdict on a verified quote together with the checks made around it."""
    return Verdict(
        gpus=gpus,
        signing_address=signing_address,
        tee=str(q.parsed.tee) if q.parsed else "",
        status=q.status,
        advisories=q.advisories,
        binding=binding,
        measurement=q.parsed.measurement if q.parsed else None,
        failures=tuple(fails),
        simulated=bool(q.parsed and q.parsed.simulated),
        details={**q.details, **details},
    )


_SNP_REASONS = {
    SnpReason.MALFORMED: Reason.QUOTE_MALFORMED,
    SnpReason.COLLATERAL_MISSING: Reason.COLLATERAL_MISSING,
    SnpReason.COLLATERAL_MALFORMED: Reason.SNP_CHAIN,
    SnpReason.CHAIN: Reason.SNP_CHAIN,
    SnpReason.VALIDITY: Reason.COLLATERAL_EXPIRED,
    SnpReason.SIGNATURE: Reason.SNP_SIGNATURE,
    SnpReason.TCB: Reason.SNP_TCB,
    SnpReason.POLICY: Reason.SNP_POLICY,
}


def _verify_snp(
    parsed: ParsedQuote, collateral: Any, now: int, opts: VerifyOptions
) -> tuple[str, list[Failure], dict[str, Any]]:
    """Status, failures and details of a SEV-SNP report (debug is left to the common check)."""
    if not isinstance(collateral, SnpCollateral) or not collateral.vek:
        return (
            "Unverified",
            [
                Failure(
                    Reason.UNVERIFIED_TEE,
                    "no SEV-SNP endorsement certificate (VCEK or VLEK) given: "
                    "the report signature is not verified",
                )
            ],
            {},
        )
    res = verify_snp_report(parsed.raw, collateral, now, opts.snp)
    fails = [
        Failure(_SNP_REASONS[f.reason], f.message)
        for f in res.failures
        if not (f.reason is SnpReason.POLICY and f.check == "debug")
    ]
    return res.status, fails, {"sev_snp": res.details()}


def _intel_details(raw: bytes) -> dict[str, Any]:
    """What an Intel quote's PCK certificate names, for fetching collateral: the FMSPC and
    the PCK CA ("processor" or "platform"). Unverified until the quote verifies."""
    try:
        q = dcap_qvl.parse_quote(raw)
        return {"intel": {"fmspc": str(q.fmspc()).lower(), "pck_ca": str(q.ca())}}
    except (ValueError, TypeError, RuntimeError):
        return {}


_NITRO_REASONS = {
    NitroReason.MALFORMED: Reason.QUOTE_MALFORMED,
    NitroReason.CHAIN: Reason.NITRO_CHAIN,
    NitroReason.VALIDITY: Reason.COLLATERAL_EXPIRED,
    NitroReason.SIGNATURE: Reason.NITRO_SIGNATURE,
    NitroReason.TIMESTAMP: Reason.NITRO_TIMESTAMP,
}


def _verify_nitro(
    parsed: ParsedQuote, now: float, opts: VerifyOptions
) -> tuple[str, list[Failure], dict[str, Any]]:
    """Status, failures and details of a Nitro attestation document."""
    res = verify_nitro_document(parsed.raw, now, opts.nitro)
    fails = [Failure(_NITRO_REASONS[f.reason], f.message) for f in res.failures]
    return res.status, fails, {"nitro": res.details()}


def verify_quote(
    raw: bytes, collateral: Any, now: int, opts: VerifyOptions, *, parsed: ParsedQuote | None = None
) -> QuoteResult:
    """Genuineness, TCB policy, TEE type and debug checks of one quote (no binding).

    ``collateral`` is dcap-qvl's collateral for Intel quotes and a
    :class:`~certmgr.attest.snp_verify.SnpCollateral` for SEV-SNP reports.
    """
    fails: list[Failure] = []
    if parsed is None:
        try:
            parsed = parse_quote_bytes(raw)
        except QuoteError as e:
            return QuoteResult(None, "", (), (Failure(Reason.QUOTE_MALFORMED, str(e)),))
    status, advisories = "", tuple[str, ...]()
    details: dict[str, Any] = {}
    if parsed.tee is TeeType.SEV_SNP:
        status, snp_fails, details = _verify_snp(parsed, collateral, now, opts)
        fails.extend(snp_fails)
    elif parsed.tee is TeeType.NITRO:
        status, nitro_fails, details = _verify_nitro(parsed, now, opts)
        fails.extend(nitro_fails)
    elif parsed.simulated:
        trusted = any(hmac.compare_digest(k, parsed.attestation_key) for k in opts.trusted_dev_keys)
        if not trusted:
            status = "Simulated"
            fails.append(
                Failure(
                    Reason.SIMULATED_UNTRUSTED,
                    "quote is SIMULATED (no TEE) and its development key is not trusted",
                )
            )
        elif not verify_simulated_signature(parsed):
            status = "Simulated"
            fails.append(Failure(Reason.QUOTE_SIGNATURE, "simulated quote signature is invalid"))
        else:
            status = "SimulatedTrustedDevKey"
    elif collateral is None or isinstance(collateral, SnpCollateral):
        details = _intel_details(parsed.raw)
        fails.append(Failure(Reason.COLLATERAL_MISSING, "no collateral to verify the quote"))
    else:
        details = _intel_details(parsed.raw)
        try:
            report = dcap_qvl.verify(parsed.raw, collateral, int(now))
        except ValueError as e:
            msg = str(e).splitlines()[0]
            fails.append(Failure(_dcap_reason(msg), msg))
        else:
            status = str(report.status)
            advisories = tuple(str(a) for a in report.advisory_ids)
            if status == "Revoked" or not opts.tcb.allows(status):
                fails.append(
                    Failure(Reason.TCB_STATUS, f"TCB status {status} is not accepted by policy")
                )
            denied: list[str] = sorted(set(advisories) & opts.tcb.deny_advisories)
            if denied:
                fails.append(Failure(Reason.ADVISORY, f"denied advisories: {', '.join(denied)}"))
    if opts.expect_tee is not None and parsed.tee is not opts.expect_tee:
        fails.append(Failure(Reason.TEE_TYPE, f"expected {opts.expect_tee}, got {parsed.tee}"))
    if parsed.measurement.debug:
        fails.append(Failure(Reason.DEBUG, "TEE runs in debug mode (host can read its memory)"))
    return QuoteResult(parsed, status, advisories, tuple(fails), details)


def check_binding(report_data: bytes, expected: bytes) -> list[Failure]:
    """report_data[:32] must equal expected[:32] and report_data[32:] must be zero."""
    fails: list[Failure] = []
    if len(report_data) != 64 or len(expected) != 64:
        return [Failure(Reason.REPORT_DATA, "report_data must be 64 bytes")]
    if not hmac.compare_digest(report_data[:32], expected[:32]):
        fails.append(Failure(Reason.REPORT_DATA, "report_data does not hash the claims"))
    if report_data[32:] != bytes(32):
        fails.append(Failure(Reason.REPORT_DATA_PADDING, "report_data[32:64] is not all zero"))
    return fails


def _measurement_decision(m: Measurement, opts: VerifyOptions) -> list[Failure]:
    if opts.any_measurement:
        return []
    if opts.policy is None:
        return [
            Failure(Reason.NO_MEASUREMENT_POLICY, "no allowlist or policy to judge the measurement")
        ]
    decision = opts.policy(measurement_id(m), m)
    return [] if decision.allowed else [Failure(Reason.MEASUREMENT, decision.reason)]


def parse_signing_address(claims: Claims | None) -> tuple[bytes | None, list[Failure]]:
    """The ``"signing-address"`` claim as 20 bytes: (None, []) when absent.

    Strict: the claim's byte string holds a CBOR text string ``0x`` followed by exactly 40
    lowercase hex digits, the one form teeproxy emits (no EIP-55 mixed case, no bytes, no
    whitespace); anything else is a :attr:`Reason.SIGNING_ADDRESS` failure and no address.
    """
    if claims is None or "signing-address" not in claims.ours:
        return None, []
    value = claims.ours["signing-address"]
    if type(value) is str and _ADDRESS.fullmatch(value) is not None:
        return bytes.fromhex(value[2:]), []
    shown = repr(value)[:60]
    return None, [
        Failure(
            Reason.SIGNING_ADDRESS,
            f"claim signing-address must be 0x + 40 lowercase hex digits, got {shown}",
        )
    ]


def signing_address_agreement(certificate: Verdict, evidence: Verdict) -> list[Failure]:
    """The certificate and the fresh evidence must name the same signing address (or none).

    Both come from the same TEE at about the same time; a difference means one of them is
    not what this proxy signs receipts with, so neither can be used.
    """
    a, b = certificate.signing_address, evidence.signing_address
    if a is None and b is None:
        return []
    if a is not None and b is not None and hmac.compare_digest(a, b):
        return []

    def show(x: bytes | None) -> str:
        return "0x" + x.hex() if x is not None else "none"

    return [
        Failure(
            Reason.SIGNING_ADDRESS_MISMATCH,
            f"certificate names signing address {show(a)}, evidence names {show(b)}",
        )
    ]


def verify_certificate(
    data: bytes,
    collateral: Any,
    opts: VerifyOptions,
    *,
    now: float | None = None,
    parsed: RaTlsCert | None = None,
) -> Verdict:
    """Verify an RA-TLS certificate (PEM or DER) completely; see the module docstring."""
    now = time.time() if now is None else now
    if parsed is None:
        try:
            parsed = parse_certificate(data)
        except RaTlsError as e:
            return Verdict(failures=(Failure(_ratls_reason(e), str(e)),))
    fails: list[Failure] = []
    details: dict[str, Any] = {}
    if parsed.format == "dstack" and not parsed.self_issued:
        # A dstack leaf is issued by the app's CA (KMS); its key is bound by the quote itself.
        details["issuer_signature"] = "not checked: issued by another CA; the quote binds the key"
    elif not parsed.self_signature_ok:
        fails.append(Failure(Reason.SELF_SIGNATURE, "certificate self-signature does not verify"))
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    if not parsed.not_before <= when < parsed.not_after:
        fails.append(
            Failure(
                Reason.VALIDITY,
                f"certificate valid {parsed.not_before:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{parsed.not_after:%Y-%m-%dT%H:%M:%SZ}, not now",
            )
        )
    carried = certificate_collateral(parsed)
    fails.extend(carried.failures)
    source: str | None = None
    if collateral is not None:
        source = "argument"
    elif carried.collateral is not None:
        collateral, source = carried.collateral, "certificate"
    q = verify_quote(parsed.quote, collateral, int(now), opts)
    fails.extend(q.failures)
    binding = False
    details.update(
        {
            "collateral_source": source,
            "endorsements": dict(carried.details) if carried.details is not None else None,
        }
    )
    if q.parsed is not None:
        if parsed.format == "intel-legacy":
            bind_fails, details["binding_rule"] = _legacy_binding(parsed, q.parsed.report_data)
        elif parsed.format == "dstack":
            bind_fails, details["binding_rule"] = _dstack_checks(parsed, q.parsed, details)
        else:
            bind_fails, details["binding_rule"] = _claims_binding(parsed, q.parsed)
            bind_fails.extend(_extra_quote_checks(parsed, q.parsed, details))
        if not pubkey_hash_matches(parsed):
            bind_fails.insert(
                0, Failure(Reason.PUBKEY_HASH, "claims pubkey-hash is not this certificate's key")
            )
        binding = not bind_fails
        fails.extend(bind_fails)
        if not q.failures:
            fails.extend(_measurement_decision(q.parsed.measurement, opts))
    address, address_fails = parse_signing_address(parsed.claims)
    fails.extend(address_fails)
    return _verdict(
        q,
        fails,
        binding,
        {
            "format": parsed.format,
            "report_data": q.parsed.report_data.hex() if q.parsed else None,
            "quote_extension": parsed.quote_extension,
            "signature_hash": parsed.signature_hash,
            "spki_sha256": parsed.spki_sha256.hex(),
            "not_before": parsed.not_before.isoformat(),
            "not_after": parsed.not_after.isoformat(),
            "claims": parsed.claims.view() if parsed.claims is not None else {},
            **details,
        },
        address,
    )


def _claims_binding(cert: RaTlsCert, parsed: ParsedQuote) -> tuple[list[Failure], str]:
    """report_data is SHA-256(claims) || 0^32 or, in a TDX quote, SHA-384(claims) || 0^16."""
    rules = claims_report_data(cert.claims_bytes, tdx=parsed.tee is TeeType.TDX)
    for name, expected in rules.items():
        if hmac.compare_digest(parsed.report_data, expected):
            return [], name
    return check_binding(parsed.report_data, rules["claims-sha256"]), "none"


def _extra_quote_checks(
    cert: RaTlsCert, main: ParsedQuote, details: dict[str, Any]
) -> list[Failure]:
    """A quote extension next to 2.23.133.5.4.9 must tell the same story: the same quote
    (the Intel SDK copies it), or one of the same TEE and measurement that binds this
    certificate's key by the legacy rule (Gramine's second quote). Its signature is not
    verified: a verifier reading only that extension would verify it."""
    fails: list[Failure] = []
    seen: list[dict[str, Any]] = []
    for oid, raw in cert.extra_quotes:
        if raw == main.raw:
            seen.append({"oid": oid, "relation": "same-quote"})
            continue
        try:
            other = parse_quote_bytes(raw)
        except QuoteError as e:
            fails.append(Failure(Reason.EXTRA_QUOTE, f"quote in extension {oid}: {e}"))
            continue
        if other.tee is not main.tee or measurement_id(other.measurement) != measurement_id(
            main.measurement
        ):
            fails.append(
                Failure(Reason.EXTRA_QUOTE, f"quote in extension {oid} measures other code")
            )
            continue
        rule = legacy_binding(cert, other.report_data)
        if rule is None or other.report_data[32:] != bytes(32):
            fails.append(
                Failure(Reason.EXTRA_QUOTE, f"quote in extension {oid} does not bind this key")
            )
            continue
        seen.append({"oid": oid, "relation": "same-measurement", "binding_rule": rule})
    details["extra_quotes"] = seen
    return fails


_DSTACK_REASONS = {
    "binding": Reason.REPORT_DATA,
    "event-log": Reason.EVENT_LOG,
    "mr-config-id": Reason.MR_CONFIG_ID,
    "app-id": Reason.APP_ID,
    "config": Reason.DSTACK_CONFIG,
}


def _dstack_attestation_checks(
    att: dstack_format.DstackAttestation,
    parsed: ParsedQuote,
    *,
    spki_der: bytes | None = None,
    expected_report_data: bytes | None = None,
    app_id_extension: bytes | None = None,
) -> tuple[list[Failure], dict[str, Any]]:
    """dstack's rules on a TDX quote (RTMR3 replay, MRCONFIGID, app id) or a Nitro document
    (user_data = report_data, os_image_hash), with the binding asked for."""
    if att.platform == "nitro":
        if parsed.tee is not TeeType.NITRO:
            return [
                Failure(Reason.QUOTE_MALFORMED, "dstack Nitro attestation without an NSM document")
            ], {}
        m = parsed.measurement
        res = dstack_format.check_nitro(
            att,
            user_data=parsed.report_data or None,
            pcrs=(m.pcr0, m.pcr1, m.pcr2),
            spki_der=spki_der,
        )
        if expected_report_data is not None and not hmac.compare_digest(
            parsed.report_data, expected_report_data
        ):
            res = dstack_format.DstackCheck(
                (*res.failures, ("binding", "user_data is not the report_data asked for")),
                res.details,
            )
    elif parsed.tee is not TeeType.TDX:
        return [Failure(Reason.QUOTE_MALFORMED, "dstack attestation without a TDX quote")], {}
    else:
        res = dstack_format.check(
            att,
            spki_der=spki_der,
            expected_report_data=expected_report_data,
            quote_report_data=parsed.report_data,
            rt_mr3=parsed.measurement.rt_mr3,
            mr_config_id=parsed.measurement.mr_config_id,
            app_id_extension=app_id_extension,
        )
    return [Failure(_DSTACK_REASONS[c], msg) for c, msg in res.failures], dict(res.details)


def _dstack_checks(
    cert: RaTlsCert, parsed: ParsedQuote, details: dict[str, Any]
) -> tuple[list[Failure], str]:
    """dstack's binding (SHA-512 rule), RTMR3 replay, MRCONFIGID and app id."""
    att = cert.dstack
    if att is None:
        return [
            Failure(Reason.QUOTE_MALFORMED, "dstack certificate without an attestation")
        ], "none"
    fails, found = _dstack_attestation_checks(
        att, parsed, spki_der=cert.spki_der, app_id_extension=cert.dstack_app_id
    )
    details["dstack"] = {**found, "usage": cert.dstack_usage}
    return fails, "dstack-sha512"


@dataclass(frozen=True, slots=True)
class CarriedCollateral:
    """Collateral a certificate or an evidence document carries, ready for
    :func:`verify_quote` (None when it carries none or it is unusable: ``failures`` say)."""

    collateral: Any = None
    failures: tuple[Failure, ...] = ()
    details: Mapping[str, Any] | None = None  # what was found, for the verdict's JSON


def _snp_collateral(table: bytes, report: bytes) -> SnpCollateral:
    try:
        parsed = parse_snp(report)
    except QuoteError:
        parsed = None  # the report's own failure is reported by verify_quote
    try:
        return collateral_from_cert_table(table, report=parsed, source="embedded")
    except QuoteError as e:
        raise VerifyError(str(e)) from e


def certificate_collateral(cert: RaTlsCert) -> CarriedCollateral:
    """The collateral a certificate carries: for an Intel quote the endorsements extension
    ``2.23.133.5.4.2`` (dcap-qvl collateral), for an SEV-SNP report the certificate table in
    the TSM report of its id-pe-cmw extension (RFC 9999; an :class:`SnpCollateral`). Never
    raises: a malformed, critical or mismatched extension is a failure (an id-pe-cmw report
    other than the certificate's evidence is ``extra-quote``)."""

    def fail(message: str, reason: Reason = Reason.ENDORSEMENTS) -> CarriedCollateral:
        return CarriedCollateral(failures=(Failure(reason, message),))

    snp = is_snp_report(cert.quote)
    found = cert.extensions.get(ENDORSEMENTS_OID)
    if found is not None and found[0]:
        return fail(f"extension {ENDORSEMENTS_OID} must not be critical")
    cmw_found = cert.extensions.get(CMW_OID)
    if cmw_found is not None and cmw_found[0]:
        return fail(f"extension {CMW_OID} must not be critical")
    tsm = None
    if cmw_found is not None:
        try:
            tsm = decode_cmw(cmw_found[1])
        except RaTlsError as err:
            return fail(str(err))
        if not hmac.compare_digest(tsm.outblob, cert.quote):
            return fail(
                f"the {CMW_OID} (CMW) extension carries another report than the evidence",
                Reason.EXTRA_QUOTE,
            )
    if snp:
        if found is not None:
            return fail("endorsements (2.23.133.5.4.2) are not defined for SEV-SNP evidence")
        if tsm is None or not tsm.auxblob:
            return CarriedCollateral()
        try:
            collateral = _snp_collateral(tsm.auxblob, cert.quote)
        except VerifyError as err:
            return fail(f"CMW certificate table unusable: {err}")
        return CarriedCollateral(collateral, (), {"kind": "sev-snp", "carrier": "cmw"})
    if found is None:
        return CarriedCollateral()
    try:
        endo = decode_endorsements(found[1])
    except RaTlsError as err:
        return fail(str(err))
    details: dict[str, Any] = {"kind": endo.kind, "version": endo.version}
    if endo.created:
        details["created"] = endo.created
    try:
        details["next_update"] = endo.intel.next_update().isoformat()
        return CarriedCollateral(dcap_collateral(endo.intel), (), details)
    except (ValueError, TypeError) as err:  # VerifyError, EndorsementsError, dcap-qvl's
        return fail(f"endorsements unusable: {err}")


def report_data_key(
    report_data: bytes, expected_key: bytes | None = None
) -> tuple[dict[str, Any] | None, list[Failure]]:
    """The key a dstack DIP-1 report_data names (``dip1::secp256k1c-pk:``...), as details,
    and failures: malformed DIP-1 text, or a key other than ``expected_key`` (also when the
    report_data names none). Returns (None, []) for other report_data and no expectation."""
    try:
        key = parse_dip1(report_data)
    except RaTlsError as e:
        return None, [Failure(Reason.REPORT_DATA, str(e))]
    fails: list[Failure] = []
    if expected_key is not None and (
        key is None or not hmac.compare_digest(key.public_key, expected_key)
    ):
        fails.append(Failure(Reason.REPORT_DATA, "report_data does not name the expected key"))
    if key is None:
        return None, fails
    info: dict[str, Any] = {
        "format": "dip1",
        "algorithm": key.algorithm,
        "public_key": key.public_key.hex(),
    }
    if key.algorithm == "secp256k1":
        info["address"] = "0x" + key.eth_address().hex()
    return info, fails


def verify_dstack_evidence(
    raw: bytes,
    collateral: Any,
    opts: VerifyOptions,
    *,
    now: int,
    report_data: bytes | None = None,
    expected_key: bytes | None = None,
) -> Verdict:
    """Verify dstack evidence that is not a certificate: a guest agent's GetQuote answer
    (JSON: TDX quote, event log, vm_config) or a SCALE ``VersionedAttestation`` (TDX quote
    and events, or an NSM document). The quote is verified as any other; dstack's rules are
    :func:`certmgr.attest.dstack.check` / :func:`~certmgr.attest.dstack.check_nitro`;
    ``report_data`` (the 64 bytes the client asked the app to quote) must be exactly the
    quote's; a DIP-1 key in it is reported (and must be ``expected_key`` when given)."""
    try:
        if dstack_format.looks_like_get_quote(raw):
            att = dstack_format.parse_get_quote_response(raw)
        else:
            att = dstack_format.decode_attestation(raw)
    except RaTlsError as e:
        return Verdict(failures=(Failure(Reason.QUOTE_MALFORMED, str(e)),))
    q = verify_quote(att.quote, collateral, now, opts)
    fails = list(q.failures)
    binding = False
    details: dict[str, Any] = {"dstack": {"encoding": att.encoding, "platform": att.platform}}
    if q.parsed is not None:
        found_fails, found = _dstack_attestation_checks(
            att, q.parsed, expected_report_data=report_data
        )
        details["dstack"] = found
        key, key_fails = report_data_key(q.parsed.report_data, expected_key)
        bind_fails = [f for f in found_fails if f.reason is Reason.REPORT_DATA] + key_fails
        binding = report_data is not None and not bind_fails
        fails.extend(found_fails + key_fails)
        details["report_data"] = q.parsed.report_data.hex()
        details["report_data_key"] = key
        if not q.failures:
            fails.extend(_measurement_decision(q.parsed.measurement, opts))
    return _verdict(q, fails, binding, details)


def _legacy_binding(cert: RaTlsCert, report_data: bytes) -> tuple[list[Failure], str]:
    """The legacy format binds the key itself: report_data[:32] is a SHA-256 of the key
    (:func:`certmgr.attest.ratls.legacy_key_hashes`), report_data[32:] zero."""
    fails: list[Failure] = []
    how = legacy_binding(cert, report_data)
    if how is None:
        fails.append(
            Failure(Reason.REPORT_DATA, "report_data does not hash this certificate's key")
        )
    if report_data[32:] != bytes(32):
        fails.append(Failure(Reason.REPORT_DATA_PADDING, "report_data[32:64] is not all zero"))
    return fails, how or "none"


def verify_quote_verdict(
    raw: bytes,
    collateral: Any,
    opts: VerifyOptions,
    *,
    now: int,
    report_data: bytes | None = None,
    expected_key: bytes | None = None,
) -> Verdict:
    """Verify a bare quote, report or Nitro document (``teeproxy verify-quote``); binding
    only if report_data is given. dstack evidence (GetQuote JSON, SCALE) goes to
    :func:`verify_dstack_evidence`."""
    if dstack_format.looks_like_get_quote(raw) or dstack_format.looks_like_scale_attestation(raw):
        return verify_dstack_evidence(
            raw, collateral, opts, now=now, report_data=report_data, expected_key=expected_key
        )
    q = verify_quote(raw, collateral, now, opts)
    fails = list(q.failures)
    binding = False
    details: dict[str, Any] = {}
    if q.parsed is not None:
        b = check_binding(q.parsed.report_data, report_data) if report_data is not None else []
        key, key_fails = report_data_key(q.parsed.report_data, expected_key)
        binding = report_data is not None and not b
        fails.extend(b + key_fails)
        details["report_data"] = q.parsed.report_data.hex()
        if key is not None:
            details["report_data_key"] = key
        if not q.failures:
            fails.extend(_measurement_decision(q.parsed.measurement, opts))
    return _verdict(q, fails, binding, details)


def _ratls_reason(e: RaTlsError) -> Reason:
    msg = str(e)
    if "duplicate extension" in msg:
        return Reason.DUPLICATE_EXTENSION
    if "CBOR" in msg or "claims" in msg or "extension" in msg:
        return Reason.CBOR
    return Reason.CERT_MALFORMED


def _printable(claims: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in claims.items():
        out[k] = _printable_value(v)
    return out


def _printable_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_printable_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _printable_value(x) for k, x in v.items()}
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return repr(v)


def merge_failures(v: Verdict, extra: Iterable[Failure], **details: Any) -> Verdict:
    """A copy of ``v`` with more failures and details (used by the evidence check)."""
    more = tuple(extra)
    return Verdict(
        tee=v.tee,
        status=v.status,
        advisories=v.advisories,
        binding=v.binding and not more,
        measurement=v.measurement,
        failures=v.failures + more,
        simulated=v.simulated,
        details={**v.details, **details},
        signing_address=v.signing_address,
        gpus=v.gpus,
    )


SNP_CERT_TABLE_FORMAT = "sev-snp-cert-table"


def evidence_collateral(quote: bytes, endorsements: tuple[str, bytes] | None) -> CarriedCollateral:
    """The collateral a nonce evidence document carries (its ``endorsements``): an SEV-SNP
    certificate table for an SNP report. Another format is not used (``details`` names
    it); a malformed table, or one given with an Intel quote, is a failure."""
    if endorsements is None:
        return CarriedCollateral()
    fmt, data = endorsements
    if fmt != SNP_CERT_TABLE_FORMAT:
        return CarriedCollateral(details={"format": fmt, "used": False})
    if not is_snp_report(quote):
        return CarriedCollateral(
            failures=(
                Failure(Reason.ENDORSEMENTS, f"{fmt} endorsements with a quote that is not SNP"),
            )
        )
    try:
        coll = _snp_collateral(data, quote)
    except (ValueError, TypeError) as e:
        return CarriedCollateral(
            failures=(Failure(Reason.ENDORSEMENTS, f"evidence endorsements: {e}"),)
        )
    return CarriedCollateral(coll, (), {"format": fmt, "used": True})


_GPU_REASONS = {
    GpuReason.MALFORMED: Reason.GPU_MALFORMED,
    GpuReason.CHAIN: Reason.GPU_CHAIN,
    GpuReason.VALIDITY: Reason.GPU_VALIDITY,
    GpuReason.ARCH: Reason.GPU_ARCH,
    GpuReason.SIGNATURE: Reason.GPU_SIGNATURE,
    GpuReason.NONCE: Reason.GPU_NONCE,
    GpuReason.FWID: Reason.GPU_FWID,
    GpuReason.VERSION: Reason.GPU_VERSION,
    GpuReason.RIM: Reason.GPU_RIM,
    GpuReason.MEASUREMENT: Reason.GPU_MEASUREMENT,
    GpuReason.UNJUDGED: Reason.GPU_UNJUDGED,
    GpuReason.OCSP: Reason.GPU_OCSP,
    GpuReason.TOPOLOGY: Reason.GPU_TOPOLOGY,
}
# Failures that say the evidence is not genuine or not fresh (the status is then Invalid);
# the others judge genuine evidence (measurements, revocation, topology).
_GPU_GENUINE = frozenset(
    {
        GpuReason.MALFORMED,
        GpuReason.CHAIN,
        GpuReason.VALIDITY,
        GpuReason.ARCH,
        GpuReason.SIGNATURE,
        GpuReason.NONCE,
        GpuReason.FWID,
    }
)


def gpu_failures(result: GpuSetResult) -> list[Failure]:
    """The set's failures as verdict failures, each message naming its device."""
    return [
        Failure(_GPU_REASONS[f.reason], f"{where}: {f.message}")
        for where, f in result.all_failures()
    ]


def _gpu_policy(opts: VerifyOptions) -> GpuPolicy:
    if opts.any_measurement and opts.gpu.judge_measurements:
        return GpuPolicy(
            ocsp=opts.gpu.ocsp,
            architectures=opts.gpu.architectures,
            judge_measurements=False,
            ocsp_max_age=opts.gpu.ocsp_max_age,
        )
    return opts.gpu


def _gpu_status(result: GpuSetResult) -> str:
    genuine = not any(f.reason in _GPU_GENUINE for _, f in result.all_failures())
    return "Verified" if genuine and result.devices else "Invalid"


def verify_gpu_verdict(
    data: bytes,
    collateral: GpuCollateral,
    opts: VerifyOptions,
    *,
    now: int,
    nonce: bytes | None = None,
) -> Verdict:
    """Verify a file of GPU/NVSwitch evidence in NVIDIA's JSON list shape.

    ``nonce`` is the caller's challenge; without one each device is checked against the
    nonce the file names (consistency only: ``binding`` stays false, and a file naming
    none fails with ``gpu-nonce``). Status ``Verified`` when every device is genuine and
    fresh (measurement, OCSP and topology failures are listed and still make it untrusted),
    ``Invalid`` otherwise.
    """
    summary = describe_nvattest_result(data)
    if summary is not None:
        return Verdict(
            tee="nvidia-gpu",
            status="NotEvidence",
            failures=(
                Failure(
                    Reason.GPU_MALFORMED,
                    "an NVIDIA attestation result (claims "
                    f"{summary['claims_version']}, EAT alg {summary['eat_alg']}), not evidence: "
                    "no GPU signed it; verify the evidence it was made from",
                ),
            ),
            details={"nvattest_result": summary},
        )
    try:
        devices = parse_nvidia_evidence_json(data)
    except EvidenceError as e:
        return Verdict(tee="nvidia-gpu", failures=(Failure(Reason.GPU_MALFORMED, str(e)),))
    expected = nonce
    if expected is None:
        named = {d.nonce for d in devices}
        expected = named.pop() if len(named) == 1 else None
    result = verify_devices(devices, expected, now, _gpu_policy(opts), collateral)
    fails = gpu_failures(result)
    return Verdict(
        tee="nvidia-gpu",
        status=_gpu_status(result),
        binding=nonce is not None and not any(f.reason is Reason.GPU_NONCE for f in fails),
        failures=tuple(fails),
        details={
            "nonce": expected.hex() if expected is not None else None,
            "nonce_source": "caller" if nonce is not None else "evidence",
            "gpu_set": dict(result.details),
        },
        gpus=result.devices,
    )


def _evidence_gpus(
    ev: Any, opts: VerifyOptions, gpu_collateral: GpuCollateral | None, now: float
) -> tuple[list[Failure], dict[str, Any], tuple[DeviceResult, ...]]:
    """The fresh evidence's GPU list checked against its own claims (module docstring)."""
    claimed_count = ev.claims.get("gpu-count")
    claimed_mode = ev.claims.get("gpu-mode")
    devices = ev.gpu or ()
    fails: list[Failure] = []
    details: dict[str, Any] = {"gpu_mode": claimed_mode, "gpu_count": claimed_count}
    results: tuple[DeviceResult, ...] = ()
    if devices:
        res = verify_devices(
            devices,
            gpu_nonce(ev.claims_bytes),
            now,
            _gpu_policy(opts),
            gpu_collateral or GpuCollateral(),
        )
        results = res.devices
        fails.extend(gpu_failures(res))
        details["gpu_status"] = _gpu_status(res)
        details["gpu_set"] = dict(res.details)
    if isinstance(claimed_count, int) and claimed_count != len(devices):
        fails.append(
            Failure(
                Reason.GPU_MISSING,
                f"the claims name {claimed_count} GPU devices, evidence is given for "
                f"{len(devices)}",
            )
        )
    if claimed_mode is not None and claimed_mode != "cc":
        fails.append(
            Failure(
                Reason.GPU_MODE,
                f"the proxy reports its GPUs in mode {str(claimed_mode)[:32]!r}, not "
                "confidential computing without devtools ('cc')",
            )
        )
    if opts.require_gpu and not any(r.kind is DeviceKind.GPU for r in results):
        fails.append(Failure(Reason.GPU_MISSING, "GPU evidence is required and none is given"))
    return fails, details, results


def verify_evidence(
    body: bytes,
    nonce: bytes,
    connection_spki_sha256: bytes,
    collateral: Any,
    opts: VerifyOptions,
    *,
    now: float | None = None,
    fallback_collateral: Any = None,
    gpu_collateral: GpuCollateral | None = None,
) -> Verdict:
    """Verify a ``/.well-known/tee/attestation`` answer for the client's ``nonce``.

    ``connection_spki_sha256`` is the SHA-256 of the SPKI of the certificate the client
    received on the connection the evidence came over. Collateral: ``collateral`` when
    given, else the evidence's own endorsements, else ``fallback_collateral`` (what the
    certificate of the same connection carried: :func:`certificate_collateral`).
    """
    now = time.time() if now is None else now
    try:
        ev = parse_evidence_json(body)
    except EvidenceError as e:
        return Verdict(failures=(Failure(Reason.EVIDENCE_MALFORMED, str(e)),))
    carried = evidence_collateral(ev.quote, ev.endorsements)
    fails = list(carried.failures)
    source: str | None = None
    if collateral is not None:
        source = "argument"
    elif carried.collateral is not None:
        collateral, source = carried.collateral, "evidence"
    elif fallback_collateral is not None:
        collateral, source = fallback_collateral, "certificate"
    q = verify_quote(ev.quote, collateral, int(now), opts)
    fails.extend(q.failures)
    binding = False
    if q.parsed is not None:
        bind = check_binding(q.parsed.report_data, report_data_for_claims(ev.claims_bytes))
        got_nonce = ev.claims.nonce
        if got_nonce is None or not hmac.compare_digest(got_nonce, nonce):
            bind.append(Failure(Reason.NONCE, "evidence does not echo the client's nonce"))
        if ev.claims.hash_alg != 1 or not hmac.compare_digest(
            ev.claims.pubkey_hash, connection_spki_sha256
        ):
            bind.append(Failure(Reason.SPKI, "evidence names another key than this connection's"))
        binding = not bind
        fails.extend(bind)
        if not q.failures:
            fails.extend(_measurement_decision(q.parsed.measurement, opts))
    address, address_fails = parse_signing_address(ev.claims)
    fails.extend(address_fails)
    gpu_fails, gpu_details, gpus = _evidence_gpus(ev, opts, gpu_collateral, now)
    if opts.require_gpu:
        fails.extend(gpu_fails)
    elif gpu_fails:
        # Reported, not decisive: the caller did not ask for GPUs (--require-gpu).
        gpu_details["gpu_failures"] = [
            {"reason": f.reason.value, "message": f.message} for f in gpu_fails
        ]
    return _verdict(
        q,
        fails,
        binding,
        {
            "claims": ev.claims.view(),
            "provider": ev.provider,
            "collateral_source": source,
            "endorsements": dict(carried.details) if carried.details is not None else None,
            **gpu_details,
        },
        address,
        gpus=gpus,
    )
