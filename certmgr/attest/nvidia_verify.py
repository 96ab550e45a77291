"""Verification of NVIDIA GPU and NVSwitch evidence against NVIDIA's roots and RIMs.

Pure: a function of the evidence, the RIMs and OCSP responses given, an explicit policy and
the time; no I/O (RIMs and OCSP responses come from :mod:`certmgr.attest.nvidia_collateral`).

For each device, :func:`verify_device` checks, each failure with its :class:`GpuReason`:

1. ``malformed``: the SPDM report parses strictly (:func:`certmgr.attest.nvidia.parse_spdm_report`)
   and the chain is readable PEM;
2. ``chain`` / ``validity``: the attestation chain (FMC leaf <- BROM <- Provisioner ICA <-
   Identity <- NVIDIA Device Identity CA; five certificates for Hopper and NVSwitch, as
   NVIDIA's verifier requires) verifies to the pinned Device Identity CA at the
   verification time (:func:`certmgr.attest.nvidia_chain.check_chain`);
3. ``arch``: the architecture the evidence claims is the leaf's chip (``GH100`` Hopper,
   ``GB1xx``/``GB2xx`` Blackwell, ``LS_10`` NVSwitch) and one the policy accepts;
4. ``signature``: ECDSA P-384/SHA-384 by the leaf key over request || response without
   the signature;
5. ``nonce``: the request's nonce equals, in constant time, the nonce expected (the
   verifier's challenge, or for the proxy's evidence :func:`certmgr.attest.nvidia.gpu_nonce`
   of the claims), and the nonce the evidence names, if any;
6. ``fwid``: the report's FWID equals the leaf certificate's TcbInfo FWID (skipped when the
   report carries none, as NVIDIA's verifier does: NVSwitch reports have none);
7. ``version``: the driver and VBIOS versions the collector reported, if any, are the
   report's;
8. ``rim`` / ``measurement`` / ``measurements-unverified``: the measurements equal the
   golden values of the driver and VBIOS RIMs for this report's versions (verified by
   :func:`certmgr.attest.nvidia_rim.verify_rim`: signature, chain to the pinned RIM root,
   validity at the verification time): every active golden index (0-based, SPDM block
   index + 1) must be present with its size and one of its alternative values; the two
   RIMs may not both set one index; index 35 is skipped while NVDEC0 is disabled (NVIDIA's
   rule). Without the RIMs the measurements are not judged: a failure unless the caller
   inspects only (``judge_measurements=False``);
9. ``ocsp``: certificate status by :class:`OcspMode` (below).

:func:`verify_devices` verifies a set: every device as above, then, when NVSwitch evidence
is present (Protected PCIe, an HGX board), the topology NVIDIA's PPCIe verifier checks:
every GPU reaches the same set of NVSwitches (its non-zero link PDIs, little-endian), that
set is the PDIs of the switches given, and every switch reports the same set of GPUs.

OCSP (:class:`OcspMode`): ``off`` does not look; ``cached`` (the default) judges the
responses given (from a cache or files; a revoked, unknown or invalid answer fails, a
missing one is reported as ``missing`` and does not fail: it works offline and says what
it did not check); ``require`` fails unless every certificate below the root (the device
leaf excepted, which NVIDIA's OCSP service does not answer for) has a good, current
response.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from certmgr.attest.nvidia import (
    DeviceEvidence,
    DeviceKind,
    GpuArch,
    Opaque,
    SpdmReport,
    parse_spdm_report,
)
from certmgr.attest.nvidia_chain import (
    OcspStatus,
    at_time,
    check_chain,
    common_name,
    fingerprint,
    fwid_of,
    load_pem_chain,
    nvidia_anchors,
    ocsp_status,
)
from certmgr.attest.nvidia_rim import Rim, verify_rim
from certmgr.errors import QuoteError, VerifyError

__all__ = [
    "DEFAULT_ARCHITECTURES",
    "DeviceResult",
    "GpuCollateral",
    "GpuFailure",
    "GpuPolicy",
    "GpuReason",
    "GpuSetResult",
    "OcspMode",
    "chip_arch",
    "rim_ids",
    "verify_device",
    "verify_devices",
]


class GpuReason(enum.StrEnum):
    MALFORMED = "malformed"
    CHAIN = "chain"
    VALIDITY = "validity"
    ARCH = "arch"
    SIGNATURE = "signature"
    NONCE = "nonce"
    FWID = "fwid"
    VERSION = "version"
    RIM = "rim"
    MEASUREMENT = "measurement"
    UNJUDGED = "measurements-unverified"
    OCSP = "ocsp"
    TOPOLOGY = "topology"


class OcspMode(enum.StrEnum):
    OFF = "off"
    CACHED = "cached"
    REQUIRE = "require"


DEFAULT_ARCHITECTURES = frozenset({GpuArch.HOPPER, GpuArch.BLACKWELL, GpuArch.LS10})
# NVIDIA's verifiers require exactly five certificates for Hopper GPUs and NVSwitches. No
# Blackwell chain was available to check: between 4 and 6 are accepted there.
_CHAIN_LENGTH = {GpuArch.HOPPER: (5, 5), GpuArch.LS10: (5, 5), GpuArch.BLACKWELL: (4, 6)}
_NVDEC_INDEX = 35


@dataclass(frozen=True, slots=True)
class GpuPolicy:
    """What the caller accepts. ``judge_measurements=False`` inspects only (no RIM needed)."""

    ocsp: OcspMode = OcspMode.CACHED
    architectures: frozenset[GpuArch] = DEFAULT_ARCHITECTURES
    judge_measurements: bool = True
    ocsp_max_age: dt.timedelta = dt.timedelta(days=7)


@dataclass(frozen=True, slots=True)
class GpuCollateral:
    """RIM documents (SWID XML, verified here) and OCSP responses (DER), keyed by the
    SHA-256 of the certificate's DER (hex)."""

    rims: tuple[bytes, ...] = ()
    ocsp: Mapping[str, bytes] = field(default_factory=dict)
    rim_root: x509.Certificate | None = None  # tests: RIMs signed under another root
    device_root: x509.Certificate | None = None  # tests: devices under another root


@dataclass(frozen=True, slots=True)
class GpuFailure:
    reason: GpuReason
    message: str


@dataclass(frozen=True, slots=True)
class DeviceResult:
    index: int
    arch: str
    kind: DeviceKind
    failures: tuple[GpuFailure, ...]
    report: SpdmReport | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        return not self.failures and self.report is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "arch": self.arch,
            "kind": str(self.kind),
            "trusted": self.trusted,
        }
        if self.report is not None:
            out.update(self.report.summary())
        out.update(self.details)
        out["failures"] = [{"reason": f.reason.value, "message": f.message} for f in self.failures]
        return out


@dataclass(frozen=True, slots=True)
class GpuSetResult:
    devices: tuple[DeviceResult, ...]
    failures: tuple[GpuFailure, ...] = ()  # set-level (topology)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        return bool(self.devices) and not self.failures and all(d.trusted for d in self.devices)

    def all_failures(self) -> list[tuple[str, GpuFailure]]:
        """(device label, failure) for every device failure, then the set's own."""
        out = [(f"{d.kind} {d.index} ({d.arch})", f) for d in self.devices for f in d.failures]
        out.extend(("device set", f) for f in self.failures)
        return out


def chip_arch(leaf_cn: str) -> GpuArch | None:
    """The architecture of a device leaf's common name (``GH100 A01 GSP FMC LF``)."""
    chip = leaf_cn.split(" ", 1)[0].upper()
    if chip.startswith("GH1"):
        return GpuArch.HOPPER
    if chip.startswith(("GB1", "GB2")):
        return GpuArch.BLACKWELL
    if chip == "LS_10":
        return GpuArch.LS10
    return None


def rim_ids(report: SpdmReport, leaf_cn: str) -> tuple[str | None, str | None]:
    """NVIDIA RIM service ids (driver, VBIOS) for a GPU report, as NVIDIA names them:
    ``NV_GPU_DRIVER_{chip}_{driver version}`` and
    ``NV_GPU_VBIOS_{project}_{project sku}_{chip sku}_{VBIOS version, no dots, upper}``."""
    chip = leaf_cn.split(" ", 1)[0].upper()
    try:
        driver = report.driver_version
        vbios = report.vbios_version
        project = report.text(Opaque.PROJECT)
        project_sku = report.text(Opaque.PROJECT_SKU)
        chip_sku = report.text(Opaque.CHIP_SKU)
    except QuoteError:
        return None, None
    driver_id = f"NV_GPU_DRIVER_{chip}_{driver}" if driver and chip else None
    vbios_id = None
    if vbios and project and project_sku and chip_sku:
        vbios_id = (
            f"NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_" + vbios.replace(".", "").upper()
        )
    return driver_id, vbios_id


def _ok_id(text: str | None) -> str | None:
    return text if text and text.replace("_", "").replace(".", "").isalnum() else None


def _verify_signature(report: SpdmReport, leaf: x509.Certificate) -> str | None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return "the device leaf key is not ECDSA P-384"
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "SPDM measurement signature does not verify with the device leaf key"
    return None


def _rims_for(
    report: SpdmReport, rims: Sequence[Rim]
) -> tuple[Rim | None, Rim | None, list[GpuFailure]]:
    """The driver and VBIOS RIMs for the report's versions. Several verified RIMs of one
    version must agree on their active measurements (else none is chosen: ambiguous)."""
    wanted = {
        "driver": (report.driver_version or "").lower(),
        "vbios": (report.vbios_version or "").lower(),
    }
    chosen: dict[str, Rim | None] = {}
    fails: list[GpuFailure] = []
    for kind, version in wanted.items():
        candidates = [r for r in rims if r.kind == kind and r.version == version]
        if (
            len({tuple(sorted((i, m.values) for i, m in r.active().items())) for r in candidates})
            > 1
        ):
            fails.append(
                GpuFailure(GpuReason.RIM, f"{len(candidates)} {kind} RIMs for {version} disagree")
            )
            chosen[kind] = None
        else:
            chosen[kind] = candidates[0] if candidates else None
    return chosen["driver"], chosen["vbios"], fails


def _compare(
    report: SpdmReport, driver: Rim, vbios: Rim
) -> tuple[list[GpuFailure], dict[str, Any]]:
    fails: list[GpuFailure] = []
    golden = dict(driver.active())
    for index, m in vbios.active().items():
        if index in golden:
            fails.append(
                GpuFailure(GpuReason.RIM, f"driver and VBIOS RIMs both set measurement {index}")
            )
        golden[index] = m
    runtime = report.measurements
    if len(golden) > len(runtime):
        fails.append(
            GpuFailure(
                GpuReason.MEASUREMENT,
                f"RIMs list {len(golden)} measurements, the report has {len(runtime)}",
            )
        )
    mismatched: list[int] = []
    skipped: list[int] = []
    for index in sorted(golden):
        if index == _NVDEC_INDEX and report.nvdec0_disabled:
            skipped.append(index)
            continue
        value = runtime.get(index + 1)
        m = golden[index]
        if value is None or len(value) != m.size:
            mismatched.append(index)
            continue
        if not any(hmac.compare_digest(value, v) for v in m.values):
            mismatched.append(index)
    if mismatched:
        fails.append(
            GpuFailure(
                GpuReason.MEASUREMENT,
                f"{len(mismatched)} of {len(golden)} measurements differ from the RIMs "
                f"(indexes {', '.join(map(str, mismatched[:16]))}"
                f"{', ...' if len(mismatched) > 16 else ''})",
            )
        )
    return fails, {
        "compared": len(golden) - len(skipped),
        "mismatched_indexes": mismatched,
        "skipped_indexes": skipped,
        "matched": not fails,
    }


def _ocsp(
    chain: Sequence[x509.Certificate],
    start: int,
    *,
    collateral: GpuCollateral,
    policy: GpuPolicy,
    when: dt.datetime,
    what: str,
) -> tuple[list[GpuFailure], dict[str, str]]:
    if policy.ocsp is OcspMode.OFF:
        return [], {"mode": "off"}
    fails: list[GpuFailure] = []
    statuses: dict[str, str] = {"mode": str(policy.ocsp)}
    for i in range(start, len(chain) - 1):
        cert, issuer = chain[i], chain[i + 1]
        status, why = ocsp_status(
            cert,
            issuer,
            chain[i + 1 :],
            collateral.ocsp.get(fingerprint(cert)),
            when,
            max_age=policy.ocsp_max_age,
        )
        statuses[common_name(cert) or fingerprint(cert)] = str(status)
        if status is OcspStatus.GOOD:
            continue
        if status is OcspStatus.MISSING and policy.ocsp is OcspMode.CACHED:
            continue
        fails.append(GpuFailure(GpuReason.OCSP, f"{what} {common_name(cert)!r}: {why}"))
    return fails, statuses


def verify_device(
    ev: DeviceEvidence,
    expected_nonce: bytes | None,
    now: float | dt.datetime,
    policy: GpuPolicy,
    collateral: GpuCollateral,
    *,
    index: int = 0,
    rims: tuple[Sequence[Rim], Sequence[str]] | None = None,
) -> DeviceResult:
    """Verify one device's evidence (module docstring, steps 1-9)."""
    when = at_time(now)
    fails: list[GpuFailure] = []
    details: dict[str, Any] = {}

    def fail(reason: GpuReason, message: str) -> None:
        fails.append(GpuFailure(reason, message))

    try:
        report = parse_spdm_report(ev.report)
    except QuoteError as e:
        return DeviceResult(
            index, str(ev.arch), ev.kind, (GpuFailure(GpuReason.MALFORMED, str(e)),)
        )
    try:
        chain = load_pem_chain(ev.chain_pem)
    except VerifyError as e:
        return DeviceResult(
            index, str(ev.arch), ev.kind, (GpuFailure(GpuReason.MALFORMED, str(e)),), report
        )
    if not chain:
        return DeviceResult(
            index,
            str(ev.arch),
            ev.kind,
            (GpuFailure(GpuReason.MALFORMED, "no certificate"),),
            report,
        )
    leaf = chain[0]
    leaf_cn = common_name(leaf)
    details["leaf"] = leaf_cn
    details["chain_sha256"] = [fingerprint(c) for c in chain]

    # 2. the chain to the pinned Device Identity CA
    root = collateral.device_root or nvidia_anchors().device_root
    lo, hi = _CHAIN_LENGTH[ev.arch]
    if not lo <= len(chain) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        fail(GpuReason.CHAIN, f"attestation chain has {len(chain)} certificates, expected {want}")
    for kind, message in check_chain(chain, root, when, what="attestation chain"):
        fail(GpuReason.VALIDITY if kind == "validity" else GpuReason.CHAIN, message)

    # 3. the architecture
    chip = chip_arch(leaf_cn)
    if chip is not ev.arch:
        fail(GpuReason.ARCH, f"evidence says {ev.arch}, the device certificate is {leaf_cn!r}")
    if ev.arch not in policy.architectures:
        fail(GpuReason.ARCH, f"architecture {ev.arch} is not accepted")

    # 4. the signature
    why = _verify_signature(report, leaf)
    if why is not None:
        fail(GpuReason.SIGNATURE, why)

    # 5. the nonce (constant-time comparisons)
    if ev.nonce is not None and not hmac.compare_digest(ev.nonce, report.request_nonce):
        fail(GpuReason.NONCE, "the nonce the evidence names is not the one the GPU signed")
    if expected_nonce is None:
        fail(GpuReason.NONCE, "no nonce to check the evidence's freshness against")
    elif not hmac.compare_digest(expected_nonce, report.request_nonce):
        fail(GpuReason.NONCE, "the GPU signed another nonce than the one expected")

    # 6. FWID
    try:
        cert_fwid = fwid_of(leaf)
    except VerifyError as e:
        cert_fwid = None
        fail(GpuReason.FWID, str(e))
    try:
        report_fwid = report.fwid
    except QuoteError as e:
        report_fwid = None
        fail(GpuReason.MALFORMED, str(e))
    if report_fwid is not None and (
        cert_fwid is None or not hmac.compare_digest(report_fwid, cert_fwid)
    ):
        fail(GpuReason.FWID, "the report's FWID is not the device certificate's")
    details["fwid_checked"] = report_fwid is not None

    # 7. versions the collector reported
    try:
        driver_version, vbios_version = report.driver_version, report.vbios_version
    except QuoteError as e:
        driver_version = vbios_version = None
        fail(GpuReason.MALFORMED, str(e))
    for key, value in (("driver_version", driver_version), ("vbios_version", vbios_version)):
        claimed = ev.extra.get(key)
        if isinstance(claimed, str) and (value is None or claimed.lower() != value.lower()):
            fail(GpuReason.VERSION, f"collector says {key} {claimed}, the report {value}")

    # 8. measurements against the RIMs (GPUs; NVSwitch RIMs are not read here)
    driver_id, vbios_id = rim_ids(report, leaf_cn) if ev.kind is DeviceKind.GPU else (None, None)
    rim_details: dict[str, Any] = {
        "driver_rim_id": _ok_id(driver_id),
        "vbios_rim_id": _ok_id(vbios_id),
    }
    verified, rim_errors = rims if rims is not None else _verified_rims(collateral, when)
    if rim_errors:
        rim_details["rim_errors"] = list(rim_errors)
    driver_rim, vbios_rim, choice_fails = _rims_for(report, verified)
    fails.extend(choice_fails)
    rim_details["driver_rim"] = driver_rim.summary() if driver_rim else None
    rim_details["vbios_rim"] = vbios_rim.summary() if vbios_rim else None
    if driver_rim is not None and vbios_rim is not None:
        cmp_fails, cmp = _compare(report, driver_rim, vbios_rim)
        fails.extend(cmp_fails)
        rim_details.update(cmp)
        chip_name = leaf_cn.split(" ", 1)[0].upper()
        for r in (driver_rim, vbios_rim):
            if r.product and r.product.upper() != chip_name:
                fail(GpuReason.RIM, f"{r.kind} RIM is for {r.product}, the device is {chip_name}")
    elif policy.judge_measurements:
        missing = [
            f"{k} RIM for {v}"
            for k, v, r in (
                ("driver", driver_version, driver_rim),
                ("VBIOS", vbios_version, vbios_rim),
            )
            if r is None
        ]
        others = sorted({f"{r.kind} {r.version}" for r in verified})
        errors = rim_details.get("rim_errors")
        fail(
            GpuReason.UNJUDGED,
            f"measurements not judged: no verified {' and '.join(missing)}"
            + (f"; the RIMs given are for {', '.join(others)}" if others else "")
            + (f"; RIMs refused: {'; '.join(errors)}" if errors else ""),
        )
    details["rim"] = rim_details

    # 9. certificate status
    ocsp_fails, statuses = _ocsp(
        chain, 1, collateral=collateral, policy=policy, when=when, what="device certificate"
    )
    fails.extend(ocsp_fails)
    details["ocsp"] = statuses
    return DeviceResult(index, str(ev.arch), ev.kind, tuple(fails), report, details)


def _verified_rims(collateral: GpuCollateral, when: dt.datetime) -> tuple[list[Rim], list[str]]:
    """The RIMs that verify, and why the others do not."""
    rims = []
    errors = []
    for doc in collateral.rims:
        try:
            rims.append(verify_rim(doc, when, root_certificate=collateral.rim_root))
        except VerifyError as e:
            errors.append(str(e)[:300])
    return rims, errors


def _topology(
    gpus: Sequence[DeviceResult], switches: Sequence[DeviceResult]
) -> tuple[list[GpuFailure], dict[str, Any]]:
    """NVIDIA's PPCIe topology rule over reports that parsed (module docstring)."""
    fails: list[GpuFailure] = []
    switch_pdis = set()
    for s in switches:
        if s.report is None:
            continue
        own = s.report.pdis()
        if len(own) != 1:
            fails.append(GpuFailure(GpuReason.TOPOLOGY, f"switch {s.index} reports no single PDI"))
            continue
        switch_pdis.add(own[0])
    seen: set[bytes] | None = None
    for g in gpus:
        if g.report is None:
            continue
        links = {p[::-1] for p in g.report.pdis() if p != bytes(8)}
        if seen is None:
            seen = links
        elif links != seen:
            fails.append(GpuFailure(GpuReason.TOPOLOGY, f"GPU {g.index} reaches other NVSwitches"))
    if seen is not None and seen != switch_pdis:
        fails.append(
            GpuFailure(
                GpuReason.TOPOLOGY,
                f"the GPUs reach {len(seen)} NVSwitches, evidence is given for "
                f"{len(switch_pdis)} others or fewer",
            )
        )
    gpu_sets = []
    for s in switches:
        if s.report is None:
            continue
        gpu_sets.append(frozenset(s.report.switch_gpu_pdis()))
    if gpu_sets and len(set(gpu_sets)) != 1:
        fails.append(GpuFailure(GpuReason.TOPOLOGY, "the NVSwitches report different GPUs"))
    elif gpu_sets and len(gpu_sets[0]) != len(gpus):
        fails.append(
            GpuFailure(
                GpuReason.TOPOLOGY,
                f"the NVSwitches connect {len(gpu_sets[0])} GPUs, "
                f"evidence is given for {len(gpus)}",
            )
        )
    return fails, {
        "switches": len(switch_pdis),
        "gpus": len(gpus),
        "checked": True,
    }


def verify_devices(
    devices: Sequence[DeviceEvidence],
    expected_nonce: bytes | None,
    now: float | dt.datetime,
    policy: GpuPolicy,
    collateral: GpuCollateral,
) -> GpuSetResult:
    """Verify every device, then the set (module docstring). RIMs are verified once."""
    when = at_time(now)
    rims = _verified_rims(collateral, when)
    results = [
        verify_device(ev, expected_nonce, when, policy, collateral, index=i, rims=rims)
        for i, ev in enumerate(devices)
    ]
    gpus = [r for r in results if r.kind is DeviceKind.GPU]
    switches = [r for r in results if r.kind is DeviceKind.SWITCH]
    fails: list[GpuFailure] = []
    details: dict[str, Any] = {"gpus": len(gpus), "switches": len(switches)}
    if switches:
        topo_fails, topo = _topology(gpus, switches)
        fails.extend(topo_fails)
        details["topology"] = topo
    return GpuSetResult(tuple(results), tuple(fails), details)
