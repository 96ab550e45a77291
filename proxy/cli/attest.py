"""``teeproxy verify``, ``verify-cert``, ``verify-quote`` and ``measure``: the client side.

Exit codes: 0 trusted (``measure``: parsed), 1 not trusted, 2 usage or input error.
``--json`` prints one JSON object naming at least ``tee``, ``status``, ``binding`` and the
measurement registers under their usual names (see docs/ATTESTATION.md).

``verify https://HOST[:PORT]`` opens one TLS connection asking (by SNI) for the attestation
name, takes the certificate presented, verifies it as an RA-TLS certificate, then asks for
fresh evidence over the *same* connection with a random nonce and checks that the evidence
echoes the nonce and names the key of that connection's certificate.

With ``--manifest M --release-key PEM`` (docs/REPRODUCIBLE.md) the report also names the
build (image digest, commit) when the server's measurement id is one a verified build
manifest predicts.

Collateral: ``--collateral`` / ``--pccs`` / ``--kds`` when given; otherwise what the
evidence carries (the certificate's endorsements extension, the evidence's SEV-SNP
certificate table; for the nonce evidence of an Intel TEE also its certificate's
collateral, the same platform's), so a teeproxy certificate verifies offline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import secrets
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from certmgr.attest import dstack as dstack_format
from certmgr.attest.collateral import CollateralCache
from certmgr.attest.evidence import parse_evidence_json
from certmgr.attest.measurement import TeeType, measurement_id
from certmgr.attest.nitro_verify import NitroPolicy
from certmgr.attest.nvidia import (
    DeviceEvidence,
    describe_nvattest_result,
    looks_like_nvidia_evidence,
    parse_nvidia_evidence_json,
)
from certmgr.attest.nvidia_collateral import OCSP_URL, RIM_SERVICE_URL, NvidiaCollateralSource
from certmgr.attest.nvidia_verify import GpuCollateral, GpuPolicy, OcspMode
from certmgr.attest.oyster import (
    DEFAULT_OYSTER_PORT,
    decode_oyster_body,
    fetch_oyster,
    oyster_target,
    verify_oyster,
)
from certmgr.attest.quote import parse_evidence
from certmgr.attest.ratls import parse_certificate
from certmgr.attest.snp_collateral import KDS_URL, KdsClient, SnpCollateralSource
from certmgr.attest.snp_verify import SnpPolicy
from certmgr.attest.verify import (
    TcbPolicy,
    Verdict,
    VerifyOptions,
    certificate_collateral,
    load_dev_key,
    signing_address_agreement,
    verify_certificate,
    verify_evidence,
    verify_gpu_verdict,
    verify_quote_verdict,
)
from certmgr.errors import EvidenceError, QuoteError, RaTlsError, ReleaseError, VerifyError
from certmgr.policy.allowlist import load_allowlist
from certmgr.release.manifest import BuildManifest
from proxy.cli.manifest import load_manifests
from proxy.errors import UsageError

__all__ = [
    "DEFAULT_ATTESTATION_NAME",
    "Attested",
    "add_attest_options",
    "add_parsers",
    "attest",
    "cmd_measure",
    "demo_attestation_text",
]

DEFAULT_ATTESTATION_NAME = "attestation.teeproxy.invalid"
MAX_RESPONSE = 512 * 1024
MAX_EVIDENCE_FILE = 2 * 1024 * 1024  # dstack GetQuote answers are about 20 KB, quotes 5 KB


def _options(args: argparse.Namespace) -> Any:
    keys = tuple(load_dev_key(Path(p).read_bytes()) for p in args.trust_dev_key or ())
    policy: Any = load_allowlist(args.allowlist) if args.allowlist else None
    if getattr(args, "policy_rpc", None):  # the on-chain policy, k-of-n RPC quorum
        from certmgr.policy.rpc import policy_from_chain  # noqa: PLC0415 - web3: slow import

        if not args.policy_address:
            raise ValueError("--policy-rpc needs --policy-address")
        policy = policy_from_chain(args.policy_rpc, args.policy_address, args.policy_quorum)
    return VerifyOptions(
        tcb=TcbPolicy(
            accept=frozenset(args.accept_status or ()),
            deny_advisories=frozenset(args.deny_advisory or ()),
        ),
        snp=SnpPolicy(
            allow_smt=bool(getattr(args, "snp_allow_smt", False)),
            allow_migration_agent=bool(getattr(args, "snp_allow_migration_agent", False)),
        ),
        nitro=NitroPolicy(max_age=getattr(args, "nitro_max_age", None)),
        trusted_dev_keys=keys,
        policy=policy,
        any_measurement=args.any_measurement,
        expect_tee=TeeType(args.expect_tee) if args.expect_tee else None,
        gpu=GpuPolicy(ocsp=OcspMode(getattr(args, "ocsp", None) or "cached")),
        require_gpu=bool(getattr(args, "require_gpu", False)),
    )


def _gpu_collateral(
    args: argparse.Namespace, devices: tuple[DeviceEvidence, ...], now: float
) -> GpuCollateral:
    """RIMs (``--gpu-rim`` files, the cache, ``--rim-url``) and OCSP answers (``--ocsp``:
    the cache; with ``require`` also ``--ocsp-url``) for these devices."""
    if not devices:
        return GpuCollateral()
    source = NvidiaCollateralSource(
        rim_paths=tuple(getattr(args, "gpu_rim", None) or ()),
        rim_url=getattr(args, "rim_url", None) or "",
        ocsp=OcspMode(getattr(args, "ocsp", None) or "cached"),
        ocsp_url=getattr(args, "ocsp_url", None) or OCSP_URL,
        cache_dir=getattr(args, "cache_dir", None) or "",
    )
    return asyncio.run(source.get(devices, now))


def _collateral(
    args: argparse.Namespace, quote_bytes: bytes, now: float, cert_table: bytes = b""
) -> Any:
    """Collateral for the evidence: DCAP collateral for an Intel quote; for a SEV-SNP report
    its endorsement certificates (from the report's certificate table, ``--collateral``
    PATH, then ``--kds`` URL); None for simulated or unparseable quotes, or when nothing
    was given (the verdict then names what is missing)."""
    try:
        q = parse_evidence(quote_bytes)
    except QuoteError:
        return None
    if q.simulated or q.tee is TeeType.NITRO:  # Nitro: the AWS root ships with the verifier
        return None
    if q.tee is TeeType.SEV_SNP:
        kds_url = getattr(args, "kds", None)
        if not args.collateral and not kds_url and not cert_table:
            return None
        kds = KdsClient(base_url=kds_url, cache_dir=args.cache_dir or "") if kds_url else None
        source = SnpCollateralSource(path=args.collateral or "", kds=kds)
        return asyncio.run(source.get(quote_bytes, cert_table=cert_table))
    if not args.collateral and not args.pccs:
        return None
    cache = CollateralCache(
        pccs_url=args.pccs or "", file=args.collateral or "", cache_dir=args.cache_dir or ""
    )
    return asyncio.run(cache.get(q, now))


def _print(verdict_json: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(verdict_json, indent=2, sort_keys=True))
        return
    trusted = verdict_json.get("trusted")
    print(f"verdict:  {'TRUSTED' if trusted else 'NOT TRUSTED'}")
    for key in ("tee", "status", "binding", "simulated", "measurement_id"):
        if key in verdict_json:
            print(f"{key + ':':<9} {verdict_json[key]}")
    if "format" in verdict_json:
        rule = verdict_json.get("binding_rule", "")
        print(f"format:   {verdict_json['format']} ({verdict_json.get('quote_extension')}, {rule})")
    app = verdict_json.get("dstack")
    if isinstance(app, dict):
        for key in ("app_id", "compose_hash", "instance_id", "os_image_hash", "usage"):
            if app.get(key):
                print(f"  dstack {key}: {app[key]}")
    build = verdict_json.get("build")
    if isinstance(build, dict):
        if build.get("known"):
            print(f"build:    {build['image']} commit {build['commit']}")
            print(f"          ({build['target']} in {build['manifest']}, release key verified)")
        else:
            print("build:    not in any given manifest")
    if "collateral_source" in verdict_json:
        print(f"collateral: {verdict_json['collateral_source'] or 'none'}")
    for f in verdict_json.get("failures", []):
        print(f"  - {f['reason']}: {f['message']}")
    _print_gpus(verdict_json)
    ev = verdict_json.get("evidence")
    if verdict_json.get("evidence_skipped"):
        print(f"nonce evidence: skipped ({verdict_json['evidence_skipped']})")
    if isinstance(ev, dict):
        print(f"nonce evidence: {'ok' if ev.get('trusted') else 'FAILED'}")
        for f in ev.get("failures", []):
            print(f"  - {f['reason']}: {f['message']}")
        _print_gpus(ev)
    if verdict_json.get("simulated"):
        print("WARNING: SIMULATED attestation (no TEE): trusted only because you named the key")


def _print_gpus(verdict_json: dict[str, Any]) -> None:
    for g in verdict_json.get("gpus", []):
        state = "ok" if g.get("trusted") else "FAILED"
        versions = f"driver {g.get('driver_version')}, VBIOS {g.get('vbios_version')}"
        print(f"  {g.get('kind')} {g.get('index')} {g.get('arch')} ({versions}): {state}")
    for f in verdict_json.get("gpu_failures", []):
        print(f"  - (not required) {f['reason']}: {f['message']}")


def _now(args: argparse.Namespace) -> float:
    return float(args.at) if args.at is not None else time.time()


def cmd_measure(args: argparse.Namespace) -> int:
    try:
        q = parse_evidence(_inner_quote(Path(args.file).read_bytes()))
    except (OSError, QuoteError) as e:
        print(f"teeproxy measure: {args.file}: {e}", file=sys.stderr)
        return 2
    mid = "0x" + measurement_id(q.measurement).hex()
    if args.json:
        out = {"tee": str(q.tee), "version": q.version, "measurement_id": mid}
        out["debug"] = q.measurement.debug
        out.update(q.measurement.registers())
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(mid)
    return 0


def _inner_quote(raw: bytes) -> bytes:
    """The quote inside dstack evidence (GetQuote JSON, SCALE attestation), else ``raw``."""
    try:
        if dstack_format.looks_like_get_quote(raw):
            return dstack_format.parse_get_quote_response(raw).quote
        if dstack_format.looks_like_scale_attestation(raw):
            return dstack_format.decode_attestation(raw).quote
    except RaTlsError:
        pass  # the verdict names what is malformed
    return raw


def cmd_verify_gpu(args: argparse.Namespace, raw: bytes) -> int:
    """``verify-quote`` on GPU/NVSwitch evidence in NVIDIA's JSON list shape."""
    try:
        opts = _options(args)
        now = _now(args)
        nonce = bytes.fromhex(args.gpu_nonce) if args.gpu_nonce else None
        if nonce is not None and len(nonce) != 32:
            raise ValueError("--gpu-nonce must be 32 bytes (64 hex digits)")
        try:
            devices = parse_nvidia_evidence_json(raw)
        except EvidenceError:
            devices = ()  # the verdict names what is malformed
        coll = _gpu_collateral(args, devices, now)
    except (OSError, ValueError, VerifyError) as e:
        print(f"teeproxy verify-quote: {e}", file=sys.stderr)
        return 2
    v = verify_gpu_verdict(raw, coll, opts, now=int(now), nonce=nonce)
    _print(v.to_json(), args.json)
    return 0 if v.trusted else 1


def _join_lists(a: bytes, b: bytes) -> bytes:
    """Two JSON evidence lists as one (NVSwitch evidence comes in a file of its own)."""
    first, second = json.loads(a), json.loads(b)
    if not isinstance(first, list) or not isinstance(second, list):
        raise ValueError("--nvswitch-evidence: both files must be JSON lists")
    return json.dumps(first + second).encode()


def cmd_verify_quote(args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_bytes()
        if len(raw) > MAX_EVIDENCE_FILE:
            raise ValueError(f"{args.file}: larger than {MAX_EVIDENCE_FILE} bytes")
        if looks_like_nvidia_evidence(raw) or describe_nvattest_result(raw) is not None:
            for extra in args.nvswitch_evidence or ():
                raw = _join_lists(raw, Path(extra).read_bytes())
            return cmd_verify_gpu(args, raw)
        opts = _options(args)
        now = _now(args)
        coll = _collateral(args, _inner_quote(raw), now)
        rd = bytes.fromhex(args.report_data) if args.report_data else None
        key = bytes.fromhex(args.expect_key) if args.expect_key else None
    except (OSError, ValueError, VerifyError) as e:
        print(f"teeproxy verify-quote: {e}", file=sys.stderr)
        return 2
    v = verify_quote_verdict(raw, coll, opts, now=int(now), report_data=rd, expected_key=key)
    out = v.to_json()
    _print(out, args.json)
    return 0 if v.trusted else 1


def cmd_verify_cert(args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
        opts = _options(args)
        now = _now(args)
    except (OSError, ValueError, VerifyError) as e:
        print(f"teeproxy verify-cert: {e}", file=sys.stderr)
        return 2
    try:
        parsed = parse_certificate(data)
    except RaTlsError:
        parsed = None  # verify_certificate reports the reason
    try:
        coll = _collateral(args, parsed.quote, now) if parsed else None
    except (OSError, VerifyError) as e:
        print(f"teeproxy verify-cert: {e}", file=sys.stderr)
        return 2
    v = verify_certificate(data, coll, opts, now=now, parsed=parsed)
    _print(v.to_json(), args.json)
    return 0 if v.trusted else 1


def _http_get(sock: ssl.SSLSocket, host: str, target: str) -> tuple[int, bytes]:
    req = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
    req += "Connection: close\r\n\r\n"
    sock.sendall(req.encode())
    buf = b""
    while len(buf) <= MAX_RESPONSE:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = _content_length(head)
            if length is not None and len(body) >= length:
                break
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no complete HTTP response")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("malformed HTTP status line")
    length = _content_length(head)
    return int(status_line[1]), body[:length] if length is not None else body


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


@dataclass(frozen=True, slots=True)
class Attested:
    """What ``teeproxy verify https://HOST`` found, for commands that build on it.

    ``trusted`` is the whole decision (certificate, and the fresh evidence unless skipped,
    agreeing with each other); ``verdict`` is the certificate's, and its
    ``signing_address`` / ``measurement`` are what the attestation names (use them only
    when ``trusted``); ``report`` is the JSON ``teeproxy verify --json`` prints.
    """

    trusted: bool
    verdict: Verdict
    evidence: Verdict | None
    report: dict[str, Any]

    @property
    def signing_address(self) -> bytes | None:
        return self.verdict.signing_address if self.trusted else None

    @property
    def measurement_id(self) -> bytes | None:
        m = self.verdict.measurement
        return measurement_id(m) if self.trusted and m is not None else None


def attest(args: argparse.Namespace) -> Attested:
    """Connect to ``args.url``, verify its RA-TLS certificate, then fresh evidence.

    ``args`` carries the options of :func:`add_attest_options` (``url``, ``sni``,
    ``timeout``, ``no_nonce`` and the trust options). Raises :class:`UsageError` for
    usage and connection errors; a verdict that is not trusted is returned, not raised.
    """

    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        raise UsageError("expected https://HOST[:PORT]")
    try:
        port = url.port or 443
        opts = _options(args)
    except (OSError, ValueError, VerifyError) as e:
        raise UsageError(str(e)) from e
    # Certificate checking is ours (RA-TLS), not the WebPKI's: the handshake accepts any
    # certificate and nothing is sent before the verdict on it.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    now = _now(args)
    ev: Verdict | None = None
    try:
        with (
            socket.create_connection((url.hostname, port), timeout=args.timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=args.sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            if not der:
                raise ValueError("server presented no certificate")
            try:
                parsed = parse_certificate(der)
            except RaTlsError:
                parsed = None
            coll = _collateral(args, parsed.quote, now) if parsed else None
            verdict = verify_certificate(der, coll, opts, now=now, parsed=parsed)
            out = verdict.to_json()
            out["url"] = args.url
            out["sni"] = args.sni
            evidence_ok = True
            if parsed is not None and parsed.format == "dstack" and not args.no_nonce:
                # A dstack app serves its own RA-TLS certificate and no teeproxy evidence
                # endpoint: the handshake proved the key the quote binds; nothing is asked.
                out["evidence"] = None
                out["evidence_skipped"] = (
                    "dstack app: no teeproxy evidence endpoint; freshness is the "
                    "certificate's (its quote binds the key this connection proved)"
                )
                if getattr(args, "require_nonce", False):
                    evidence_ok = False
                    out["trusted"] = False
                    out["failures"].append(
                        {"reason": "nonce", "message": "no fresh evidence (dstack app)"}
                    )
            elif verdict.trusted and not args.no_nonce:
                nonce = secrets.token_bytes(32)
                status, body = _http_get(
                    tls, url.netloc, f"/.well-known/tee/attestation?nonce={nonce.hex()}"
                )
                spki_hash = hashlib.sha256(parsed.spki_der).digest() if parsed else b""
                if status != 200:
                    ev_json: dict[str, Any] = {
                        "trusted": False,
                        "failures": [{"reason": "evidence-malformed", "message": f"HTTP {status}"}],
                    }
                else:
                    carried = certificate_collateral(parsed) if parsed and coll is None else None
                    gpu_coll = _gpu_collateral(args, _evidence_devices(body), now)
                    ev = verify_evidence(
                        body,
                        nonce,
                        spki_hash,
                        coll,
                        opts,
                        now=now,
                        fallback_collateral=carried.collateral if carried else None,
                        gpu_collateral=gpu_coll,
                    )
                    ev_json = ev.to_json()
                    if ev.measurement != verdict.measurement:
                        ev_json["trusted"] = False
                        ev_json["failures"].append(
                            {
                                "reason": "measurement-mismatch",
                                "message": "evidence measurement differs from the certificate's",
                            }
                        )
                    for f in signing_address_agreement(verdict, ev):
                        ev_json["trusted"] = False
                        ev_json["failures"].append({"reason": f.reason.value, "message": f.message})
                evidence_ok = bool(ev_json["trusted"])
                out["evidence"] = ev_json
                out["trusted"] = evidence_ok
    except (OSError, ValueError, VerifyError) as e:
        raise UsageError(f"{args.url}: {e}") from e
    return Attested(verdict.trusted and evidence_ok, verdict, ev, out)


def _evidence_devices(body: bytes) -> tuple[DeviceEvidence, ...]:
    """The GPU devices of an evidence answer, to fetch their collateral (none if malformed:
    the verdict says so)."""
    try:
        return parse_evidence_json(body).gpu or ()
    except EvidenceError:
        return ()


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        manifests = _manifests(args)
        result = attest(args)
    except (UsageError, ReleaseError) as e:
        print(f"teeproxy verify: {e}", file=sys.stderr)
        return 2
    if manifests:
        m = result.verdict.measurement
        result.report["build"] = _build_of(manifests, measurement_id(m) if m else None)
    _print(result.report, args.json)
    return 0 if result.trusted else 1


def _manifests(args: argparse.Namespace) -> list[tuple[str, BuildManifest]]:
    """The ``--manifest`` files, each verified under a ``--release-key`` (required)."""
    paths = getattr(args, "manifest", None) or []
    if not paths:
        if getattr(args, "release_key", None):
            raise UsageError("--release-key goes with --manifest")
        return []
    return list(zip(paths, load_manifests(paths, args.release_key or []), strict=True))


def _build_of(manifests: list[tuple[str, BuildManifest]], mid: bytes | None) -> dict[str, Any]:
    """What the verified manifests say about the build whose measurement id is ``mid``."""
    if mid is not None:
        for path, m in manifests:
            p = m.target_for(mid)
            if p is not None:
                return {
                    "known": True,
                    "manifest": path,
                    "target": p.target,
                    "image": f"{m.image_name}@{m.image_digest}",
                    "image_digest": m.image_digest,
                    "commit": m.commit,
                    "source_date_epoch": m.source_date_epoch,
                    "release_key_id": m.key_id,
                }
    return {"known": False, "manifests": [path for path, _ in manifests]}


def cmd_verify_oyster(args: argparse.Namespace) -> int:
    """An Oyster enclave: its attestation server's Nitro document, with what was asked for."""
    try:
        opts = _options(args)
        now = _now(args)
        nonce = secrets.token_bytes(32) if args.fresh_nonce else None
        pk = bytes.fromhex(args.public_key) if args.public_key else None
        ud = bytes.fromhex(args.user_data) if args.user_data else None
        target = oyster_target(args.format, public_key=pk, user_data=ud, nonce=nonce)
        raw = decode_oyster_body(fetch_oyster(args.url, target, timeout=args.timeout), args.format)
    except (OSError, ValueError, VerifyError) as e:
        print(f"teeproxy verify-oyster: {e}", file=sys.stderr)
        return 2
    v = verify_oyster(raw, opts, now=now, public_key=pk, user_data=ud, nonce=nonce)
    out = v.to_json()
    out["url"] = args.url
    _print(out, args.json)
    return 0 if v.trusted else 1


def _common(p: argparse.ArgumentParser, *, collateral: bool = True, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument(
        "--allowlist", help="file of allowed measurement ids (hex bytes32, one per line)"
    )
    p.add_argument(
        "--policy-rpc",
        action="append",
        metavar="URL",
        help="judge the measurement by the on-chain policy read from this JSON-RPC endpoint; "
        "repeat for a quorum (docs/GOVERNANCE.md)",
    )
    p.add_argument("--policy-address", metavar="ADDR", help="the MeasurementPolicy contract")
    p.add_argument(
        "--policy-quorum", type=int, default=1, help="endpoints that must agree (default 1)"
    )
    p.add_argument(
        "--any-measurement",
        action="store_true",
        help="do not judge the measurement (inspection only; never for trust decisions)",
    )
    p.add_argument(
        "--trust-dev-key",
        action="append",
        metavar="PEM",
        help="accept SIMULATED quotes signed by this development key (INSECURE)",
    )
    p.add_argument(
        "--accept-status",
        action="append",
        metavar="STATUS",
        help="accept this TCB status besides UpToDate (e.g. SWHardeningNeeded); repeatable",
    )
    p.add_argument(
        "--deny-advisory", action="append", metavar="ID", help="reject this advisory (INTEL-SA-…)"
    )
    p.add_argument("--expect-tee", choices=tuple(t.value for t in TeeType))
    p.add_argument(
        "--nitro-max-age",
        type=float,
        metavar="SECONDS",
        help="Nitro: reject documents older than this at the verification time",
    )
    p.add_argument("--at", type=int, help="verify as of this UNIX time (default: now)")
    p.add_argument(
        "--snp-allow-smt", action="store_true", help="SEV-SNP: accept guests that allow SMT"
    )
    p.add_argument(
        "--snp-allow-migration-agent",
        action="store_true",
        help="SEV-SNP: accept guests that allow a migration agent",
    )
    if collateral:
        p.add_argument(
            "--collateral",
            help="Intel: collateral JSON file (dcap-qvl format); SEV-SNP: a PEM/DER file or a "
            "directory of the VCEK or VLEK and optionally ASK/ASVK and ARK",
        )
        p.add_argument("--pccs", help="Intel: PCCS URL to fetch collateral from")
        p.add_argument(
            "--kds",
            metavar="URL",
            help=f"SEV-SNP: AMD KDS to fetch the VCEK from (AMD's is {KDS_URL}); fetched once "
            "per chip and TCB and cached in --cache-dir",
        )
        p.add_argument("--cache-dir", help="cache fetched collateral here")
        p.add_argument(
            "--gpu-rim",
            action="append",
            metavar="PATH",
            help="NVIDIA GPUs: a driver or VBIOS RIM (SWID XML) file or a directory of them; "
            "repeatable",
        )
        p.add_argument(
            "--rim-url",
            metavar="URL",
            help=f"NVIDIA GPUs: fetch missing RIMs from this RIM service (NVIDIA's is "
            f"{RIM_SERVICE_URL}); cached in --cache-dir",
        )
        p.add_argument(
            "--ocsp",
            choices=[m.value for m in OcspMode],
            default="cached",
            help="NVIDIA GPUs: certificate status. off: not checked; cached (default): the "
            "answers in --cache-dir are judged, none is fetched, a missing one is reported; "
            "require: every certificate needs a good answer, fetched from --ocsp-url",
        )
        p.add_argument("--ocsp-url", metavar="URL", help=f"OCSP responder (default {OCSP_URL})")
    p.add_argument(
        "--require-gpu",
        action="store_true",
        help="fresh evidence must carry trusted NVIDIA GPU evidence (CC mode, no devtools)",
    )


def add_attest_options(p: argparse.ArgumentParser) -> None:
    """The options of ``teeproxy verify`` except the URL, ``--json`` and ``--no-nonce``.

    For commands that call :func:`attest` (``receipt verify --attest``, ``policy
    register-signer``): the caller adds its own URL argument with ``dest="url"``. Fresh
    evidence is always checked.
    """
    p.add_argument("--sni", default=DEFAULT_ATTESTATION_NAME, help="attestation server name")
    p.add_argument("--timeout", type=float, default=10.0)
    _common(p, json_flag=False)
    p.set_defaults(no_nonce=False)


def add_parsers(sub: Any) -> None:
    """Register the attestation subcommands on ``teeproxy``'s subparsers."""
    v = sub.add_parser("verify", help="connect, verify the RA-TLS certificate and fresh evidence")
    v.add_argument("url", help="https://HOST[:PORT]")
    v.add_argument("--sni", default=DEFAULT_ATTESTATION_NAME, help="attestation server name")
    v.add_argument("--timeout", type=float, default=10.0)
    v.add_argument("--no-nonce", action="store_true", help="skip the fresh-evidence (nonce) check")
    v.add_argument(
        "--manifest",
        action="append",
        metavar="FILE",
        help="a signed build manifest: report the image digest and commit of the build "
        "whose measurement id it predicts (needs --release-key)",
    )
    v.add_argument(
        "--release-key", action="append", metavar="PEM", help="release public key of manifests"
    )
    v.add_argument(
        "--require-nonce",
        action="store_true",
        help="fail when no fresh evidence can be asked for (a dstack app's certificate)",
    )
    _common(v)
    v.set_defaults(func=cmd_verify)

    c = sub.add_parser(
        "verify-cert",
        help="verify an RA-TLS certificate file (PEM or DER); without --collateral, with the "
        "collateral it carries (offline)",
    )
    c.add_argument("file")
    _common(c)
    c.set_defaults(func=cmd_verify_cert)

    q = sub.add_parser(
        "verify-quote",
        help="verify a quote, SEV-SNP report, Nitro document or dstack attestation file",
    )
    q.add_argument("file")
    q.add_argument("--report-data", help="expected report_data (128 hex digits)")
    q.add_argument(
        "--expect-key",
        metavar="HEX",
        help="dstack: the key the report_data must name (dip1::secp256k1c-pk:, compressed)",
    )
    q.add_argument(
        "--gpu-nonce",
        metavar="HEX",
        help="NVIDIA GPU evidence: the nonce you asked for (default: the one the file names, "
        "which shows consistency only)",
    )
    q.add_argument(
        "--nvswitch-evidence",
        action="append",
        metavar="FILE",
        help="NVIDIA: NVSwitch evidence (same JSON shape) verified with the GPUs as one set",
    )
    _common(q)
    q.set_defaults(func=cmd_verify_quote)

    o = sub.add_parser(
        "verify-oyster",
        help="fetch and verify a Marlin Oyster enclave's Nitro attestation document",
    )
    o.add_argument(
        "url", help=f"http://HOST[:PORT] of its attestation server (port {DEFAULT_OYSTER_PORT})"
    )
    o.add_argument(
        "--format", choices=("raw", "hex"), default="raw", help="/attestation/raw or /hex"
    )
    o.add_argument(
        "--fresh-nonce",
        action="store_true",
        help="send a random nonce and require it in the document (the custom server only)",
    )
    o.add_argument("--public-key", metavar="HEX", help="the public key the document must carry")
    o.add_argument("--user-data", metavar="HEX", help="the user data the document must carry")
    o.add_argument("--timeout", type=float, default=10.0)
    _common(o, collateral=False)
    o.set_defaults(func=cmd_verify_oyster, nitro_max_age=300.0)


def demo_attestation_text(cfg: Any, port: int) -> str:
    """The demo banner's attestation paragraph (the simulated provider, loudly insecure)."""
    a = cfg.attestation
    if a.provider != "simulated":
        return ""
    key = a.simulated_key_file or str(
        Path(cfg.state_dir) / "attestation" / "dev-attestation-key.sealed"
    )
    pub = key.removesuffix(".sealed") + ".pub.pem"
    return f"""
!!! ATTESTATION IS SIMULATED: INSECURE, NO TEE. Quotes are signed by a development key on
!!! this machine; they prove nothing about the code that runs. Development only.
RA-TLS certificate (SNI {a.server_name}) and fresh evidence, verified with that key trusted:
  teeproxy verify https://127.0.0.1:{port} --trust-dev-key {pub} --any-measurement
Print the measurement id, then allow exactly it:
  teeproxy verify https://127.0.0.1:{port} --trust-dev-key {pub} --any-measurement --json
  echo 0x<measurement_id> > allow.txt
  teeproxy verify https://127.0.0.1:{port} --trust-dev-key {pub} --allowlist allow.txt
Check a response's signed receipt (Teeproxy-Receipt header) against the attested signer:
  teeproxy receipt verify --attest https://127.0.0.1:{port} --trust-dev-key {pub} \\
    --allowlist allow.txt --request req.json --response resp.json --receipt-header VALUE
"""
