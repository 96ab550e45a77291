"""The upstream HTTP/1.1 client: a bounded keep-alive pool of raw loop connections.

Relaying a response body should cost little more than the TLS write to the client, so the
body is relayed at the protocol level: :meth:`BackendConnection.data_received` runs the
body through a framer (:mod:`proxy.dataplane.framing`: validated, counted, chunked framing
passed through as it came) and writes the result straight to the client's transport. No
task wakes up per chunk, nothing is de-chunked and re-chunked, and no stream object sits
in between; the forwarder's task sleeps from the first body byte to the last.

- Response heads are parsed by llhttp through ``httptools`` (strict mode: conflicting or
  malformed framing fields, bad status lines and bare LFs are errors). Lines and fields are
  bounded by ``limits.max_header_size`` and the count by :data:`MAX_RESPONSE_HEADERS`;
  interim 1xx responses are dropped (as the previous aiohttp client did), a 101 is an error
  (no upgrade was asked for through this client).
- Flow control: the forwarder pauses reading from the backend (:meth:`pause_reading`) when
  the client's transport buffer passes its high-water mark and resumes on drain; bytes that
  arrive before the forwarder starts relaying are held up to :data:`_PENDING_LIMIT`, beyond
  which reading pauses as well. Uploads wait for the backend transport to drain.
- A connection goes back to the pool only after an exchange that completed exactly (the
  whole request sent, the whole response read, nothing after it, keep-alive on both
  sides); anything else closes it. Idle connections close after
  ``backend.pool_idle_timeout``; the backend closing one removes it from the pool.
- :class:`BackendPool` bounds the connections per worker (``backend.pool_size``, else
  ``limits.max_connections``, in use and idle together, like aiohttp's connector limit it
  replaces); a request beyond the bound waits for a free one.

Errors never raise out of the protocol callbacks: they are recorded in
:attr:`BackendConnection.error` (a short reason) and wake the forwarder.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol
from urllib.parse import urlsplit

import httptools

from proxy.config import BackendConfig, LimitsConfig
from proxy.deadline import Deadline
from proxy.errors import FramingError
from proxy.log import forward_log as log

__all__ = [
    "MAX_RESPONSE_HEADERS",
    "BackendConnection",
    "BackendPool",
    "Body",
    "ResponseHead",
    "parse_response_head",
]

# The response header count the proxy's previous client (aiohttp's default) accepted.
MAX_RESPONSE_HEADERS: Final = 128
# Body bytes held between the response head and the start of relaying before reading pauses.
_PENDING_LIMIT: Final = 256 * 1024

# BackendConnection states.
_IDLE: Final = 0  # in the pool, or between exchanges
_HEAD: Final = 1  # request sent, reading the response head
_WAIT: Final = 2  # head parsed; body bytes held until the forwarder starts relaying
_BODY: Final = 3  # relaying the body
_DONE: Final = 4  # the response is complete
_FAILED: Final = 5  # the exchange broke; the connection is closed


class Body(Protocol):
    """What a body framer looks like to the connection (the classes of
    :mod:`proxy.dataplane.framing`)."""

    done: bool
    extra: int
    total: int
    pieces: list[bytes] | None

    def feed(self, data: bytes) -> bytes: ...

    def eof(self) -> bytes: ...


class ResponseHead:
    """A parsed response head (status line and fields as latin-1 strings)."""

    __slots__ = ("codings", "headers", "keep_alive", "lengths", "reason", "status", "version")

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""
        self.version = ""
        self.headers: list[tuple[str, str]] = []
        self.codings: list[bytes] = []  # raw Transfer-Encoding values
        self.lengths: list[bytes] = []  # raw Content-Length values
        self.keep_alive = False


class _HeadCallbacks:
    """httptools callbacks collecting one response head, with the field limits."""

    __slots__ = ("complete", "head", "max_field")

    def __init__(self, max_field: int) -> None:
        self.head = ResponseHead()
        self.max_field = max_field
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.head.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self.head
        if len(name) + len(value) > self.max_field:
            raise FramingError(f"response header field over {self.max_field} bytes")
        if len(head.headers) >= MAX_RESPONSE_HEADERS:
            raise FramingError(f"more than {MAX_RESPONSE_HEADERS} response header fields")
        lname = name.lower()
        if lname == b"transfer-encoding":
            head.codings.append(value)
        elif lname == b"content-length":
            head.lengths.append(value)
        head.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.complete = True


def parse_response_head(raw: bytes, max_field: int) -> ResponseHead:
    """Parse one response head (status line to the blank line, inclusive) with llhttp."""
    cb = _HeadCallbacks(max_field)
    parser = httptools.HttpResponseParser(cb)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        raise FramingError("backend answered with a protocol upgrade") from None
    except httptools.HttpParserCallbackError as e:
        if isinstance(e.__context__, FramingError):
            raise e.__context__ from None
        raise FramingError(f"invalid response head: {e}") from None
    except httptools.HttpParserError as e:
        raise FramingError(f"invalid response head: {e}") from None
    if not cb.complete:
        raise FramingError("invalid response head")
    head = cb.head
    head.status = parser.get_status_code()
    head.version = parser.get_http_version()
    head.keep_alive = bool(parser.should_keep_alive())
    if len(head.reason) > max_field:
        raise FramingError(f"response status line over {max_field} bytes")
    return head


class BackendConnection(asyncio.Protocol):
    """One keep-alive connection to the backend, serving one exchange at a time."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._lost_exc: BaseException | None = None
        self.uses = 0  # exchanges started on this connection
        self._state = _IDLE
        self._idle_handle: asyncio.TimerHandle | None = None  # fires at _idle_at or earlier
        self._idle_at = math.inf  # loop time this connection closes unless taken; inf: in use
        self._loop = asyncio.get_running_loop()
        # per exchange
        self.head: ResponseHead | None = None
        self.error = ""  # why the exchange broke ("" while it has not)
        self.received = False  # any response byte of this exchange arrived
        self.request_done = True  # the whole request was written
        self.final = b""  # the last output, held for the forwarder (hold_final)
        self._buf = b""
        self._waiter: asyncio.Future[None] | None = None
        self._body: Body | None = None
        self._write: Callable[[bytes], object] | None = None
        self._tap: Callable[[bytes], None] | None = None
        self._deadline: Deadline | None = None
        self._idle = 0.0
        self._hold_final = False
        self._read_paused = 0  # bit 1: the client is slow, bit 2: the pending buffer is full
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tr
        sock = tr.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Every event goes out when it is written (no Nagle delay on the small writes).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._state == _BODY:  # the hot path: one call per backend read
            self._deadline.set(self._idle, "idle")  # type: ignore[union-attr]
            body: Body = self._body  # type: ignore[assignment]
            try:
                out = body.feed(data)
            except FramingError as e:
                self.fail(f"invalid response body: {e}")
                return
            pieces = body.pieces
            if pieces:
                tap = self._tap
                if tap is not None:
                    for piece in pieces:
                        tap(piece)
                pieces.clear()
            if body.done:
                self._complete(out)
            elif out:
                self._write(out)  # type: ignore[misc]
            return
        if self._state == _HEAD:
            self._head_data(data)
        elif self._state == _WAIT:
            self._buf += data
            if len(self._buf) > _PENDING_LIMIT:
                self._pause(2)
        elif self._state != _FAILED:
            # Bytes nobody asked for (after a complete response, or on an idle connection):
            # the backend's framing and ours disagree, so the connection cannot be trusted.
            log.info("backend sent %d bytes outside a response: closing its connection", len(data))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._lost_exc = exc
        self.transport = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        state = self._state
        if state == _BODY:
            self._body_ended(exc)
        elif state == _HEAD:
            self.fail("backend closed the connection before the response head")
        self.pool.gone(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the exchange ------------------------------------------------------------------

    def send(self, data: bytes, *, request_done: bool) -> None:
        """Start an exchange: write the request head (and body, or its start)."""
        self.uses += 1
        self._state = _HEAD
        self.head = None
        self.error = ""
        self.received = False
        self.request_done = request_done
        self.final = b""
        self._buf = b""
        self._body = None
        self._waiter = self._loop.create_future()
        if self.transport is None:
            self.fail("backend connection closed")
            return
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        """More of the request body (uploads)."""
        if self.transport is not None and self._state != _FAILED:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the backend takes what was written (uploads)."""
        if not self._write_paused or self.transport is None:
            return
        drain = self._drain = self._loop.create_future()
        await drain

    async def wait(self) -> None:
        """Until the head is parsed (or, once relaying, the body ends) or the exchange broke."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            await waiter

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    def broke(self) -> str:
        """Why the exchange broke, or "" (a method: read anew after every await)."""
        return self.error

    @property
    def reusable(self) -> bool:
        """May this connection serve another exchange (the last one ended cleanly)?"""
        head = self.head
        return (
            self._state == _DONE
            and self.request_done
            and head is not None
            and head.keep_alive
            and not self.lost
            and (self._body is None or self._body.extra == 0)
        )

    def start(
        self,
        body: Body,
        write: Callable[[bytes], object],
        *,
        tap: Callable[[bytes], None] | None,
        deadline: Deadline,
        idle: float,
        hold_final: bool,
    ) -> bytes:
        """Relay the body from now on; return the output for what arrived already.

        The return value is not written: the caller writes it with the response head. When
        the body is complete already (:attr:`complete`), that is all of it. Otherwise the
        connection writes every later read with ``write`` as it comes; with
        ``hold_final`` the output of the read that completes the body is kept in
        :attr:`final` for the caller to write (after a tap's ``response_end``).
        """
        self._body = body
        self._write = write
        self._tap = tap
        self._deadline = deadline
        self._idle = idle
        self._hold_final = hold_final
        if self._state != _WAIT:  # broke already
            return b""
        pending = self._buf
        self._buf = b""
        self._waiter = self._loop.create_future()
        out = b""
        if pending:
            try:
                out = body.feed(pending)
            except FramingError as e:
                self.fail(f"invalid response body: {e}")
                return b""
            if body.pieces:
                if tap is not None:
                    for piece in body.pieces:
                        tap(piece)
                body.pieces.clear()
        if body.done:
            self._state = _DONE
            self._wake()
            return out
        self._state = _BODY
        if self.lost:
            self._hold_final = True  # the caller writes what remains
            self._body_ended(self._lost_exc)
            out += self.final
            self.final = b""
            return out
        self._resume(2)
        return out

    def pause_reading(self) -> None:
        """The client stopped taking bytes: stop reading from the backend."""
        self._pause(1)

    def resume_reading(self) -> None:
        self._resume(1)

    def fail(self, reason: str) -> None:
        """End the exchange as broken: close the connection, wake the forwarder."""
        if self._state in (_FAILED, _DONE, _IDLE):
            if self._state == _DONE:
                self.close()
            return
        self._state = _FAILED
        self.error = reason
        self.close()
        self._wake()

    def close(self) -> None:
        """Close the connection now (it never goes back to the pool)."""
        if self.transport is not None:
            self.transport.abort()

    def idle(self, timeout: float) -> None:
        """In the pool: closed after ``timeout`` unless taken again.

        One timer per connection, as the client side's header deadline: going idle after
        each exchange moves a float, and the timer, when it fires while the connection is
        in use or idle since later, re-arms itself for the time then set (instead of a
        timer made and cancelled per exchange).
        """
        self._state = _IDLE
        self._body = self._write = self._tap = self._deadline = None
        self._waiter = None
        when = self._idle_at = self._loop.time() + timeout
        handle = self._idle_handle
        if handle is not None and when < handle.when():  # a shorter pool_idle_timeout
            handle.cancel()
            handle = None
        if handle is None:
            self._idle_handle = self._loop.call_at(when, self._idle_over)

    def take(self) -> bool:
        """Out of the pool for an exchange; False when it cannot serve one."""
        self._idle_at = math.inf
        return self.transport is not None and not self.transport.is_closing()

    def _idle_over(self) -> None:
        self._idle_handle = None
        when = self._idle_at
        if when == math.inf:
            return  # in use: the next idle() arms a timer again
        if self._loop.time() < when:
            self._idle_handle = self._loop.call_at(when, self._idle_over)
            return
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _head_data(self, data: bytes) -> None:
        self.received = True
        buf = self._buf + data if self._buf else data
        pool = self.pool
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end + 4 > pool.max_head:
                if end >= 0 or len(buf) > pool.max_head:
                    self.fail(f"response head over {pool.max_head} bytes")
                    return
                self._buf = buf
                return
            try:
                head = parse_response_head(buf[: end + 4], pool.max_field)
            except FramingError as e:
                self.fail(str(e))
                return
            buf = buf[end + 4 :]
            if 100 <= head.status < 200:
                continue  # interim response (100, 102, 103): dropped
            self.head = head
            self._state = _WAIT
            self._buf = buf
            if len(buf) > _PENDING_LIMIT:
                self._pause(2)
            self._wake()
            return

    def _body_ended(self, exc: BaseException | None) -> None:
        """The connection closed while relaying: the end of the body, or a broken one."""
        if exc is not None:
            self.fail(f"backend connection broke mid-body: {exc}")
            return
        try:
            out = self._body.eof()  # type: ignore[union-attr]
        except FramingError as e:
            self.fail(str(e))
            return
        self._complete(out)

    def _complete(self, out: bytes) -> None:
        self._state = _DONE
        if self._hold_final:
            self.final = out
        elif out:
            self._write(out)  # type: ignore[misc]
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause(self, why: int) -> None:
        if not self._read_paused and self.transport is not None:
            self.transport.pause_reading()
        self._read_paused |= why

    def _resume(self, why: int) -> None:
        was = self._read_paused
        self._read_paused &= ~why
        if was and not self._read_paused and self.transport is not None:
            self.transport.resume_reading()


class BackendPool:
    """The keep-alive connections of one worker to its backend, bounded."""

    def __init__(self, backend: BackendConfig, limits: LimitsConfig) -> None:
        self.backend = backend
        self.limit = backend.pool_size or limits.max_connections
        self.max_field = limits.max_header_size
        self.max_head = (limits.max_header_size + 2) * (MAX_RESPONSE_HEADERS + 1)
        self.closed = False
        self._idle: list[BackendConnection] = []
        self._open = 0  # connections that exist or are being opened (the bounded number)
        self._waiters: deque[asyncio.Future[None]] = deque()
        if not backend.unix_path:
            parts = urlsplit(backend.url)
            self._host = parts.hostname or "127.0.0.1"
            self._port = parts.port or 80
            self.authority = parts.netloc
        else:
            self._host, self._port = "", 0
            self.authority = "backend"

    async def acquire(self) -> tuple[BackendConnection, bool]:
        """A connection for one exchange, and whether it served one before. Waits while
        the pool is at its bound; raises OSError when a new connection cannot be opened."""
        while True:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if conn.take():
                    return conn, True
            if self._open < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._wake_one()  # the slot it may have been given goes to the next
                raise
        self._open += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        return conn, False

    async def _connect(self) -> BackendConnection:
        loop = asyncio.get_running_loop()

        def factory() -> BackendConnection:
            return BackendConnection(self)

        if self.backend.unix_path:
            _, conn = await loop.create_unix_connection(factory, self.backend.unix_path)
        else:
            _, conn = await loop.create_connection(factory, self._host, self._port)
        return conn

    def release(self, conn: BackendConnection) -> None:
        """The exchange on ``conn`` is over: keep it for the next one, or close it."""
        if conn.reusable and not self.closed and conn.take():
            conn.idle(self.backend.pool_idle_timeout)
            self._idle.append(conn)
            self._wake_one()
        else:
            conn.close()

    def gone(self, conn: BackendConnection) -> None:
        """``conn`` closed (called once, from its connection_lost): its slot is free."""
        if conn in self._idle:
            self._idle.remove(conn)
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def reserve(self) -> None:
        """Count one connection that someone else opens (a WebSocket) against the bound."""
        while self._open >= self.limit:
            if self._idle:  # an idle connection gives its slot up (gone() wakes us)
                self._idle.pop().close()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._wake_one()
                raise
        self._open += 1

    def unreserve(self) -> None:
        self._open -= 1
        self._wake_one()

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self.closed = True
        for conn in list(self._idle):
            conn.close()
