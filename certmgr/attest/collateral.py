"""Collateral for Intel quotes (TCB info, QE identity, CRLs): from a file or a PCCS, cached.

The only I/O of quote verification lives here: :class:`CollateralCache` reads a file, or
fetches from a PCCS with dcap-qvl and caches per (TEE, FMSPC) until the earliest
``nextUpdate`` of what it fetched (memory, and optionally a directory). The verifier
(:mod:`certmgr.attest.verify`) takes the loaded collateral as an argument.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dcap_qvl  # type: ignore[import-untyped]  # ships .pyi but no py.typed
from cryptography import x509

from certmgr.attest.endorsements import IntelCollateral
from certmgr.attest.measurement import ParsedQuote
from certmgr.errors import VerifyError
from certmgr.keys import atomic_write
from certmgr.log import attest_log as log

__all__ = [
    "MAX_COLLATERAL_SIZE",
    "CollateralCache",
    "collateral_next_update",
    "dcap_collateral",
    "load_collateral",
]

MAX_COLLATERAL_SIZE = 1024 * 1024


def load_collateral(text: str) -> Any:
    """Collateral JSON (dcap-qvl's QuoteCollateralV3 shape) -> dcap-qvl object."""
    if len(text) > MAX_COLLATERAL_SIZE:
        raise VerifyError("collateral too large")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except ValueError as e:
        raise VerifyError(f"collateral: {e}") from e


def dcap_collateral(intel: IntelCollateral) -> Any:
    """The dcap-qvl object :func:`dcap_qvl.verify` takes, for collateral carried in an
    RA-TLS certificate's endorsements extension (:mod:`certmgr.attest.endorsements`)."""
    return dcap_qvl.QuoteCollateralV3(
        intel.pck_crl_issuer_chain,
        intel.root_ca_crl,
        intel.pck_crl,
        intel.tcb_info_issuer_chain,
        intel.tcb_info,
        intel.tcb_info_signature,
        intel.qe_identity_issuer_chain,
        intel.qe_identity,
        intel.qe_identity_signature,
    )


def _iso(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def collateral_next_update(text: str) -> float:
    """The earliest nextUpdate of the TCB info, QE identity and CRLs (unix seconds)."""
    try:
        doc = json.loads(text)
        times = [_iso(json.loads(doc[k])["nextUpdate"]) for k in ("tcb_info", "qe_identity")]
        for k in ("pck_crl", "root_ca_crl"):
            raw = bytes.fromhex(doc[k]) if isinstance(doc.get(k), str) else b""
            if raw:
                crl = x509.load_der_x509_crl(raw)
                if crl.next_update_utc is not None:
                    times.append(crl.next_update_utc.timestamp())
    except (ValueError, KeyError, TypeError) as e:
        raise VerifyError(f"collateral: cannot read nextUpdate: {e}") from e
    return min(times)


Fetch = Callable[[str, bytes], Awaitable[str]]


async def _dcap_fetch(pccs_url: str, raw_quote: bytes) -> str:
    coll = await dcap_qvl.get_collateral(pccs_url, raw_quote)
    text: str = coll.to_json()
    return text


@dataclass
class CollateralCache:
    """Collateral from a file, or from a PCCS cached per (TEE, FMSPC) until its nextUpdate."""

    pccs_url: str = ""
    file: str = ""
    cache_dir: str = ""
    fetch: Fetch = _dcap_fetch
    _mem: dict[str, tuple[float, str]] = field(default_factory=dict)

    async def get(self, quote: ParsedQuote, now: float | None = None) -> Any:
        """dcap-qvl's collateral object for ``quote``."""
        return load_collateral(await self.get_text(quote, now))

    async def get_text(self, quote: ParsedQuote, now: float | None = None) -> str:
        """The collateral for ``quote`` as dcap-qvl's JSON text (file, cache or PCCS)."""
        now = time.time() if now is None else now
        if self.file:
            text = await asyncio.to_thread(Path(self.file).read_text)
            if len(text) > MAX_COLLATERAL_SIZE:
                raise VerifyError("collateral too large")
            return text
        if not self.pccs_url:
            raise VerifyError("no collateral: give a collateral file or a PCCS URL")
        key = f"{quote.tee}-{hashlib.sha256(quote.cert_data).hexdigest()[:16]}"
        cached = self._mem.get(key)
        if cached is None and self.cache_dir:
            cached = await asyncio.to_thread(self._read_disk, key)
        if cached is not None and now < cached[0]:
            return cached[1]
        text = await self.fetch(self.pccs_url, quote.raw)
        if len(text) > MAX_COLLATERAL_SIZE:
            raise VerifyError("collateral too large")
        until = collateral_next_update(text)
        self._mem[key] = (until, text)
        if self.cache_dir:
            await asyncio.to_thread(self._write_disk, key, until, text)
        log.info("collateral fetched from %s, cached until %s", self.pccs_url, until)
        return text

    def _read_disk(self, key: str) -> tuple[float, str] | None:
        p = Path(self.cache_dir) / f"{key}.json"
        try:
            doc = json.loads(p.read_text())
            return float(doc["until"]), str(doc["collateral"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("collateral cache %s unreadable, refetching: %s", p, e)
            return None

    def _write_disk(self, key: str, until: float, text: str) -> None:
        doc = json.dumps({"until": until, "collateral": text}).encode()
        atomic_write(Path(self.cache_dir) / f"{key}.json", doc, mode=0o644)
