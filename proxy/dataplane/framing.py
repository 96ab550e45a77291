"""HTTP/1.1 message framing, incrementally and without I/O: bodies in, bytes to relay out.

Pure (sans-IO, like h11's ``receive_data``): bytes in, bytes out, no awaits, no sockets, no
aiohttp. Used on both sides of the proxy:

- the body framers relay a backend response body to the client as it arrives, each
  ``feed()`` returning the bytes to write in the client's framing:
  :class:`LengthBody` (Content-Length: exact count), :class:`ChunkedBody` (chunked: each
  chunk-size line bounded and validated, chunk lengths exact, the framing passed through
  verbatim or de-chunked for an HTTP/1.0 client) and :class:`CloseBody` (read until the
  backend closes; re-chunked for an HTTP/1.1 client). Each can also collect the de-chunked
  body bytes (``pieces``) for a tap (:mod:`proxy.dataplane.hooks`);
- :func:`response_framing` decides how a response body is delimited (RFC 9112 6.3);
- :class:`RequestChunkGuard` follows the requests on one client connection next to aiohttp's
  parser (llhttp) and bounds what llhttp does not: the chunk-size line of a chunked request
  body (size plus chunk extensions), which llhttp accepts at any length.

References:
- RFC 9112 6.3 (message body length): Transfer-Encoding with Content-Length, several or
  invalid Content-Length values, and transfer codings other than a lone ``chunked`` are
  errors here, never guesses.
- RFC 9112 7.1 (chunked): ``chunk-size = 1*HEXDIG``, ``chunk-ext = *( BWS ";" BWS
  chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )``, CRLF line ends, a trailer section of
  field lines after the last chunk. BWS is refused (llhttp's strict mode does the same).
- RFC 9112 7.1.1: "A server ought to limit the total length of chunk extensions received in
  a request to an amount reasonable for the services provided ... and generate an
  appropriate 4xx (Client Error) response if that amount is exceeded."
- RFC 9110 6.5.1: a proxy may discard trailer fields; the relay drops them (they were
  dropped before this module existed too) and ends the client's body with ``0 CRLF CRLF``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from proxy.errors import FramingError

__all__ = [
    "CHUNKED",
    "CLOSE",
    "LENGTH",
    "NONE",
    "ChunkedBody",
    "CloseBody",
    "LengthBody",
    "RequestChunkGuard",
    "response_framing",
]

# How a response body is delimited (response_framing's first result).
NONE: Final = 0  # no body: HEAD, 1xx, 204, 304
LENGTH: Final = 1  # Content-Length
CHUNKED: Final = 2  # Transfer-Encoding: chunked
CLOSE: Final = 3  # until the backend closes the connection

_LAST_CHUNK: Final = b"0\r\n\r\n"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# chunk-size [ chunk-ext ] CRLF; 16 hex digits at most (the size must fit in 64 bits).
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*)\r\n"
)
# A trailer field line (RFC 9110 5.5: no CR, LF or NUL in a value).
_FIELD_LINE = re.compile(_TOKEN + rb":[\t \x21-\x7e\x80-\xff]*\r\n")
_DIGITS = re.compile(rb"[0-9]{1,18}")

# ChunkedBody states.
_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILER: Final = 3
_DONE: Final = 4


def response_framing(
    method: str, status: int, codings: Sequence[bytes], lengths: Sequence[bytes]
) -> tuple[int, int]:
    """How a response body is delimited: ``(NONE | LENGTH | CHUNKED | CLOSE, length)``.

    ``codings`` and ``lengths`` are the raw values of every Transfer-Encoding and
    Content-Length field of the response. RFC 9112 6.3, strictly: a response to HEAD, and
    every 1xx, 204 and 304, has no body whatever its fields say; anything ambiguous raises
    :class:`FramingError` (the forwarder answers 502) rather than being guessed at.
    """
    if method == "HEAD" or status < 200 or status in (204, 304):
        return NONE, 0
    if codings:
        if lengths:
            raise FramingError("both Transfer-Encoding and Content-Length")
        parts = [p.strip().lower() for v in codings for p in v.split(b",")]
        if parts != [b"chunked"]:
            # Any other coding would have to be decoded before the client could read it.
            raise FramingError("unsupported Transfer-Encoding (only 'chunked')")
        return CHUNKED, 0
    if lengths:
        if len(lengths) > 1:
            raise FramingError("more than one Content-Length")
        value = lengths[0].strip(b" \t")
        if _DIGITS.fullmatch(value) is None:
            raise FramingError("invalid Content-Length")
        return LENGTH, int(value)
    return CLOSE, 0


class LengthBody:
    """A Content-Length body: passed through, counted exactly.

    ``feed()`` returns the bytes to relay; bytes beyond the length are not relayed (``extra``
    says how many there were: the connection is then unusable). ``eof()`` raises when the
    connection closed before the last byte.
    """

    __slots__ = ("_left", "done", "extra", "length", "pieces", "total")

    def __init__(self, length: int, *, collect: bool = False) -> None:
        self.length = length
        self._left = length
        self.done = length == 0
        self.extra = 0
        self.total = 0
        self.pieces: list[bytes] | None = [] if collect else None

    def feed(self, data: bytes) -> bytes:
        n = len(data)
        left = self._left
        if n >= left:
            self.done = True
            self.extra += n - left
            if n > left:
                data = data[:left]
            n = left
        self._left = left - n
        self.total += n
        if self.pieces is not None and n:
            self.pieces.append(data)
        return data

    def eof(self) -> bytes:
        if not self.done:
            raise FramingError(f"connection closed after {self.total} of {self.length} body bytes")
        return b""


class CloseBody:
    """A body delimited by the end of the connection (RFC 9112 6.3 item 8).

    ``rechunk``: the client speaks HTTP/1.1 and gets the body chunked (one chunk per read),
    so that its end is explicit; otherwise the bytes pass as they are and the client's
    connection is closed after them.
    """

    __slots__ = ("done", "extra", "pieces", "rechunk", "total")

    def __init__(self, *, rechunk: bool, collect: bool = False) -> None:
        self.rechunk = rechunk
        self.done = False
        self.extra = 0
        self.total = 0
        self.pieces: list[bytes] | None = [] if collect else None

    def feed(self, data: bytes) -> bytes:
        n = len(data)
        if not n:
            return b""
        self.total += n
        if self.pieces is not None:
            self.pieces.append(data)
        if self.rechunk:
            return b"%x\r\n%b\r\n" % (n, data)
        return data

    def eof(self) -> bytes:
        self.done = True
        return _LAST_CHUNK if self.rechunk else b""


class ChunkedBody:
    """A chunked body, validated as it arrives (RFC 9112 7.1).

    Every chunk-size line is bounded by ``max_line`` bytes (size and extensions, CRLF
    included) and must match the grammar exactly; chunk data is counted to its declared
    size and must be followed by CRLF; the trailer section is bounded by ``max_trailer``
    bytes, validated and dropped.

    ``passthrough`` (an HTTP/1.1 client): ``feed()`` returns the backend's framing as it
    was, byte for byte, except that a chunk-size line carrying extensions is written anew
    without them, a chunk-size line split over two reads is held back until it is whole,
    and the last chunk and trailers become ``0 CRLF CRLF``. Otherwise (an HTTP/1.0 client)
    it returns the de-chunked data. ``pieces`` (with ``collect``) receives the de-chunked
    data either way; the caller empties it.
    """

    __slots__ = (
        "_left",
        "_line",
        "_max_line",
        "_max_trailer",
        "_need",
        "_state",
        "_trailer",
        "done",
        "extra",
        "passthrough",
        "pieces",
        "total",
    )

    def __init__(
        self,
        *,
        max_line: int,
        max_trailer: int,
        passthrough: bool = True,
        collect: bool = False,
    ) -> None:
        self._max_line = max_line
        self._max_trailer = max_trailer
        self.passthrough = passthrough
        self._state = _SIZE
        self._left = 0
        self._line = b""  # a line split over reads, held back until it is whole
        self._need = b"\r\n"  # what still has to follow the chunk data
        self._trailer = 0  # trailer section bytes so far
        self.done = False
        self.extra = 0
        self.total = 0
        collect = collect or not passthrough
        self.pieces: list[bytes] | None = [] if collect else None

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return what to relay. Raises :class:`FramingError`."""
        n = len(data)
        pos = 0
        start = 0  # the verbatim run data[start:pos] is relayed as it is
        out: list[bytes] | None = None  # used when something is written anew
        pieces = self.pieces
        if self._state == _SIZE and not self._line:
            # Whole chunks without extensions, the usual shape of a stream: one regex match
            # and one comparison each (at most 18 bytes of size line: within max_line).
            match = _CHUNK_LINE.match
            while True:
                m = match(data, pos)
                if m is None or m[2]:
                    break
                size = int(m[1], 16)
                begin = m.end()
                end = begin + size
                if not size or end + 2 > n:
                    break
                if data[end : end + 2] != b"\r\n":
                    raise FramingError("chunk data not followed by CRLF")
                if pieces is not None:
                    pieces.append(data[begin:end])
                self.total += size
                pos = end + 2
                if pos == n:
                    if self.passthrough:
                        return data
                    return b"".join(pieces) if pieces else b""
        while pos < n:
            state = self._state
            if state == _DATA:
                end = min(pos + self._left, n)
                if pieces is not None:
                    pieces.append(data if pos == 0 and end == n else data[pos:end])
                self._left -= end - pos
                self.total += end - pos
                pos = end
                if not self._left:
                    self._state = _DATA_END
            elif state == _SIZE:
                line = self._line
                room = self._max_line - len(line)
                lf = data.find(b"\n", pos, pos + room)
                if lf < 0:
                    if n - pos >= room:
                        raise FramingError(f"chunk-size line longer than {self._max_line} bytes")
                    if pos > start:
                        out = out if out is not None else []
                        out.append(data[start:pos])
                    self._line = line + data[pos:]
                    start = pos = n
                    break
                whole = line + data[pos : lf + 1] if line else data[pos : lf + 1]
                m = _CHUNK_LINE.fullmatch(whole)
                if m is None:
                    raise FramingError("invalid chunk-size line")
                size = int(m[1], 16)
                if size == 0 or line or m[2]:
                    # Not a verbatim run: the last chunk (written anew at the end of the
                    # trailers, which are dropped), a line that was held back (relayed
                    # whole now), or one whose extensions are not relayed.
                    out = out if out is not None else []
                    if pos > start:
                        out.append(data[start:pos])
                    if size:
                        out.append(b"%x\r\n" % size if m[2] else whole)
                    start = lf + 1
                self._line = b""
                pos = lf + 1
                if size:
                    self._state = _DATA
                    self._left = size
                else:
                    self._state = _TRAILER
            elif state == _DATA_END:
                need = self._need
                got = data[pos : pos + len(need)]
                if not need.startswith(got):
                    raise FramingError("chunk data not followed by CRLF")
                pos += len(got)
                if len(got) == len(need):
                    self._state = _SIZE
                    self._need = b"\r\n"
                else:
                    self._need = need[len(got) :]
            elif state == _TRAILER:
                line = self._line
                room = self._max_trailer - self._trailer - len(line)
                lf = data.find(b"\n", pos, pos + room)
                if lf < 0:
                    if n - pos >= room:
                        raise FramingError(f"trailer section longer than {self._max_trailer} bytes")
                    self._line = line + data[pos:]
                    start = pos = n
                    break
                whole = line + data[pos : lf + 1] if line else data[pos : lf + 1]
                self._line = b""
                self._trailer += len(whole)
                pos = start = lf + 1
                if whole == b"\r\n":
                    self._state = _DONE
                    out = out if out is not None else []
                    out.append(_LAST_CHUNK)
                    break
                if _FIELD_LINE.fullmatch(whole) is None:
                    raise FramingError("invalid trailer field")
            else:  # _DONE
                break
        if self._state == _DONE:
            self.done = True
            self.extra += n - pos
        if not self.passthrough:
            if pieces:
                joined = b"".join(pieces) if len(pieces) > 1 else pieces[0]
                return joined
            return b""
        if out is None:
            return data if start == 0 and pos == n else data[start:pos]
        if pos > start:
            out.append(data[start:pos])
        return b"".join(out)

    def eof(self) -> bytes:
        if not self.done:
            raise FramingError("connection closed before the last chunk")
        return b""


# RequestChunkGuard states.
_G_HEAD: Final = 0
_G_LENGTH: Final = 1
_G_SIZE: Final = 2
_G_DATA: Final = 3
_G_DATA_END: Final = 4
_G_TRAILER: Final = 5
_G_OFF: Final = 6

_HEX_PREFIX = re.compile(rb"[0-9A-Fa-f]{1,16}(?![0-9A-Fa-f])")
_TE_FIELD = re.compile(rb"\r\ntransfer-encoding:([^\r]*)")
_CL_FIELD = re.compile(rb"\r\ncontent-length:([^\r]*)")


class RequestChunkGuard:
    """Bounds the chunk-size lines of the request bodies on one client connection.

    aiohttp parses requests with llhttp, which skips chunk extensions of any length without
    a limit of its own (13 MB of extension in one chunk-size line was accepted). This guard
    sees the same bytes in the same order and follows message boundaries just far enough to
    know where each chunk-size line starts: request heads (to the blank line; the framing
    from Transfer-Encoding and Content-Length), Content-Length bodies, chunk data, trailers.
    It is lenient about everything llhttp itself rejects (that 400 closes the connection
    anyway), so it never refuses what llhttp accepts except a chunk-size line longer than
    ``max_line`` bytes: :meth:`feed` then raises :class:`FramingError`. Where it cannot
    follow (a head over ``max_head`` bytes, CONNECT, framing llhttp refuses), it stops
    watching (``active`` is False): llhttp answers those with 400 and the connection closes.
    """

    __slots__ = ("_head", "_left", "_line", "_max_head", "_max_line", "_prefix", "_state")

    def __init__(self, *, max_line: int, max_head: int) -> None:
        self._max_line = max_line
        self._max_head = max_head
        self._state = _G_HEAD
        self._head = bytearray()
        self._left = 0
        self._line = 0  # bytes of the current line so far
        self._prefix = b""  # the first bytes of a chunk-size line split over reads

    @property
    def active(self) -> bool:
        return self._state != _G_OFF

    def feed(self, data: bytes) -> None:
        """Follow ``data``; raises :class:`FramingError` for an over-long chunk-size line."""
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state in (_G_LENGTH, _G_DATA):
                take = min(self._left, n - pos)
                self._left -= take
                pos += take
                if not self._left:
                    self._state = _G_HEAD if state == _G_LENGTH else _G_DATA_END
            elif state == _G_HEAD:
                pos = self._feed_head(data, pos)
            elif state == _G_SIZE:
                lf = data.find(b"\n", pos, pos + self._max_line - self._line)
                if lf < 0:
                    self._line += n - pos
                    if self._line > self._max_line:
                        raise FramingError(f"chunk-size line longer than {self._max_line} bytes")
                    if len(self._prefix) < 17:
                        self._prefix += data[pos : pos + 17]
                    return
                m = _HEX_PREFIX.match((self._prefix + data[pos : pos + 17])[:17])
                pos = lf + 1
                self._line = 0
                self._prefix = b""
                if m is None:
                    self._state = _G_OFF  # llhttp refuses this size: 400 and close
                    return
                self._left = int(m[0], 16)
                self._state = _G_DATA if self._left else _G_TRAILER
            elif state in (_G_DATA_END, _G_TRAILER):
                # The CRLF after chunk data; trailer lines up to an empty one (their size is
                # bounded by aiohttp's max_field_size).
                lf = data.find(b"\n", pos)
                if lf < 0:
                    self._line += n - pos
                    return
                self._line += lf + 1 - pos
                pos = lf + 1
                empty = self._line <= 2
                self._line = 0
                if state == _G_DATA_END:
                    self._state = _G_SIZE if empty else _G_OFF
                elif empty:
                    self._state = _G_HEAD
            else:  # _G_OFF
                return

    def _feed_head(self, data: bytes, pos: int) -> int:
        head = self._head
        if not head:
            # Empty lines before a request line are skipped (RFC 9112 2.2), as llhttp does.
            while pos < len(data) and data[pos] in b"\r\n":
                pos += 1
            if pos == len(data):
                return pos
            end = data.find(b"\r\n\r\n", pos)
            if end >= 0:  # the usual case: the whole head in this read, nothing to keep
                self._start_body(data[pos : end + 4].lower())
                return end + 4
        before = len(head)
        head += data[pos:] if pos else data
        end = head.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            if len(head) > self._max_head:
                self._state = _G_OFF  # over llhttp's own limits: it answers 400
            return len(data)
        consumed = end + 4 - before
        self._head = bytearray()
        self._start_body(bytes(head[: end + 4]).lower())
        return pos + consumed

    def _start_body(self, head: bytes) -> None:
        if head.startswith(b"connect "):
            self._state = _G_OFF  # a tunnel: what follows is not HTTP
            return
        codings = _TE_FIELD.findall(head)
        lengths = _CL_FIELD.findall(head)
        if codings:
            last = codings[-1].rsplit(b",", 1)[-1].strip(b" \t")
            self._state = _G_SIZE if last == b"chunked" and not lengths else _G_OFF
            self._line = 0
        elif lengths:
            value = lengths[0].strip(b" \t")
            if len(lengths) > 1 or _DIGITS.fullmatch(value) is None:
                self._state = _G_OFF
                return
            self._left = int(value)
            self._state = _G_LENGTH if self._left else _G_HEAD
        else:
            self._state = _G_HEAD
