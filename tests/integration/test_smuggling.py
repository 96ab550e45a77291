"""Request smuggling: ambiguous or malformed framing is answered 400 and never forwarded.

Hand-written requests over TLS. After each rejected request a valid "sentinel" request is sent
on a fresh connection; the backend must have seen only the sentinel, so nothing from the
rejected request was forwarded (not even its headers).
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests.helpers.backends import Recorder, UploadProbe
from tests.helpers.proxies import ProxyFactory
from tests.helpers.rawhttp import close_writer, read_response, tls_connect, wait_closed

H = b"Host: localhost\r\n"

# Each is a complete request whose head is ambiguous or malformed.
HEAD_CASES: dict[str, bytes] = {
    "cl-and-te": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "two-cl-same": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "two-cl-different": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "cl-list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-plus": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello",
    "cl-minus": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello",
    "cl-inner-space": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\nhelloworld",
    "cl-hex": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello",
    "cl-trailing-junk": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5a\r\n\r\nhello",
    "cl-overflow": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n",
    "te-gzip-chunked": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
    b"0\r\n\r\n",
    "te-chunked-identity": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity"
    b"\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\nhello",
    "te-twice": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-vertical-tab": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n"
    b"0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n  continued\r\n\r\n",
    "obs-fold-te": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "space-before-colon-cl": b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello",
    "space-before-colon-te": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n"
    b"\r\n0\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\n" + b"Host: localhost\n\n",
    "bare-lf-in-headers": b"GET / HTTP/1.1\r\nHost: localhost\nX-A: b\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n",
    "bad-header-name": b"GET / HTTP/1.1\r\n" + H + b"X(A): b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "line-extra-token": b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n",
    "line-space-in-target": b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
    "line-bad-version": b"GET / HTTP/9.9\r\n" + H + b"\r\n",
    "line-bad-protocol": b"GET / FOO/1.1\r\n" + H + b"\r\n",
    "line-bad-method": b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n",
    "line-garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}

# Heads that are fine, followed by a chunked body whose framing is invalid.
CHUNK_CASES: dict[str, bytes] = {
    "non-hex-size": b"zz\r\nhello\r\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "negative-size": b"-5\r\nhello\r\n0\r\n\r\n",
    "hex-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "space-before-ext": b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
    "ctl-in-extension": b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
    "missing-crlf-after-data": b"5\r\nhelloXX0\r\n\r\n",
    "bare-lf-after-size": b"5\nhello\r\n0\r\n\r\n",
    # A chunk-size line (size and extensions) over limits.max_chunk_line (4096): llhttp
    # itself accepts one of any length.
    "chunk-line-over-limit": b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
}


async def _sentinel(proxy_port: int, client_ssl: ssl.SSLContext) -> None:
    reader, writer = await tls_connect(proxy_port, client_ssl)
    writer.write(b"GET /sentinel HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200


@pytest.mark.parametrize("raw", HEAD_CASES.values(), ids=HEAD_CASES.keys())
async def test_ambiguous_head_is_rejected_and_not_forwarded(
    raw: bytes,
    recording_backend: Recorder,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(raw)
    resp = await read_response(reader)
    assert resp.status == 400, resp
    # The connection is closed after the error: nothing after the bad head is interpreted.
    assert await wait_closed(reader, 5) == b""
    close_writer(writer)
    await _sentinel(proxy.port, client_ssl)
    assert [s.target for s in recording_backend.seen] == ["/sentinel"]


@pytest.mark.parametrize("body", CHUNK_CASES.values(), ids=CHUNK_CASES.keys())
async def test_invalid_chunked_body_is_rejected_and_not_forwarded(
    body: bytes,
    recording_backend: Recorder,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /chunked HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    resp = await read_response(reader)
    assert resp.status == 400, resp
    assert await wait_closed(reader, 5) == b""
    close_writer(writer)
    await _sentinel(proxy.port, client_ssl)
    assert [s.target for s in recording_backend.seen] == ["/sentinel"]


async def test_lenient_request_line_is_forwarded_normalized(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # llhttp accepts several spaces between request-line elements (RFC 9112 3 allows parsing
    # on whitespace boundaries). Not ambiguous: the proxy re-serializes the request line.
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET  /double-space HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    assert [(s.method, s.target) for s in recording_backend.seen] == [("GET", "/double-space")]


async def test_invalid_chunk_mid_stream_aborts_the_upstream_request(
    upload_probe: UploadProbe, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # Once the head was forwarded (the body streams), a later framing error must reach the
    # backend as an aborted upload, never as a complete (truncated) request; the client gets
    # its 400 at once instead of waiting for body_read_timeout.
    proxy = await proxy_factory(upload_probe.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    async with asyncio.timeout(5):
        await upload_probe.head.wait()
    writer.write(b"zz\r\nworld\r\n0\r\n\r\n")
    resp = await read_response(reader, within=2)
    close_writer(writer)
    assert resp.status == 400
    async with asyncio.timeout(2):
        await upload_probe.done.wait()
    assert len(upload_probe.outcomes) == 1
    assert upload_probe.outcomes[0].startswith("aborted:"), upload_probe.outcomes


async def test_pipelined_requests_are_forwarded_separately(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
    writer.write(
        b"GET /first HTTP/1.1\r\n" + H + b"\r\n"
        # A body that looks like a request is only a body.
        b"POST /second HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled
        # A chunked body containing a terminating chunk and a request inside chunk data.
        + b"POST /third HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % (len(b"0\r\n\r\n" + smuggled))
        + b"0\r\n\r\n"
        + smuggled
        + b"\r\n0\r\n\r\n"
        b"GET /fourth HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    )
    statuses = [(await read_response(reader)).status for _ in range(4)]
    assert await wait_closed(reader, 5) == b""
    close_writer(writer)
    assert statuses == [200] * 4
    seen = recording_backend.seen
    assert [(s.method, s.target) for s in seen] == [
        ("GET", "/first"),
        ("POST", "/second"),
        ("POST", "/third"),
        ("GET", "/fourth"),
    ]
    assert seen[0].body == b""
    assert seen[1].body == smuggled
    assert seen[2].body == b"0\r\n\r\n" + smuggled
    # Upstream framing is the proxy's own: one length or chunked, never both.
    for s in seen:
        names = s.names()
        assert not ({"content-length", "transfer-encoding"} <= names), s.headers
        assert len(s.get_all("Content-Length")) <= 1


async def test_long_chunk_extension_mid_stream_is_refused_at_the_bound(
    upload_probe: UploadProbe, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # An upload already streaming upstream whose next chunk-size line never ends (13 MB of
    # "extension" were accepted before the bound): refused once the line passes
    # limits.max_chunk_line, the upload aborted upstream, the connection closed.
    proxy = await proxy_factory(upload_probe.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    async with asyncio.timeout(5):
        await upload_probe.head.wait()
    writer.write(b"5;x=")
    for _ in range(3):
        writer.write(b"e" * 2000)  # 6004 bytes of line so far: over 4096
        await writer.drain()
    resp = await read_response(reader, within=2)
    assert resp.status == 400
    assert await wait_closed(reader, 5) == b""
    close_writer(writer)
    async with asyncio.timeout(2):
        await upload_probe.done.wait()
    assert len(upload_probe.outcomes) == 1
    assert upload_probe.outcomes[0].startswith("aborted:"), upload_probe.outcomes


async def test_chunk_size_line_exactly_at_the_bound_is_forwarded(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[limits]\nmax_chunk_line = 64")
    fits = b"5;" + b"e" * 60 + b"\r\n"  # 64 bytes with its CRLF
    assert len(fits) == 64
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"POST /fits HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + fits
        + b"hello\r\n0\r\n\r\n"
    )
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"POST /over HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"5;"
        + b"e" * 61
        + b"\r\nhello\r\n0\r\n\r\n"
    )
    resp = await read_response(reader)
    assert resp.status == 400
    assert await wait_closed(reader, 5) == b""
    close_writer(writer)
    assert [(s.target, s.body) for s in recording_backend.seen] == [("/fits", b"hello")]
