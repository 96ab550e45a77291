"""Linux configfs-tsm quote provider (TDX and SEV-SNP guests, Linux >= 6.7).

Interface (Documentation/ABI/testing/configfs-tsm): an entry directory under
``/sys/kernel/config/tsm/report/``; write the report_data to ``inblob``, read the quote from
``outblob``; ``provider`` names the backend (``tdx_guest`` or ``sev_guest``) and
``generation`` counts writes to the entry, so a reader detects that another writer raced it
(the quote read would then be over someone else's inblob): it must have moved by exactly
one between before our write and after our read. One entry per process, reused.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from certmgr.attest.measurement import check_report_data
from certmgr.errors import QuoteProviderError
from certmgr.log import attest_log as log

__all__ = ["ConfigfsTsmProvider"]


MAX_OUTBLOB = 64 * 1024
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
        check_report_data(report_data)
        self._ensure_entry()
        deadline = time.monotonic() + self.timeout
        for attempt in range(_BUSY_RETRIES):
            try:
                before = self._generation()
                (self.entry / "inblob").write_bytes(report_data)
                with (self.entry / "outblob").open("rb") as f:
                    out = f.read(MAX_OUTBLOB + 1)
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
            return out
        raise QuoteProviderError("configfs-tsm: busy or raced on every attempt")
