"""Where SEV-SNP endorsement certificates come from: the extended report's certificate
table, files, or AMD's Key Distribution Service (cached on disk). The I/O of SEV-SNP
verification lives here; the verifier (:mod:`certmgr.attest.snp_verify`) takes the
:class:`~certmgr.attest.snp_verify.SnpCollateral` built here as an argument.

Sources:

- the certificate table of an extended report (configfs-tsm ``auxblob``, GHCB #56421
  section 4.1.8.1), parsed strictly by :func:`certmgr.attest.sevsnp.parse_cert_table`:
  :func:`collateral_from_cert_table`;
- a file (PEM bundle or DER) or a directory of them: :func:`read_collateral_path` (blocking)
  and :func:`load_collateral_path` (in a thread);
- AMD KDS (#57230 section 4; go-sev-guest ``kds/kds.go`` ``VCEKCertQuery`` and
  ``ProductCertChainURL``) through a configured base URL, :class:`KdsClient`:
  ``{base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` for a VCEK
  (DER), where ``hwid`` is CHIP_ID in hex (64 bytes; on Turin its first 8 bytes) and Turin
  puts ``fmcSPL=..`` first; and ``{base}/vcek/v1/{product}/cert_chain`` (PEM: ASK then ARK).
  VLEKs are not served to the public (KDS wants the cloud provider's credentials).

KDS rate-limits (HTTP 429). A VCEK is immutable for its (product, chip, TCB), and so is a
product's chain: each is fetched once, checked to be signed by AMD's shipped keys, and kept
in memory and, with ``cache_dir``, on disk, keyed by product, chip and TCB; concurrent
requests for one key wait for the one fetch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from certmgr.attest.sevsnp import (
    SigningKey,
    SnpProduct,
    SnpReport,
    parse_snp,
)
from certmgr.attest.snp_verify import (
    MAX_CERTIFICATE_INPUT,
    SnpCollateral,
    check_cert_chain,
    check_vek,
    collateral_from_cert_table,
    load_certificates,
)
from certmgr.errors import CollateralUnavailable, QuoteError, VerifyError
from certmgr.keys import atomic_write
from certmgr.log import attest_log as log

__all__ = [
    "KDS_URL",
    "MAX_COLLATERAL_FILES",
    "KdsClient",
    "SnpCollateralSource",
    "collateral_from_cert_table",
    "kds_cert_chain_path",
    "kds_vcek_path",
    "load_collateral_path",
    "read_collateral_path",
]

KDS_URL = "https://kdsintf.amd.com"
MAX_COLLATERAL_FILES = 16
"""Most files read from a collateral directory."""
_HWID_BYTES = {SnpProduct.MILAN: 64, SnpProduct.GENOA: 64, SnpProduct.TURIN: 8}
_Check = Callable[[bytes], None]  # validates an answer (VerifyError) before it is cached


def read_collateral_path(path: str | os.PathLike[str]) -> SnpCollateral:
    """Certificates from a file (PEM bundle or DER) or a directory of such files (blocking).

    A directory is read to at most :data:`MAX_COLLATERAL_FILES` regular, non-hidden files
    (sorted by name); each file is capped at the certificate input size before decoding.
    """
    p = Path(path)
    try:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if len(files) > MAX_COLLATERAL_FILES:
                raise VerifyError(f"{p}: more than {MAX_COLLATERAL_FILES} files")
        else:
            files = [p]
        ders: list[bytes] = []
        for f in files:
            with f.open("rb") as fh:
                data = fh.read(MAX_CERTIFICATE_INPUT + 1)
            ders.extend(load_certificates(data))
    except OSError as e:
        raise VerifyError(f"SEV-SNP collateral {p}: {e}") from e
    return SnpCollateral.from_certificates(ders, source=str(p))


async def load_collateral_path(path: str | os.PathLike[str]) -> SnpCollateral:
    """:func:`read_collateral_path` in a thread."""
    return await asyncio.to_thread(read_collateral_path, path)


def _kds_product(report: SnpReport, product: SnpProduct | None) -> tuple[SnpReport, SnpProduct]:
    """The product to ask KDS for (the report's CPUID, or the caller's for a version 2
    report) and the report with its TCB read in that product's layout."""
    product = product or report.product
    if product is None:
        raise VerifyError(
            "the report names no known product (version 2, or an unknown CPU model): "
            "give the product to fetch its VCEK"
        )
    if report.turin_tcb != (product is SnpProduct.TURIN) or report.product not in (None, product):
        try:
            report = parse_snp(report.raw, product=product)
        except QuoteError as e:
            raise VerifyError(str(e)) from e
    return report, product


def kds_vcek_path(report: SnpReport, product: SnpProduct | None = None) -> str:
    """The KDS path of the report's VCEK: ``/vcek/v1/{product}/{hwid}?{tcb}``."""
    report, product = _kds_product(report, product)
    if report.chip_id_masked:
        raise VerifyError("CHIP_ID is masked (all zero): KDS cannot name the VCEK")
    hwid = report.chip_id[: _HWID_BYTES[product]].hex()
    query = "&".join(f"{k}={v}" for k, v in report.reported_tcb.components().items())
    return f"/vcek/v1/{product}/{hwid}?{query}"


def kds_cert_chain_path(product: SnpProduct) -> str:
    """The KDS path of a product's ASK and ARK: ``/vcek/v1/{product}/cert_chain``."""
    return f"/vcek/v1/{product}/cert_chain"


@dataclass
class KdsClient:
    """VCEKs and chains from AMD KDS at ``base_url``, cached forever per key.

    ``session``: an aiohttp session to reuse (else one per fetch). ``max_size`` caps every
    answer before it is decoded; ``timeout`` bounds every fetch.
    """

    base_url: str = KDS_URL
    cache_dir: str = ""
    timeout: float = 20.0
    max_size: int = 64 * 1024
    session: aiohttp.ClientSession | None = None
    fetches: int = 0  # requests sent, for operators and tests
    _mem: dict[str, bytes] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def vcek(self, report: SnpReport, product: SnpProduct | None = None) -> bytes:
        """The report's VCEK (DER), checked to be signed by AMD's ASK of its product."""
        if report.signing_key is SigningKey.VLEK:
            raise VerifyError("the report is signed by a VLEK: KDS serves VLEKs only to CSPs")
        report, product = _kds_product(report, product)
        path = kds_vcek_path(report, product)
        hwid = report.chip_id[: _HWID_BYTES[product]].hex()

        def check(body: bytes) -> None:
            ders = load_certificates(body)
            if len(ders) != 1 or check_vek(ders[0], product) is not SigningKey.VCEK:
                raise VerifyError("KDS answer is not one VCEK")

        key = f"vcek-{product}-{hwid}-{report.reported_tcb.raw:016x}.der"
        return load_certificates(await self._cached(key, path, check))[0]

    async def cert_chain(self, product: SnpProduct) -> tuple[bytes, bytes]:
        """The product's ASK and ARK (DER), checked against AMD's pinned root."""

        def check(body: bytes) -> None:
            ders = load_certificates(body)
            if len(ders) != 2:
                raise VerifyError(f"KDS cert_chain holds {len(ders)} certificates, not 2")
            check_cert_chain(ders[0], ders[1], product)

        body = await self._cached(f"cert_chain-{product}.pem", kds_cert_chain_path(product), check)
        ask, ark = load_certificates(body)
        return ask, ark

    async def collateral(
        self, report: SnpReport, product: SnpProduct | None = None
    ) -> SnpCollateral:
        """VCEK, ASK and ARK for ``report`` (two fetches the first time, none after)."""
        report, product = _kds_product(report, product)
        vek = await self.vcek(report, product)
        ask, ark = await self.cert_chain(product)
        return SnpCollateral(vek=vek, ask=ask, ark=ark, source=f"kds:{self.base_url}")

    async def _cached(self, key: str, path: str, check: _Check) -> bytes:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._mem.get(key)
            if hit is None and self.cache_dir:
                hit = await asyncio.to_thread(self._read_disk, key, check)
            if hit is not None:
                self._mem[key] = hit
                return hit
            body = await self._fetch(path)
            check(body)
            self._mem[key] = body
            if self.cache_dir:
                await asyncio.to_thread(self._write_disk, key, body)
            kind, product = key.split("-")[:2]  # the chip id is not logged
            log.info(
                "SEV-SNP %s for %s fetched from %s", kind, product.split(".")[0], self.base_url
            )
            return body

    async def _fetch(self, path: str) -> bytes:
        url = self.base_url.rstrip("/") + path
        self.fetches += 1
        try:
            if self.session is not None:
                return await self._get(self.session, url)
            async with aiohttp.ClientSession() as session:
                return await self._get(session, url)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CollateralUnavailable(f"AMD KDS {url}: {e or type(e).__name__}") from e

    async def _get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status == 429:
                retry = resp.headers.get("Retry-After", "")
                raise CollateralUnavailable(
                    f"AMD KDS rate limit (429) for {url}",
                    retry_after=float(retry) if retry.isdigit() else None,
                )
            if resp.status != 200:
                raise CollateralUnavailable(f"AMD KDS answered {resp.status} for {url}")
            too_big = CollateralUnavailable(f"AMD KDS answer for {url} exceeds {self.max_size} B")
            if (resp.content_length or 0) > self.max_size:
                raise too_big
            body = bytearray()
            while chunk := await resp.content.read(16 * 1024):
                body += chunk
                if len(body) > self.max_size:
                    raise too_big
        return bytes(body)

    def _read_disk(self, key: str, check: _Check) -> bytes | None:
        p = Path(self.cache_dir) / key
        try:
            with p.open("rb") as f:
                data = f.read(self.max_size + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("SNP collateral cache %s unreadable, refetching: %s", p, e)
            return None
        try:
            check(data)  # the cache directory may be writable by others: check again
        except VerifyError as e:
            log.warning("SNP collateral cache %s is not valid, refetching: %s", p, e)
            return None
        return data

    def _write_disk(self, key: str, value: bytes) -> None:
        atomic_write(Path(self.cache_dir) / key, value, mode=0o644)


@dataclass
class SnpCollateralSource:
    """One place to get a report's collateral: the certificate table given with the report,
    then a file or directory, then KDS for what is still missing (the VCEK)."""

    path: str = ""
    kds: KdsClient | None = None

    async def get(
        self,
        raw_report: bytes,
        *,
        cert_table: bytes = b"",
        product: SnpProduct | None = None,
    ) -> SnpCollateral:
        try:
            report = parse_snp(raw_report, product=product)
        except QuoteError as e:
            raise VerifyError(f"SEV-SNP report: {e}") from e
        found = SnpCollateral()
        if cert_table:
            try:
                found = collateral_from_cert_table(cert_table, report=report)
            except QuoteError as e:
                raise VerifyError(str(e)) from e
        if self.path and not found.vek:
            found = found.merged(await load_collateral_path(self.path))
        if self.kds is not None and not found.vek:
            found = found.merged(await self.kds.collateral(report, product))
        if not found.vek:
            raise VerifyError("no SEV-SNP VCEK/VLEK: give a certificate table, a path or KDS")
        return found
