"""proxy.dataplane.framing: body framers and the request chunk-line guard, in memory.

Every framer must give the same result however the bytes are split into reads (the
network decides that), so the central properties are checked over arbitrary splits.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.dataplane.framing import (
    CHUNKED,
    CLOSE,
    LENGTH,
    NONE,
    ChunkedBody,
    CloseBody,
    LengthBody,
    RequestChunkGuard,
    response_framing,
)
from proxy.errors import FramingError


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def _run(body: ChunkedBody | LengthBody, reads: list[bytes]) -> tuple[bytes, bytes]:
    """Feed ``reads``; the relayed output and the collected body bytes."""
    out = bytearray()
    got = bytearray()
    for r in reads:
        out += body.feed(r)
        if body.pieces is not None:
            got += b"".join(body.pieces)
            body.pieces.clear()
        if body.done:
            break
    return bytes(out), bytes(got)


def _chunked(**kw: object) -> ChunkedBody:
    return ChunkedBody(max_line=64, max_trailer=128, **kw)  # type: ignore[arg-type]


# -- chunked -------------------------------------------------------------------------------

PLAIN = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
WITH_EXTRAS = (
    b"5;name=value\r\nhello\r\n"
    b'00006;q="a \\" b";flag\r\n world\r\n'
    b"A\r\n0123456789\r\n"
    b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)


def test_plain_chunked_framing_passes_through_as_it_came() -> None:
    body = _chunked()
    out = body.feed(PLAIN)
    assert out == PLAIN
    assert body.done and body.extra == 0 and body.total == 11


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_split_relays_the_same_bytes(cuts: list[int]) -> None:
    out, got = _run(_chunked(collect=True), _split(WITH_EXTRAS, cuts))
    # A line with extensions is written anew without them, the others as they came
    # ("A", not "a"); trailers are dropped and the end is "0 CRLF CRLF".
    assert out == b"5\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n"
    assert got == b"hello world0123456789"


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_de_chunking_for_an_http10_client(cuts: list[int]) -> None:
    body = _chunked(passthrough=False)
    out, got = _run(body, _split(WITH_EXTRAS, cuts))
    assert out == got == b"hello world0123456789"
    assert body.done


def test_bytes_after_the_last_chunk_are_not_relayed_but_counted() -> None:
    body = _chunked()
    assert body.feed(PLAIN + b"HTTP/1.1 200 OK\r\n") == PLAIN
    assert body.done and body.extra == len(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"-5\r\nhello\r\n",
        b"+5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b" 5\r\nhello\r\n",
        b"5 \r\nhello\r\n",  # whitespace (BWS) is refused, as llhttp's strict mode does
        b"5 ;a=b\r\nhello\r\n",
        b"5;a\x01b\r\nhello\r\n",  # a control character in an extension
        b'5;a="b\r\nhello\r\n',  # an unterminated quoted string
        b"5\nhello\r\n",  # bare LF
        b"5\r\nhelloXX0\r\n\r\n",  # data longer than declared
        b"5\r\nhell\r\n0\r\n\r\n",  # shorter
        b"1_0\r\n" + b"x" * 16 + b"\r\n",  # int() would take the underscore
        b"fffffffffffffffff\r\n",  # 17 digits: over 64 bits
        b"0\r\nno colon here\r\n\r\n",  # a malformed trailer
        b"0\r\nX-A: b\nX-B: c\r\n\r\n",  # bare LF in the trailers
    ],
)
def test_invalid_framing_is_refused(bad: bytes) -> None:
    with pytest.raises(FramingError):
        _run(_chunked(), [bad])


def test_chunk_size_line_is_bounded_however_it_arrives() -> None:
    line = b"5;" + b"e" * 60 + b"\r\n"  # 64 bytes: exactly the bound
    assert _run(_chunked(collect=True), [line + b"hello\r\n0\r\n\r\n"])[1] == b"hello"
    too_long = b"5;" + b"e" * 61 + b"\r\n"
    with pytest.raises(FramingError, match="longer than 64"):
        _run(_chunked(), [too_long])
    # Refused as soon as the bound is passed, not when the line ends (it may never end).
    body = _chunked()
    body.feed(b"5;" + b"e" * 30)
    with pytest.raises(FramingError, match="longer than 64"):
        body.feed(b"e" * 40)


def test_trailer_section_is_bounded() -> None:
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 20) for i in range(10))
    with pytest.raises(FramingError, match="trailer section"):
        _run(_chunked(), [b"0\r\n" + trailers + b"\r\n"])


def test_eof_before_the_last_chunk_is_an_error() -> None:
    body = _chunked()
    body.feed(b"5\r\nhello\r\n")
    with pytest.raises(FramingError):
        body.eof()


def test_a_size_line_split_over_reads_is_held_back_until_whole() -> None:
    body = _chunked()
    assert body.feed(b"5\r\nhello\r\n1") == b"5\r\nhello\r\n"
    assert body.feed(b"0\r\n") == b"10\r\n"
    assert body.feed(b"0123456789abcdef\r\n0\r\n\r\n") == b"0123456789abcdef\r\n0\r\n\r\n"


# -- length and close ------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=30), max_size=6))
def test_length_body_counts_exactly(cuts: list[int]) -> None:
    body = LengthBody(20, collect=True)
    out, got = _run(body, _split(b"x" * 20 + b"extra", cuts))
    assert out == got == b"x" * 20
    assert body.done and body.total == 20


def test_length_body_eof_before_the_end_is_an_error() -> None:
    body = LengthBody(10)
    body.feed(b"12345")
    with pytest.raises(FramingError, match="5 of 10"):
        body.eof()
    assert LengthBody(0).done


def test_close_body_is_rechunked_for_http11_and_raw_for_http10() -> None:
    body = CloseBody(rechunk=True)
    assert body.feed(b"abc") == b"3\r\nabc\r\n"
    assert body.feed(b"") == b""
    assert body.eof() == b"0\r\n\r\n" and body.done and body.total == 3
    raw = CloseBody(rechunk=False)
    assert raw.feed(b"abc") == b"abc" and raw.eof() == b""


# -- response framing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "codings", "lengths", "want"),
    [
        ("GET", 200, [b"chunked"], [], (CHUNKED, 0)),
        ("GET", 200, [b"Chunked"], [], (CHUNKED, 0)),
        ("GET", 200, [], [b"12"], (LENGTH, 12)),
        ("GET", 200, [], [], (CLOSE, 0)),
        ("HEAD", 200, [b"chunked"], [b"5"], (NONE, 0)),
        ("GET", 204, [], [b"5"], (NONE, 0)),
        ("GET", 304, [], [b"5"], (NONE, 0)),
        ("GET", 103, [], [], (NONE, 0)),
    ],
)
def test_response_framing(
    method: str, status: int, codings: list[bytes], lengths: list[bytes], want: tuple[int, int]
) -> None:
    assert response_framing(method, status, codings, lengths) == want


@pytest.mark.parametrize(
    ("codings", "lengths"),
    [
        ([b"chunked"], [b"5"]),
        ([b"gzip, chunked"], []),
        ([b"chunked", b"chunked"], []),
        ([b"identity"], []),
        ([], [b"5", b"5"]),
        ([], [b"5, 5"]),
        ([], [b"+5"]),
        ([], [b"0x5"]),
        ([], [b"9" * 19]),
    ],
)
def test_ambiguous_response_framing_is_refused(codings: list[bytes], lengths: list[bytes]) -> None:
    with pytest.raises(FramingError):
        response_framing("GET", 200, codings, lengths)


# -- the request guard -----------------------------------------------------------------------

PIPELINE = (
    b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    b"GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
    b"3\r\n0\r\n\r\n0\r\n\r\n"
    b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n"
)


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_the_guard_follows_pipelined_requests_over_any_split(cuts: list[int]) -> None:
    guard = RequestChunkGuard(max_line=64, max_head=4096)
    for r in _split(PIPELINE, cuts):
        guard.feed(r)
    assert guard.active
    # It is back at a request boundary: a long chunk line in the next request is caught.
    guard.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;")
    with pytest.raises(FramingError, match="longer than 64"):
        guard.feed(b"x" * 70)


def test_the_guard_refuses_a_long_line_as_soon_as_it_passes_the_bound() -> None:
    guard = RequestChunkGuard(max_line=4096, max_head=65536)
    guard.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    guard.feed(b"5;" + b"e" * 4092 + b"\r\nworld\r\n")  # 4096 bytes: the bound itself
    guard.feed(b"5;" + b"e" * 4000)
    with pytest.raises(FramingError):
        guard.feed(b"e" * 100)  # 13 MB would never be read


def test_the_guard_bound_is_exact() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    guard = RequestChunkGuard(max_line=64, max_head=4096)
    guard.feed(head + b"5;" + b"e" * 60 + b"\r\nhello\r\n")  # 64 bytes with the CRLF
    guard.feed(b"0\r\n\r\n")
    guard.feed(head)
    with pytest.raises(FramingError):
        guard.feed(b"5;" + b"e" * 61 + b"\r\nhello\r\n")  # 65


def test_the_guard_leaves_content_length_bodies_alone() -> None:
    guard = RequestChunkGuard(max_line=64, max_head=4096)
    body = b"5;" + b"e" * 1000 + b"\r\n"  # looks like a chunk line, is a body
    guard.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert guard.active


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_the_guard_stops_where_llhttp_refuses_anyway(head: bytes) -> None:
    guard = RequestChunkGuard(max_line=64, max_head=4096)
    guard.feed(head)
    assert not guard.active
    guard.feed(b"x" * 1000)  # and never raises afterwards


def test_the_guard_gives_up_on_a_head_over_its_bound() -> None:
    guard = RequestChunkGuard(max_line=64, max_head=100)
    guard.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 200)
    assert not guard.active
