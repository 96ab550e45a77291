"""Linux configfs-tsm quote provider (TDX and SEV-SNP guests, Linux >= 6.7).

Interface (Documentation/ABI/testing/configfs-tsm): an entry directory under
``/sys/kernel/config/tsm/report/``; write the report_data to ``inblob``, read the quote from
``outblob``; ``provider`` names the backend (``tdx_guest`` or ``sev_guest``) and
``generation`` counts writes to the entry, so a reader detects that another writer raced it
(the quote read would then be over someone else's inblob): it must have moved by exactly
one between before our write and after our last read. One entry per process, reused.

``auxblob`` (read-only, present only where the backend emits it) holds supplemental data
of the same report: for ``sev_guest`` the certificate table of the extended report (GHCB
#56421 section 4.1.8.1: VCEK or VLEK, ASK, ARK). :meth:`ConfigfsTsmProvider.get_evidence`
reads it after ``outblob``, within the same generation check, capped at
:data:`MAX_AUXBLOB` bytes; absent or empty means none.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from certmgr.attest.measurement import check_report_data
from certmgr.attest.providers.base import TeeEvidence
from certmgr.attest.sevsnp import MAX_CERT_TABLE_SIZE
from certmgr.errors import QuoteProviderError
from certmgr.log import attest_log as log

__all__ = ["ConfigfsTsmProvider"]


MAX_OUTBLOB = 64 * 1024
MAX_AUXBLOB = MAX_CERT_TABLE_SIZE  # the kernel's SNP certificate buffer is 16 KiB
_BUSY_RETRIES = 20


class ConfigfsTsmProvider:
    def __init__(self, root: str, *, timeout: float = 10.0) -> None:
        self.root = Path(root)
        self.timeout = timeout
        self.entry = self.root / f"teeproxy-{os.getpid()}"

    @property
    def name(self) -> str:
        return "configfs-tsm"

    def backend(self) -> str:
        """``tdx_guest`` or ``sev_guest`` as the kernel reports it."""
        self._ensure_entry()
        return (self.entry / "provider").read_text().strip()

    def _ensure_entry(self) -> None:
        try:
            self.entry.mkdir(mode=0o700)
        except FileExistsError:
            pass  # reused: generation detects interleaved writers
        except OSError as e:
            raise QuoteProviderError(f"configfs-tsm: cannot create {self.entry}: {e}") from e

    def _generation(self) -> int:
        try:
            return int((self.entry / "generation").read_text().strip() or "0")
        except (OSError, ValueError) as e:
            raise QuoteProviderError(f"configfs-tsm: unreadable generation: {e}") from e

    def get_quote(self, report_data: bytes) -> bytes:
        return self.get_evidence(report_data).quote

    def _read_auxblob(self) -> bytes:
        """The entry's auxblob, b"" when the backend has none (the attribute is then not
        visible) or it is larger than :data:`MAX_AUXBLOB` (logged: not published)."""
        try:
            with (self.entry / "auxblob").open("rb") as f:
                aux = f.read(MAX_AUXBLOB + 1)
        except FileNotFoundError:
            return b""
        if len(aux) > MAX_AUXBLOB:
            log.warning("configfs-tsm: auxblob larger than %d bytes: not published", MAX_AUXBLOB)
            return b""
        return aux

    def get_evidence(self, report_data: bytes) -> TeeEvidence:
        """The quote over ``report_data`` and the auxblob of the same report."""
        check_report_data(report_data)
        self._ensure_entry()
        deadline = time.monotonic() + self.timeout
        for attempt in range(_BUSY_RETRIES):
            try:
                before = self._generation()
                (self.entry / "inblob").write_bytes(report_data)
                with (self.entry / "outblob").open("rb") as f:
                    out = f.read(MAX_OUTBLOB + 1)
                aux = self._read_auxblob()
            except OSError as e:
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    log.debug("configfs-tsm busy (attempt %d): retrying", attempt + 1)
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise QuoteProviderError(f"configfs-tsm: {e}") from e
            # Our write is the only one since ``before`` exactly when the count moved by one.
            if self._generation() != before + 1:
                log.warning("configfs-tsm: entry written concurrently: retrying")
                continue
            if not out or len(out) > MAX_OUTBLOB:
                raise QuoteProviderError(f"configfs-tsm: outblob of {len(out)} bytes")
            return TeeEvidence(out, aux)
        raise QuoteProviderError("configfs-tsm: busy or raced on every attempt")
