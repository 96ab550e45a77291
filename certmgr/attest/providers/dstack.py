"""dstack guest agent quote provider: HTTP/1.1 JSON over the unix socket ``/var/run/dstack.sock``.

Protocol (dstack guest agent, as used by dstack-sdk 0.5): ``POST /GetQuote`` with body
``{"report_data": "<hex, 64 bytes>"}``; the answer is ``{"quote": "<hex>", "event_log":
"<json text>", ...}``. The client here is a few lines of stdlib http.client so that the
provider adds no dependency; the answer size is capped before JSON decoding.
"""

from __future__ import annotations

import http.client
import json

from certmgr.attest.measurement import check_report_data
from certmgr.errors import QuoteProviderError
from certmgr.unixhttp import UnixHTTPConnection

__all__ = ["DstackProvider"]

MAX_RESPONSE = 1024 * 1024


class DstackProvider:
    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.last_event_log: str = ""

    @property
    def name(self) -> str:
        return "dstack"

    def get_quote_answer(self, report_data: bytes) -> bytes:
        """The guest agent's whole GetQuote answer (JSON bytes, size-capped): what an app
        hands a client that asked for a quote over its own report_data (the client checks
        it with :func:`certmgr.attest.verify.verify_dstack_evidence`)."""
        check_report_data(report_data)
        body = json.dumps({"report_data": report_data.hex()}).encode()
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request(
                "POST", "/GetQuote", body=body, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE + 1)
        except (OSError, http.client.HTTPException) as e:
            raise QuoteProviderError(f"dstack: {self.socket_path}: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise QuoteProviderError(f"dstack: GetQuote answered HTTP {resp.status}")
        if len(data) > MAX_RESPONSE:
            raise QuoteProviderError("dstack: answer too large")
        return bytes(data)

    def get_quote(self, report_data: bytes) -> bytes:
        data = self.get_quote_answer(report_data)
        try:
            doc = json.loads(data)
            quote = bytes.fromhex(doc["quote"])
        except (ValueError, KeyError, TypeError) as e:
            raise QuoteProviderError(f"dstack: malformed GetQuote answer: {e}") from e
        event_log = doc.get("event_log", "")
        self.last_event_log = event_log if isinstance(event_log, str) else ""
        if not quote:
            raise QuoteProviderError("dstack: empty quote")
        return quote
