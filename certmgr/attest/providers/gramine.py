"""Gramine SGX quote provider: the ``/dev/attestation`` pseudo-filesystem.

Gramine docs, "Attestation and Secret Provisioning", pseudo-files: write exactly 64 bytes to
``user_report_data``, then read ``quote`` (a DCAP SGX quote when ``attestation_type`` is
``dcap``).
"""

from __future__ import annotations

from pathlib import Path

from certmgr.attest.measurement import check_report_data
from certmgr.errors import QuoteProviderError

__all__ = ["GramineProvider"]

MAX_QUOTE = 64 * 1024


class GramineProvider:
    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)

    @property
    def name(self) -> str:
        return "gramine"

    def attestation_type(self) -> str:
        try:
            return (self.dir / "attestation_type").read_text().strip()
        except OSError as e:
            raise QuoteProviderError(f"gramine: {e}") from e

    def get_quote(self, report_data: bytes) -> bytes:
        check_report_data(report_data)
        try:
            with (self.dir / "user_report_data").open("wb", buffering=0) as f:
                f.write(report_data)
            with (self.dir / "quote").open("rb") as f:
                quote = f.read(MAX_QUOTE + 1)
        except OSError as e:
            raise QuoteProviderError(f"gramine: {e}") from e
        if not quote or len(quote) > MAX_QUOTE:
            raise QuoteProviderError(f"gramine: quote of {len(quote)} bytes")
        return quote
