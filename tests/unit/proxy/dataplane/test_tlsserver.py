"""proxy.dataplane.tlsserver: TLS connections on OpenSSL sockets driven by the loop.

The peers are real: asyncio's own TLS client (an independent TLS stack over memory BIOs)
and raw TCP sockets for the handshakes that go wrong.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
import uvloop

from proxy.dataplane import tlsserver
from proxy.dataplane.tlsserver import TLSServer, TLSTransport, create_tls_server


class Recorder(asyncio.Protocol):
    """Keeps what happens to it; answers ``b"echo:..."`` lines, ``b"blast N"`` with N bytes,
    ``b"bye"`` by closing after its answer."""

    def __init__(self) -> None:
        self.transport: TLSTransport | None = None
        self.events: list[str] = []
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TLSTransport)
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        assert self.transport is not None
        while b"\n" in self.data:
            line, _, rest = bytes(self.data).partition(b"\n")
            self.data = bytearray(rest)
            if line.startswith(b"echo:"):
                self.transport.write(line + b"\n")
            elif line.startswith(b"blast "):
                self.transport.write(_pattern(int(line[6:])))
            elif line == b"bye":
                self.transport.write(b"bye\n")
                self.transport.close()
            elif line == b"boom":
                raise RuntimeError("the protocol failed on its input")

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def _pattern(n: int) -> bytes:
    block = hashlib.sha256(b"x").digest()
    return (block * (n // len(block) + 1))[:n]


class Served:
    def __init__(self, server: TLSServer, made: list[Recorder]) -> None:
        self.server = server
        self.made = made
        self.port: int = server.sockets[0].getsockname()[1]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_ctx(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    return ctx


async def _serve(ctx: ssl.SSLContext, handshake_timeout: float = 5.0) -> Served:
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    server = await create_tls_server(
        factory, "127.0.0.1", 0, ssl_context=ctx, handshake_timeout=handshake_timeout
    )
    return Served(server, made)


@pytest.fixture
async def served(server_ctx: ssl.SSLContext) -> AsyncIterator[Served]:
    s = await _serve(server_ctx)
    yield s
    s.server.close()
    for t in list(s.server.transports):
        t.abort()


def _run(kind: str, coro: Callable[[], Any]) -> None:
    """Run ``coro`` on the loop ``kind`` names (the worker runs on uvloop)."""
    if kind == "uvloop":
        uvloop.run(coro())
    else:
        asyncio.run(coro())


async def test_serves_tls_and_reports_the_connection(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=client_ssl, server_hostname="localhost"
    )
    writer.write(b"echo:hello\n")
    assert await reader.readline() == b"echo:hello\n"
    (proto,) = served.made
    t = proto.transport
    assert t is not None
    assert t.get_extra_info("peername") == writer.get_extra_info("sockname")
    assert t.get_extra_info("sockname")[1] == served.port
    sslobj = t.get_extra_info("ssl_object")
    assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
    assert t.get_extra_info("sslcontext") is sslobj.context
    assert t.get_extra_info("cipher") == sslobj.cipher()
    assert t.get_extra_info("nonsense", "d") == "d"
    sock = t.get_extra_info("socket")  # options come from the listener
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert served.server.transports == {t}
    writer.close()
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert proto.events == ["made", "eof", "lost"]  # close_notify or FIN: eof, then closed
    assert served.server.transports == set()


def test_both_loops_serve(loop_kind: str, server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    client = ssl.create_default_context()
    ca.configure_trust(client)

    async def main() -> None:
        s = await _serve(server_ctx)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", s.port, ssl=client, server_hostname="localhost"
        )
        for i in range(50):  # many small writes each way, in order
            writer.write(b"echo:%d\n" % i)
        for i in range(50):
            assert await reader.readline() == b"echo:%d\n" % i
        writer.write(b"bye\n")
        assert await reader.readline() == b"bye\n"
        assert await reader.read() == b""  # the server's close_notify: a clean end
        writer.close()
        s.server.close()

    _run(loop_kind, main)


@pytest.fixture
def other_ctx(ca: trustme.CA) -> ssl.SSLContext:
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("other.test").configure_cert(other)
    return other


async def test_sni_callback_chooses_the_context_the_transport_reports(
    server_ctx: ssl.SSLContext, other_ctx: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    other = other_ctx
    listener = server_ctx
    names: list[str | None] = []

    def pick(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)
        if name == "other.test":
            sslobj.context = other

    listener.sni_callback = pick
    s = await _serve(listener)
    try:
        _r, writer = await asyncio.open_connection(
            "127.0.0.1", s.port, ssl=client_ssl, server_hostname="other.test"
        )
        cert = writer.get_extra_info("peercert")
        assert ("DNS", "other.test") in cert["subjectAltName"]
        t = (await _first(s)).transport
        assert t is not None
        assert t.get_extra_info("ssl_object").context is other
        assert names == ["other.test"]
        writer.close()
    finally:
        s.server.close()


async def test_a_silent_client_is_cut_at_the_handshake_deadline(
    server_ctx: ssl.SSLContext,
) -> None:
    s = await _serve(server_ctx, handshake_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        await asyncio.sleep(0.05)
        assert len(s.server.handshakes) == 1
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert s.server.handshakes == set()
        assert s.made == []  # the protocol never saw it
        writer.close()
    finally:
        s.server.close()


async def test_a_failed_handshake_never_reaches_the_protocol(
    served: Served, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "teeproxy.tls")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with the request unread: a reset
        data = b""
    assert not data.startswith(b"HTTP/")  # at most a TLS alert, then closed
    assert served.made == []
    assert served.server.handshakes == set()
    assert "TLS handshake failed" in caplog.text
    writer.close()
    # An untrusting client: the handshake fails on its side; the server is unharmed.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            "127.0.0.1", served.port, ssl=ssl.create_default_context(), server_hostname="x"
        )
    _r, w2 = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=client_ssl, server_hostname="localhost"
    )
    w2.write(b"echo:still\n")
    assert await _r.readline() == b"echo:still\n"
    w2.close()


async def test_a_slow_reader_pauses_the_protocol_and_gets_every_byte(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=client_ssl, server_hostname="localhost", limit=2**20
    )
    size = 8 * 2**20
    writer.write(b"blast %d\n" % size)
    (proto,) = [await _first(served)]
    t = proto.transport
    assert t is not None
    await _until(lambda: "pause" in proto.events)
    assert t.get_write_buffer_size() > t.get_write_buffer_limits()[1]
    got = bytearray()
    while len(got) < size:
        chunk = await asyncio.wait_for(reader.read(2**20), 5)
        assert chunk
        got += chunk
    assert got == _pattern(size)  # in order, nothing lost or repeated
    await _until(lambda: "resume" in proto.events)
    assert t.get_write_buffer_size() == 0
    assert proto.events == ["made", "pause", "resume"]
    writer.close()


async def test_close_flushes_what_is_queued_then_ends(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    reader, writer, proto, t = await _connected(served, client_ssl)
    size = 4 * 2**20
    t.write(_pattern(size))  # more than the socket takes at once: most of it queues
    assert t.get_write_buffer_size() > 0
    t.close()
    assert t.is_closing()
    t.write(b"ignored after close")
    got = await asyncio.wait_for(reader.read(), 10)  # to the close_notify
    assert bytes(got) == _pattern(size)
    assert await asyncio.wait_for(proto.lost, 5) is None
    writer.close()


async def test_abort_drops_the_queue_and_closes_at_once(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    reader, writer, proto, t = await _connected(served, client_ssl)
    t.write(_pattern(4 * 2**20))
    t.abort()
    assert t.get_write_buffer_size() == 0
    assert await asyncio.wait_for(proto.lost, 5) is None
    got = bytearray()
    try:  # an end without close_notify: EOF or an error, by the client's stack
        while chunk := await asyncio.wait_for(reader.read(2**20), 5):
            got += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    assert len(got) < 4 * 2**20  # the queue was dropped, not sent
    assert served.server.transports == set()
    writer.close()


async def test_paused_reading_holds_data_until_resumed(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    reader, writer, proto, t = await _connected(served, client_ssl)
    t.pause_reading()
    assert not t.is_reading()
    writer.write(b"echo:b\n" * 3000)  # several records: some decrypted ahead in OpenSSL
    await writer.drain()
    await asyncio.sleep(0.1)
    assert bytes(proto.data) == b""
    t.resume_reading()
    for _ in range(3000):
        assert await asyncio.wait_for(reader.readline(), 5) == b"echo:b\n"
    writer.close()


async def test_a_peer_reset_is_reported_to_the_protocol(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    raw = socket.socket()
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", served.port))
    client = client_ssl.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    while True:
        try:
            client.do_handshake()
            break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            await asyncio.sleep(0.01)
    proto = await _first(served)
    client.send(b"echo:x")  # no newline: nothing to answer
    await _until(lambda: bytes(proto.data) == b"echo:x")
    raw_fd = socket.socket(fileno=client.detach())
    raw_fd.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw_fd.close()  # RST
    exc = await asyncio.wait_for(proto.lost, 5)
    assert exc is None or isinstance(exc, OSError)  # a reset, or an EOF when it raced
    assert "lost" in proto.events


async def test_a_protocol_failing_on_its_input_cuts_the_connection(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        reader, writer, proto, _transport = await _connected(served, client_ssl)
        writer.write(b"boom\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # cut, not left half-alive
        assert await asyncio.wait_for(proto.lost, 5) is None
        await _until(lambda: bool(errors))
        assert isinstance(errors[0].get("exception"), RuntimeError)  # still reported
        writer.close()
    finally:
        loop.set_exception_handler(None)


async def test_close_stops_accepting_and_ends_handshakes_but_keeps_connections(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=client_ssl, server_hostname="localhost"
    )
    _r2, w2 = await asyncio.open_connection("127.0.0.1", served.port)  # no handshake yet
    await _until(lambda: len(served.server.handshakes) == 1)
    served.server.close()
    assert not served.server.is_serving()
    await asyncio.wait_for(served.server.wait_closed(), 1)
    assert served.server.handshakes == set()
    assert await asyncio.wait_for(_r2.read(), 5) == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"echo:still\n")  # the established connection is untouched
    assert await reader.readline() == b"echo:still\n"
    writer.close()
    w2.close()


class _Exhausted:
    """A listener whose first accept() fails as a process out of descriptors does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.failures = 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def close(self) -> None:
        self.sock.close()

    def getsockname(self) -> Any:
        return self.sock.getsockname()


async def test_out_of_descriptors_pauses_accepting_then_resumes(
    server_ctx: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(tlsserver, "_ACCEPT_RETRY", 0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    exhausted = _Exhausted(sock)
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    server = TLSServer(
        asyncio.get_running_loop(),
        [exhausted],  # type: ignore[list-item]
        server_ctx,
        factory,
        5.0,
    )
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sock.getsockname()[1], ssl=client_ssl, server_hostname="localhost"
        )
        assert loop.time() - started >= 0.15  # waited out the pause, not spun
        assert "pausing" in caplog.text
        writer.write(b"echo:ok\n")
        assert await reader.readline() == b"echo:ok\n"
        writer.close()
    finally:
        server.close()


async def _connected(
    served: Served, client_ssl: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Recorder, TLSTransport]:
    """A client connection that has made one round trip, and the server's side of it."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=client_ssl, server_hostname="localhost"
    )
    writer.write(b"echo:x\n")
    assert await reader.readline() == b"echo:x\n"
    proto = served.made[0]
    assert proto.transport is not None
    return reader, writer, proto, proto.transport


async def _first(served: Served) -> Recorder:
    await _until(lambda: bool(served.made) and served.made[0].transport is not None)
    return served.made[0]


async def _until(cond: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_admit_is_asked_with_the_handshakes_under_way(server_ctx: ssl.SSLContext) -> None:
    asked: list[int] = []

    def admit(handshakes: int) -> bool:
        asked.append(handshakes)
        return handshakes < 1

    server = await create_tls_server(
        Recorder, "127.0.0.1", 0, ssl_context=server_ctx, handshake_timeout=5, admit=admit
    )
    port = server.sockets[0].getsockname()[1]
    try:
        _r1, w1 = await asyncio.open_connection("127.0.0.1", port)  # silent: a handshake
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r2.read(), 5) == b""  # refused: closed, no alert
        assert asked == [0, 1]
        assert len(server.handshakes) == 1
        w1.close()
        w2.close()
    finally:
        server.close()
