"""The model name and response id of a response, read with bounded parsing (pure).

OpenAI-compatible servers put ``model`` and ``id`` at the top of a JSON body and repeat
them in every chunk of an SSE stream, so :class:`BodyFields` reads a JSON body (when it is
whole within a byte limit) or the first SSE event, and nothing more. Linear in the bytes
fed, whatever the chunking; a CR, LF or CRLF split anywhere is handled.
"""

from __future__ import annotations

import json
from typing import Final

from certmgr.receipts.format import MAX_TEXT_BYTES

__all__ = ["BodyFields", "is_event_stream"]

_MAX_FIELD: Final = MAX_TEXT_BYTES


def _field(doc: object, key: str) -> str:
    """``doc[key]`` when ``doc`` is an object and the value a short string, else ``""``."""
    if not isinstance(doc, dict):
        return ""
    value = doc.get(key)
    if not isinstance(value, str):
        return ""
    try:
        if len(value.encode("utf-8")) > _MAX_FIELD:
            return ""
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
        return ""
    return value


def _parse_json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None


class BodyFields:
    """``model`` and ``id`` of a response, from at most ``limit`` bytes of it.

    JSON body: the top-level ``model`` and ``id`` when the whole body fits in ``limit``.
    SSE (``text/event-stream``): those of the first event's ``data`` (WHATWG HTML "Server-sent
    events", 9.2.6 interpretation: ``data:`` lines joined by newlines), when that event
    ends within ``limit`` bytes. Anything else, or a value that is not a string of at
    most 256 UTF-8 bytes: ``""``.
    """

    __slots__ = (
        "_buf",
        "_carry",
        "_done",
        "_event",
        "_limit",
        "_size",
        "_sse",
        "model",
        "response_id",
    )

    def __init__(self, *, sse: bool, limit: int) -> None:
        self._sse = sse
        self._limit = limit
        self._buf = bytearray()  # SSE: line ends normalized to LF
        self._carry = b""  # SSE: a CR at a chunk's end (the LF of a CRLF may follow)
        self._event = 0  # SSE: where the current event starts in _buf
        self._size = 0
        self._done = limit == 0
        self.model = ""
        self.response_id = ""

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._stop()
            return
        if not self._sse:
            self._buf += chunk
            return
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        # Line ends are CRLF, LF or CR (9.2.5); events end at a blank line.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        scan = max(self._event, len(self._buf) - 1)  # only the new bytes (and one before)
        self._buf += data
        while not self._done:
            end = self._buf.find(b"\n\n", scan)
            if end < 0:
                return
            self._dispatch(bytes(self._buf[self._event : end]))
            self._event = scan = end + 2

    def finish(self) -> None:
        """The body is complete: parse a whole JSON body (SSE needs nothing more)."""
        if not self._done and not self._sse:
            self._take(_parse_json(bytes(self._buf)))
        self._stop()

    def _stop(self) -> None:
        self._done = True
        self._buf = bytearray()

    def _take(self, doc: object) -> None:
        self.model = _field(doc, "model")
        self.response_id = _field(doc, "id")

    def _dispatch(self, event: bytes) -> None:
        data = [
            line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        ]
        if data:  # the first event with data (comments and retry-only events are skipped)
            self._take(_parse_json(b"\n".join(data)))
            self._stop()


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
