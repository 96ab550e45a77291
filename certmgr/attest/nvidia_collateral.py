"""Where NVIDIA GPU collateral comes from: RIM files, NVIDIA's RIM service, OCSP (I/O).

The verifier (:mod:`certmgr.attest.nvidia_verify`) is pure and takes a
:class:`~certmgr.attest.nvidia_verify.GpuCollateral`; this module builds one:

- **RIMs**: files (or directories of ``*.swidtag`` / ``*.xml``, at most
  :data:`MAX_RIM_FILES`) the caller names; then, for each GPU whose driver or VBIOS RIM is
  not among them, ``cache_dir/nvidia-rim/{id}.swidtag``; then, with a ``rim_url``, NVIDIA's
  RIM service (``GET {rim_url}{id}``, answer ``{"id": ..., "rim": "<base64 SWID XML>"}``;
  ids as :func:`certmgr.attest.nvidia_verify.rim_ids` names them), cached on disk. What is
  fetched is only cached; it is trusted only when :func:`~certmgr.attest.nvidia_rim.verify_rim`
  verifies it at verification time, so a bad cache entry cannot make evidence trusted.
- **OCSP** (:class:`~certmgr.attest.nvidia_verify.OcspMode`): ``off`` reads nothing;
  ``cached`` reads ``cache_dir/nvidia-ocsp/{sha256 of the certificate}.der`` and never the
  network; ``require`` also asks the OCSP responder (``ocsp_url``, NVIDIA's by default) for
  every certificate with no current cached answer, with a fresh nonce that the answer must
  echo (RFC 8954), and caches the answer.

These are the only parts of GPU verification that need the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from certmgr.attest.nvidia import DeviceEvidence, DeviceKind, parse_spdm_report
from certmgr.attest.nvidia_chain import (
    OcspStatus,
    at_time,
    common_name,
    fingerprint,
    load_pem_chain,
    ocsp_status,
)
from certmgr.attest.nvidia_rim import MAX_RIM_SIZE, parse_rim_unverified
from certmgr.attest.nvidia_verify import GpuCollateral, OcspMode, rim_ids
from certmgr.errors import CollateralUnavailable, QuoteError, VerifyError
from certmgr.keys import atomic_write
from certmgr.log import attest_log as log

__all__ = [
    "MAX_RIM_FILES",
    "OCSP_URL",
    "RIM_SERVICE_URL",
    "NvidiaCollateralSource",
    "read_rim_paths",
]

RIM_SERVICE_URL = "https://rim.attestation.nvidia.com/v1/rim/"
OCSP_URL = "https://ocsp.ndis.nvidia.com/"
MAX_RIM_FILES = 32
MAX_OCSP_RESPONSE = 64 * 1024
_RIM_ID = re.compile(r"NV_GPU_(DRIVER|VBIOS)_[A-Za-z0-9_.]{1,96}", re.ASCII)


def read_rim_paths(paths: Sequence[str | os.PathLike[str]]) -> tuple[bytes, ...]:
    """The RIM documents in these files or directories (blocking; capped in count and size)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix in (".swidtag", ".xml")))
        else:
            files.append(p)
    if len(files) > MAX_RIM_FILES:
        raise VerifyError(f"more than {MAX_RIM_FILES} RIM files")
    out = []
    for f in files:
        try:
            with f.open("rb") as fh:
                doc = fh.read(MAX_RIM_SIZE + 1)
        except OSError as e:
            raise VerifyError(f"RIM {f}: {e}") from e
        if len(doc) > MAX_RIM_SIZE:
            raise VerifyError(f"RIM {f} exceeds {MAX_RIM_SIZE} bytes")
        out.append(doc)
    return tuple(out)


@dataclass
class NvidiaCollateralSource:
    """RIMs and OCSP answers for a set of devices (module docstring)."""

    rim_paths: tuple[str, ...] = ()
    rim_url: str = ""
    ocsp: OcspMode = OcspMode.CACHED
    ocsp_url: str = OCSP_URL
    cache_dir: str = ""
    timeout: float = 10.0

    async def get(
        self, devices: Sequence[DeviceEvidence], now: float | dt.datetime
    ) -> GpuCollateral:
        when = at_time(now)
        rims = list(await asyncio.to_thread(read_rim_paths, self.rim_paths))
        have = {_rim_key(doc) for doc in rims}
        async with aiohttp.ClientSession() as session:
            for rim_id in _wanted_rims(devices):
                if _id_version(rim_id) in have:
                    continue
                doc = await self._rim(session, rim_id)
                if doc is not None:
                    rims.append(doc)
                    have.add(_rim_key(doc))
            responses = await self._ocsp_all(session, devices, when)
        return GpuCollateral(rims=tuple(rims), ocsp=responses)

    # -- RIMs -------------------------------------------------------------------------

    async def _rim(self, session: aiohttp.ClientSession, rim_id: str) -> bytes | None:
        path = Path(self.cache_dir) / "nvidia-rim" / f"{rim_id}.swidtag" if self.cache_dir else None
        if path is not None:
            cached = await asyncio.to_thread(_read_capped, path, MAX_RIM_SIZE)
            if cached is not None:
                return cached
        if not self.rim_url:
            return None
        try:
            body = await self._http(session, "GET", self.rim_url + rim_id, None, 4 * MAX_RIM_SIZE)
        except _NotFound:
            # NVIDIA does not know this driver or VBIOS: the verdict says it is not judged.
            log.warning("the RIM service has no %s", rim_id)
            return None
        try:
            doc = base64.b64decode(json.loads(body)["rim"], validate=True)
            parse_rim_unverified(doc)
        except (ValueError, KeyError, TypeError, binascii.Error, VerifyError) as e:
            raise CollateralUnavailable(f"RIM service answer for {rim_id} unusable: {e}") from e
        if path is not None:
            await asyncio.to_thread(_write, path, doc)
        log.info("fetched NVIDIA RIM %s", rim_id)
        return doc

    # -- OCSP -------------------------------------------------------------------------

    async def _ocsp_all(
        self, session: aiohttp.ClientSession, devices: Sequence[DeviceEvidence], when: dt.datetime
    ) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if self.ocsp is OcspMode.OFF:
            return out
        for ev in devices:
            try:
                chain = load_pem_chain(ev.chain_pem)
            except VerifyError:
                continue  # the verifier reports it
            for i in range(1, len(chain) - 1):
                cert, issuer = chain[i], chain[i + 1]
                key = fingerprint(cert)
                if key in out:
                    continue
                answer = await self._ocsp_one(session, cert, issuer, chain[i + 1 :], when)
                if answer is not None:
                    out[key] = answer
        return out

    async def _ocsp_one(
        self,
        session: aiohttp.ClientSession,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        above: Sequence[x509.Certificate],
        when: dt.datetime,
    ) -> bytes | None:
        path = (
            Path(self.cache_dir) / "nvidia-ocsp" / f"{fingerprint(cert)}.der"
            if self.cache_dir
            else None
        )
        cached = None
        if path is not None:
            cached = await asyncio.to_thread(_read_capped, path, MAX_OCSP_RESPONSE)
        if self.ocsp is OcspMode.CACHED:
            return cached
        if cached is not None and ocsp_status(cert, issuer, above, cached, when)[0] in (
            OcspStatus.GOOD,
            OcspStatus.REVOKED,
        ):
            return cached
        nonce = secrets.token_bytes(32)
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(cert, issuer, hashes.SHA384())
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        try:
            body = await self._http(session, "POST", self.ocsp_url, request, MAX_OCSP_RESPONSE)
        except CollateralUnavailable as e:
            # Fail closed in the verifier, which then has no current answer for this one.
            log.warning("OCSP for %r: %s", common_name(cert), e)
            return cached
        try:
            resp = ocsp.load_der_ocsp_response(body)
            echoed = (
                resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
                if resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
                else None
            )
        except (ValueError, x509.ExtensionNotFound) as e:
            raise CollateralUnavailable(
                f"OCSP answer for {common_name(cert)!r} unusable (or without nonce): {e}"
            ) from e
        if echoed != nonce:
            raise CollateralUnavailable(f"OCSP answer for {common_name(cert)!r}: nonce differs")
        if path is not None:
            await asyncio.to_thread(_write, path, body)
        return body

    async def _http(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes | None,
        cap: int,
    ) -> bytes:
        headers = {"Content-Type": "application/ocsp-request"} if body is not None else {}
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status == 404:
                    raise _NotFound(f"{url}: HTTP 404")
                if resp.status != 200:
                    raise CollateralUnavailable(f"{url}: HTTP {resp.status}")
                data = await resp.content.read(cap + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CollateralUnavailable(f"{url}: {e}") from e
        if len(data) > cap:
            raise CollateralUnavailable(f"{url}: answer larger than {cap} bytes")
        return data


class _NotFound(CollateralUnavailable):
    """The service answered 404: it has no such document."""


def _wanted_rims(devices: Sequence[DeviceEvidence]) -> list[str]:
    ids: list[str] = []
    for ev in devices:
        if ev.kind is not DeviceKind.GPU:
            continue
        try:
            report = parse_spdm_report(ev.report)
            leaf = load_pem_chain(ev.chain_pem)[0]
        except (QuoteError, VerifyError, IndexError):
            continue
        for rim_id in rim_ids(report, common_name(leaf)):
            if rim_id is not None and _RIM_ID.fullmatch(rim_id) and rim_id not in ids:
                ids.append(rim_id)
    return ids


def _id_version(rim_id: str) -> tuple[str, str]:
    """(kind, version) an id asks for: the last field of a driver id, dotted for VBIOS."""
    if rim_id.startswith("NV_GPU_DRIVER_"):
        return "driver", rim_id.rsplit("_", 1)[1].lower()
    v = rim_id.rsplit("_", 1)[1].lower()
    return "vbios", ".".join(v[i : i + 2] for i in range(0, len(v), 2))


def _rim_key(doc: bytes) -> tuple[str, str]:
    try:
        r = parse_rim_unverified(doc)
    except VerifyError:
        return "", ""
    return r.kind, r.version


def _read_capped(path: Path, cap: int) -> bytes | None:
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("unreadable cache entry %s: %s", path, e)
        return None
    return data if len(data) <= cap else None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o644)
