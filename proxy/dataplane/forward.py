"""The streaming forwarder: one client request in, one backend exchange out, bytes relayed.

Guarantees (each has a test under tests/integration):
- Bodies stream both ways chunk by chunk as they arrive, and each SSE event is written to
  the client as soon as the backend's bytes arrive. Two bounded exceptions: a request body
  declaring at most 64 KiB is read whole first and sent with the headers (cheaper, and a
  stalled client never reaches the backend), and a tap (:mod:`proxy.dataplane.hooks`) may
  ask for a response of bounded size to be held back (receipts put their signature in the
  headers of such a response).
- The response body is relayed at the protocol level (:mod:`proxy.dataplane.upstream`):
  each backend read is validated by a framer (:mod:`proxy.dataplane.framing`) and written
  to the client's transport from the read callback, with no task switch per chunk; chunked
  framing passes through as the backend wrote it once validated (chunk-size lines bounded,
  lengths exact, extensions and trailers dropped). A client that stops reading pauses the
  backend read (its transport's high-water mark) and is cut after ``limits.send_timeout``.
- Bodies are relayed byte for byte: no decompression, no compression (Content-Encoding and
  the client's Accept-Encoding pass through; the HTTP client adds no headers of its own).
- Framing is re-established on each hop: the client's framing is validated
  (:func:`proxy.dataplane.headers.check_request_framing`) and never copied upstream.
- An absolute-form target (``GET http://host/path``) is sent upstream in origin form with
  its authority as the Host (RFC 9112 3.2.2).
- A client disconnect closes the backend connection at once (it never goes back to the
  pool) and cancels the handler (aiohttp ``handler_cancellation``).
- Failures before the response starts give 502 (backend broken) or 504 (backend timeout)
  with a JSON body; after it started, the client connection is aborted so a truncated body
  can never look complete.

What the proxy answers itself (evidence, receipts) is looked up in a
:class:`proxy.dataplane.endpoints.LocalEndpoints` before forwarding; what observes the
relayed bytes (receipts) is a tap from a :class:`proxy.dataplane.hooks.TapFactory`.
WebSocket upgrades are relayed by :mod:`proxy.dataplane.websocket` over aiohttp's client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import metrics
from proxy.config import Config
from proxy.dataplane.endpoints import LocalEndpoints
from proxy.dataplane.framing import (
    CHUNKED,
    CLOSE,
    LENGTH,
    NONE,
    ChunkedBody,
    CloseBody,
    LengthBody,
    response_framing,
)
from proxy.dataplane.headers import (
    check_request_framing,
    request_headers_for_backend,
    response_headers_for_client,
)
from proxy.dataplane.hooks import STREAM, ExchangeTap, TapFactory
from proxy.dataplane.protocol import set_write_listener
from proxy.dataplane.responses import SERVER, json_error
from proxy.dataplane.upstream import BackendConnection, BackendPool, Body, ResponseHead
from proxy.dataplane.websocket import is_websocket_upgrade, relay_websocket
from proxy.deadline import Deadline
from proxy.errors import BackendError, BackendTimeout, ClientRequestError, FramingError
from proxy.log import access_log
from proxy.log import forward_log as log
from proxy.tasks import spawn

__all__ = ["Forwarder", "make_session"]

# Headers aiohttp's client would otherwise add on its own (and so change what the backend
# sees: an Accept-Encoding the client never sent would let the backend compress).
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


# Request bodies up to this size that declare a Content-Length are read before the backend
# request starts and sent in one piece; larger or chunked ones stream (_pump_body).
_INLINE_BODY = 64 * 1024

# Methods a request may be retried with, once, when a reused keep-alive connection turns
# out to be closed before any response byte (RFC 9110 9.2.2: idempotent methods).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# Methods whose requests say "Content-Length: 0" upstream when the client sent no body (as
# the previous client, aiohttp's, did: RFC 9110 8.6 asks for it where content has meaning).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# An absolute-form target's authority (RFC 3986 3.2: reg-name or IP literal, optional
# port); userinfo is refused (RFC 9110 4.2.4).
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")


def make_session(cfg: Config) -> aiohttp.ClientSession:
    """The WebSocket client (plain HTTP goes through :class:`BackendPool`): a bounded
    keep-alive pool to one backend, no decompression."""
    b = cfg.backend
    limit = b.pool_size or cfg.limits.max_connections
    connector: aiohttp.BaseConnector
    if b.unix_path:
        connector = aiohttp.UnixConnector(
            path=b.unix_path, limit=limit, keepalive_timeout=b.pool_idle_timeout
        )
    else:
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=0,
            keepalive_timeout=b.pool_idle_timeout,
            ttl_dns_cache=10,
        )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=b.connect_timeout, connect=b.connect_timeout
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=64 * 1024,
        max_line_size=cfg.limits.max_header_size,
        max_field_size=cfg.limits.max_header_size,
    )


class _Relayed(web.StreamResponse):
    """A response the forwarder wrote to the client's transport itself.

    aiohttp sees it as sent (``prepare()`` and ``write_eof()`` do nothing) and learns only
    whether the connection stays open after it.
    """

    def __init__(self, status: int, reason: str, *, keep_alive: bool) -> None:
        super().__init__(status=status, reason=reason)
        self._keep_alive = keep_alive
        self._eof_sent = True


@dataclass(slots=True)
class _Exchange:
    """Per-request state shared by the steps of one forward (and read by the access log).

    While a response is relayed it also hears about the client's transport
    (:class:`proxy.dataplane.protocol.WriteListener`): a full write buffer pauses the
    backend read and starts the send deadline; a drained one resumes both.
    """

    client_ip: str
    status: int = 0
    body_in: int = 0
    body_out: int = 0
    local: bool = False  # answered by the proxy itself (not relayed)
    body_error: ClientRequestError | None = None
    response: web.StreamResponse | None = None
    tap: ExchangeTap | None = None  # sees this exchange's bytes (hooks.TapFactory)
    conn: BackendConnection | None = None
    deadline: Deadline | None = None
    idle_timeout: float = 0.0
    send_timeout: float = 0.0
    paused: bool = False
    client_gone: bool = False
    drained: asyncio.Future[None] | None = None

    def client_paused(self) -> None:
        self.paused = True
        if self.conn is not None:
            self.conn.pause_reading()
        if self.deadline is not None:
            self.deadline.set(self.send_timeout, "send")

    def client_resumed(self) -> None:
        self.paused = False
        if self.conn is not None:
            self.conn.resume_reading()
        if self.deadline is not None:
            self.deadline.set(self.idle_timeout, "idle")
        self._wake()

    def client_lost(self) -> None:
        self.client_gone = True
        if self.conn is not None:
            self.conn.fail("the client went away")  # closes the backend connection now
        self._wake()

    def _wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Forwarder:
    """Handles every request on the TLS listener by relaying it to the backend."""

    def __init__(
        self,
        cfg: Config,
        session: aiohttp.ClientSession,
        *,
        endpoints: LocalEndpoints | None = None,
        taps: TapFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.session = session  # WebSocket upgrades only
        self.pool = BackendPool(cfg.backend, cfg.limits)
        self.endpoints = endpoints or LocalEndpoints()
        self.taps = taps
        self._hsts = _hsts_value(cfg)
        self.draining = False

    def reconfigure(self, cfg: Config, session: aiohttp.ClientSession) -> None:
        """Take a new config (SIGHUP); requests already running keep what they started with."""
        if cfg.backend != self.cfg.backend or cfg.limits != self.cfg.limits:
            old = self.pool
            self.pool = BackendPool(cfg.backend, cfg.limits)
            old.close()  # idle connections now; those in use when their exchange ends
        self.cfg = cfg
        self.session = session
        self._hsts = _hsts_value(cfg)

    def close(self) -> None:
        """Close the backend connections (idle ones now, busy ones when they finish)."""
        self.pool.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        cfg = self.cfg
        ex = _Exchange(client_ip=_client_ip(request))
        tally = metrics.TALLY
        tally.add(metrics.OPEN_STREAMS)
        resp: web.StreamResponse | None = None
        try:
            resp = await self._handle(request, cfg, ex)
            return resp
        finally:
            elapsed = time.monotonic() - started
            tally.add(metrics.OPEN_STREAMS, -1)
            if ex.local:
                _count_local(request, resp, ex)
            else:  # relayed bytes are counted once per exchange, not per chunk
                if ex.body_in:
                    tally.add(metrics.BYTES_IN, ex.body_in)
                if ex.body_out:
                    tally.add(metrics.BYTES_OUT, ex.body_out)
            if ex.status:
                tally.add(metrics.status_counter(ex.status))
                tally.observe(elapsed)
            if cfg.logging.access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    '%s "%s %s" %s %d %d %.3f',
                    ex.client_ip or "-",
                    request.method,
                    request.rel_url.raw_path,
                    ex.status or "-",
                    ex.body_in,
                    ex.body_out,
                    elapsed,
                )

    async def _handle(
        self, request: web.BaseRequest, cfg: Config, ex: _Exchange
    ) -> web.StreamResponse:
        try:
            local = self.endpoints.find(request.method, request.path)
            if local is not None:  # answered by the proxy itself
                ex.local = True
                resp = await local(request)
                ex.status = resp.status
                return resp
            return await self._forward(request, cfg, ex)
        except ClientRequestError as e:
            return self._fail(request, ex, e.status, "invalid_request", e.message)
        except BackendTimeout as e:
            metrics.BACKEND_ERRORS.labels(f"timeout_{e.phase}").inc()
            return self._fail(request, ex, 504, "backend_timeout", str(e))
        except BackendError as e:
            metrics.BACKEND_ERRORS.labels("unavailable").inc()
            return self._fail(request, ex, 502, "backend_unavailable", str(e))

    def _fail(
        self, request: web.BaseRequest, ex: _Exchange, status: int, kind: str, message: str
    ) -> web.StreamResponse:
        if ex.response is not None and ex.response.prepared:
            # Headers already went out: the only honest signal left is a cut connection.
            _abort(request)
            return ex.response
        ex.status = status
        ex.local = True
        return json_error(status, kind, message, close=True, no_store=False)

    # -- plain HTTP --------------------------------------------------------------------

    async def _forward(
        self, request: web.BaseRequest, cfg: Config, ex: _Exchange
    ) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        content_length = check_request_framing(headers)
        target, authority = _target(request.raw_path)
        limit = cfg.limits.max_body_size
        if limit and content_length is not None and content_length > limit:
            raise ClientRequestError(413, f"request body exceeds {limit} bytes")
        refused = request.content.exception()
        if refused is not None:  # the protocol refused the body's framing already
            raise ClientRequestError(400, f"malformed request body: {refused}")

        if is_websocket_upgrade(request):
            return await self._websocket(
                request, cfg, headers=headers, target=target, authority=authority, ex=ex
            )

        if request.headers.get("Expect", "").lower() == "100-continue":
            # Answer for the backend: the body limits are ours to enforce (RFC 9110 10.1.1).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        host = authority or request.headers.get("Host", "")
        up_headers = _with_host(
            request_headers_for_backend(headers, client_ip=ex.client_ip, proto="https", host=host),
            authority or ("" if host else self.pool.authority),
        )
        if self.taps is not None:
            ex.tap = self.taps.tap(request.method, request.path)
        has_body = request.body_exists and content_length != 0
        method = request.method
        body = b""
        stream = ""  # how a streamed request body is framed upstream
        if has_body and content_length is not None and content_length <= _INLINE_BODY:
            # A small declared body (every chat request) is read first and sent with the
            # request headers in one write.
            body = await self._read_small_body(request, cfg, ex, content_length)
            up_headers.append(("Content-Length", str(content_length)))
        elif has_body:
            if content_length is None:
                stream = "chunked"
                up_headers.append(("Transfer-Encoding", "chunked"))
            else:
                stream = "length"
                up_headers.append(("Content-Length", str(content_length)))
        elif content_length == 0 or method in _BODY_METHODS:
            up_headers.append(("Content-Length", "0"))
        head = _request_head(method, target, up_headers)
        # The loop, from the connection's task (aiohttp runs each request's handler in a
        # task of its own: the current one, which the deadline cancels).
        loop = request.task.get_loop()
        deadline = ex.deadline = Deadline(cfg.backend.total_timeout or None, loop=loop)
        ex.idle_timeout = cfg.backend.idle_timeout
        ex.send_timeout = cfg.limits.send_timeout
        try:
            return await self._exchange(request, cfg, ex, deadline, head=head + body, stream=stream)
        except asyncio.CancelledError:
            if not deadline.expired_by():
                raise  # the client went away (or shutdown): not ours to answer
            return self._deadline_passed(request, cfg, ex, deadline.phase)
        finally:
            deadline.close()

    def _deadline_passed(
        self, request: web.BaseRequest, cfg: Config, ex: _Exchange, phase: str
    ) -> web.StreamResponse:
        seconds = {
            "connect": cfg.backend.connect_timeout,
            "headers": cfg.backend.response_header_timeout,
            "idle": cfg.backend.idle_timeout,
            "send": cfg.limits.send_timeout,
            "total": cfg.backend.total_timeout,
        }[phase]
        if phase == "send":
            metrics.CONNECTIONS_REJECTED.labels("send_timeout").inc()
            log.info("client stopped reading for %.0f s: closing", seconds)
            _abort(request)
            return ex.response or json_error(
                408, "send_timeout", "client stopped reading", close=True, no_store=False
            )
        if phase == "idle":
            log.warning("backend idle for %.0f s mid-response: aborting", seconds)
        raise BackendTimeout(phase, seconds)

    async def _exchange(
        self,
        request: web.BaseRequest,
        cfg: Config,
        ex: _Exchange,
        deadline: Deadline,
        *,
        head: bytes,
        stream: str,
    ) -> web.StreamResponse:
        b = cfg.backend
        pool = self.pool
        retried = False
        while True:
            deadline.set(b.connect_timeout, "connect")  # a free pool slot, then a connection
            try:
                conn, reused = await pool.acquire()
            except OSError as e:
                raise BackendError(f"backend request failed: {_describe(e)}") from e
            ex.conn = conn
            pump: asyncio.Task[None] | None = None
            try:
                deadline.set(b.response_header_timeout, "headers")
                conn.send(head, request_done=not stream)
                if stream:
                    pump = spawn(self._pump_body(request, cfg, ex, conn, stream), "upload")
                await conn.wait()
                if conn.broke():
                    if ex.body_error is not None:
                        raise ex.body_error
                    if (
                        reused
                        and not conn.received
                        and not stream
                        and not retried
                        and request.method in _IDEMPOTENT
                    ):
                        # A kept-alive connection the backend had closed: once more, anew.
                        retried = True
                        continue
                    raise BackendError(f"backend request failed: {conn.broke()}")
                return await self._respond(request, cfg, ex, conn, deadline)
            finally:
                if pump is not None and not pump.done():
                    pump.cancel()  # the request was not sent whole: not reusable
                pool.release(conn)
                ex.conn = None

    async def _respond(
        self,
        request: web.BaseRequest,
        cfg: Config,
        ex: _Exchange,
        conn: BackendConnection,
        deadline: Deadline,
    ) -> web.StreamResponse:
        head = conn.head
        assert head is not None  # noqa: S101 - conn.wait() returned without an error
        try:
            framing, length = response_framing(
                request.method, head.status, head.codings, head.lengths
            )
        except FramingError as e:
            raise BackendError(f"invalid backend response: {e}") from e
        headers: CIMultiDict[str] = CIMultiDict(response_headers_for_client(head.headers))
        if self._hsts:
            headers["Strict-Transport-Security"] = self._hsts
        headers.setdefault("Server", SERVER)
        tap = ex.tap
        hold = (
            tap.response_headers(head.status, headers, length if framing == LENGTH else None)
            if tap is not None
            else STREAM
        )
        if hold is not STREAM:
            return await self._relay_held(
                request,
                cfg,
                ex,
                conn=conn,
                deadline=deadline,
                headers=headers,
                framing=framing,
                length=length,
                limit=hold,
            )
        return await self._relay(
            request,
            cfg,
            ex,
            conn=conn,
            deadline=deadline,
            headers=headers,
            framing=framing,
            length=length,
        )

    def _client_body(
        self,
        request: web.BaseRequest,
        cfg: Config,
        *,
        head: ResponseHead,
        headers: CIMultiDict[str],
        framing: int,
        length: int,
        collect: bool,
    ) -> tuple[Body, bool]:
        """The framer relaying the body in the client's framing, and keep-alive; sets the
        framing fields of ``headers`` (the backend's were hop-by-hop and are gone)."""
        v11 = request.version >= (1, 1)
        keep_alive = request.keep_alive and not self.draining
        body: Body
        chunked = framing in (CHUNKED, CLOSE)
        if framing == LENGTH:
            body = LengthBody(length, collect=collect)
        elif framing == CHUNKED:
            body = ChunkedBody(
                max_line=cfg.limits.max_chunk_line,
                max_trailer=cfg.limits.max_header_size,
                passthrough=v11,
                collect=collect,
            )
        elif framing == CLOSE:
            body = CloseBody(rechunk=v11, collect=collect)
        else:
            body = LengthBody(0)
            if head.status < 200 or head.status in (204, 304):
                headers.popall("Content-Length", None)  # RFC 9110 8.6
            # A response to HEAD has the fields a GET's would have: chunked, if it was.
            chunked = request.method == "HEAD" and bool(head.codings)
        if chunked:
            if v11:
                headers["Transfer-Encoding"] = "chunked"
            elif framing != NONE:
                keep_alive = False  # the end of the body is the end of the connection
        return body, keep_alive

    def _client_head(
        self,
        request: web.BaseRequest,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
    ) -> bytes:
        """The response head for the client (RFC 9112 4 and 6.1), as the proxy frames it."""
        v11 = request.version >= (1, 1)
        if "Date" not in headers:
            headers["Date"] = _http_date()
        if not keep_alive and v11:
            headers["Connection"] = "close"
        elif keep_alive and not v11:
            headers["Connection"] = "keep-alive"
        version = "1.1" if v11 else "1.0"
        lines = [f"HTTP/{version} {status} {reason}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise BackendError(f"refusing a response header with a line break: {name}")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:  # a tap's value outside latin-1
            return text.encode("utf-8")

    async def _relay(
        self,
        request: web.BaseRequest,
        cfg: Config,
        ex: _Exchange,
        *,
        conn: BackendConnection,
        deadline: Deadline,
        headers: CIMultiDict[str],
        framing: int,
        length: int,
    ) -> web.StreamResponse:
        """Relay the body as it arrives: the connection writes each read to the client.

        The head goes out with whatever body bytes came with it (a small body complete by
        then: one write, one TLS record). A tap sees every chunk; its ``response_end`` is
        awaited before the last bytes are written. A backend failure mid-body aborts the
        client connection instead of ending the response.
        """
        head = conn.head
        assert head is not None  # noqa: S101
        tap = ex.tap
        body, keep_alive = self._client_body(
            request,
            cfg,
            head=head,
            headers=headers,
            framing=framing,
            length=length,
            collect=tap is not None,
        )
        transport = request.transport
        if transport is None or transport.is_closing():
            log.debug("client disconnected before the response")
            if tap is not None:
                tap.error()
            return _Relayed(head.status, head.reason, keep_alive=False)
        set_write_listener(request, ex)
        completed = False
        try:
            deadline.set(cfg.backend.idle_timeout, "idle")
            first = conn.start(
                body,
                transport.write,
                tap=tap.response_body if tap is not None else None,
                deadline=deadline,
                idle=cfg.backend.idle_timeout,
                hold_final=tap is not None,
            )
            if conn.broke():  # nothing went to the client yet: still a clean 502
                raise BackendError(f"backend response broke: {conn.broke()}")
            data = self._client_head(request, head.status, head.reason, headers, keep_alive)
            resp = ex.response = _Relayed(head.status, head.reason, keep_alive=keep_alive)
            ex.status = head.status
            if conn.complete:
                if tap is not None:
                    await tap.response_end()
                _send(request, data + first)
            else:
                _send(request, data + first)
                # A stream may stay open for minutes: what only the head needed goes now
                # (an idle stream's memory, bench (e)).
                del data, first
                head.headers.clear()
                headers.clear()  # sent; a tap reads it only when it holds the response
                await conn.wait()
                if conn.broke():
                    if not ex.client_gone:
                        metrics.BACKEND_ERRORS.labels("broken_response").inc()
                        log.warning("backend response broke mid-body: %s", conn.broke())
                    ex.body_out = body.total
                    _abort(request)
                    return resp
                if tap is not None:
                    await tap.response_end()
                if conn.final:
                    _send(request, conn.final)
            completed = True
            ex.body_out = body.total
            if ex.paused:  # the client has not taken it all: limits.send_timeout still holds
                await self._drained(ex)
            return resp
        finally:
            set_write_listener(request, None)
            if not completed:
                if tap is not None:
                    tap.error()
                if ex.response is not None:
                    # Cancelled mid-body (client gone, shutdown, a deadline): a graceful
                    # close would let a close-delimited body look complete.
                    _abort(request)

    async def _relay_held(
        self,
        request: web.BaseRequest,
        cfg: Config,
        ex: _Exchange,
        *,
        conn: BackendConnection,
        deadline: Deadline,
        headers: CIMultiDict[str],
        framing: int,
        length: int,
        limit: int,
    ) -> web.StreamResponse:
        """A response of at most ``limit`` bytes read whole, shown to the tap, then sent
        with the headers the tap completed, in one write.

        Nothing has gone to the client yet, so a backend failure here is still a clean 502.
        """
        tap = ex.tap
        assert tap is not None  # noqa: S101 - only a tap asks to hold
        head = conn.head
        assert head is not None  # noqa: S101
        held = bytearray()
        too_big = f"backend response exceeds its {limit}-byte Content-Length"

        def collect(data: bytes) -> None:
            held.extend(data)
            if len(held) > limit:  # the client enforces Content-Length; never trust it
                conn.fail(too_big)

        body: Body
        if framing == LENGTH:
            body = LengthBody(length)
        elif framing == CHUNKED:
            body = ChunkedBody(
                max_line=cfg.limits.max_chunk_line,
                max_trailer=cfg.limits.max_header_size,
                passthrough=False,
            )
        elif framing == CLOSE:
            body = CloseBody(rechunk=False)
        else:
            body = LengthBody(0)
        try:
            deadline.set(cfg.backend.idle_timeout, "idle")
            collect(
                conn.start(
                    body,
                    collect,
                    tap=None,
                    deadline=deadline,
                    idle=cfg.backend.idle_timeout,
                    hold_final=False,
                )
            )
            if len(held) > limit:
                raise BackendError(too_big)
            if not conn.complete and not conn.broke():
                await conn.wait()
            if conn.broke():
                metrics.BACKEND_ERRORS.labels("broken_response").inc()
                raise BackendError(f"backend response broke: {conn.broke()}")
            data = bytes(held)
            tap.response_body(data)
            await tap.response_end()
        except BaseException:
            tap.error()
            raise
        headers.popall("Transfer-Encoding", None)
        if framing != NONE:
            headers["Content-Length"] = str(len(data))
        elif head.status in (204, 304) or head.status < 200:
            headers.popall("Content-Length", None)
        keep_alive = request.keep_alive and not self.draining
        out = self._client_head(request, head.status, head.reason, headers, keep_alive)
        transport = request.transport
        if transport is None or transport.is_closing():
            log.debug("client disconnected before the response")
            return _Relayed(head.status, head.reason, keep_alive=False)
        resp = ex.response = _Relayed(head.status, head.reason, keep_alive=keep_alive)
        ex.status = head.status
        set_write_listener(request, ex)
        try:
            deadline.set(cfg.limits.send_timeout, "send")
            _send(request, out if request.method == "HEAD" else out + data)
            ex.body_out = len(data)
            if ex.paused:
                await self._drained(ex)
        finally:
            set_write_listener(request, None)
        return resp

    async def _drained(self, ex: _Exchange) -> None:
        """Until the client's transport drained (the send deadline runs meanwhile)."""
        if ex.deadline is not None:
            ex.deadline.set(ex.send_timeout, "send")
        while ex.paused and not ex.client_gone:
            ex.drained = asyncio.get_running_loop().create_future()
            await ex.drained

    async def _read_small_body(
        self, request: web.BaseRequest, cfg: Config, ex: _Exchange, size: int
    ) -> bytes:
        """The whole body of a request that declared ``size`` bytes (at most _INLINE_BODY),
        under the same idle limit as a streamed body; the size limit was checked already."""
        idle = cfg.limits.body_read_timeout
        try:
            async with asyncio.timeout(idle):
                body = await request.content.readexactly(size)
        except TimeoutError as e:
            raise ClientRequestError(408, f"request body idle for {idle:g} s") from e
        except asyncio.IncompleteReadError as e:
            raise ClientRequestError(400, "request body ended before its Content-Length") from e
        except aiohttp.web.RequestPayloadError as e:
            raise ClientRequestError(400, f"malformed request body: {e}") from e
        ex.body_in += size
        if ex.tap is not None:
            ex.tap.request_body(body)
        return body

    async def _pump_body(
        self,
        request: web.BaseRequest,
        cfg: Config,
        ex: _Exchange,
        conn: BackendConnection,
        stream: str,
    ) -> None:
        """Send the client's body upstream as it arrives, enforcing size and idle limits.

        Re-chunked for a chunked upload (the client's framing is never copied). A failure is
        recorded on ``ex`` and ends the exchange (the backend sees an aborted upload): the
        handler then answers 400/408/413, not 502.
        """
        limit = cfg.limits.max_body_size
        idle = cfg.limits.body_read_timeout
        content = request.content
        chunked = stream == "chunked"
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError:
                ex.body_error = ClientRequestError(408, f"request body idle for {idle:g} s")
            except aiohttp.web.RequestPayloadError as e:
                ex.body_error = ClientRequestError(400, f"malformed request body: {e}")
            except OSError as e:  # the client's connection broke (its handler is cancelled)
                ex.body_error = ClientRequestError(400, f"request body broke off: {_describe(e)}")
            else:
                if not chunk:
                    if chunked:
                        conn.write(b"0\r\n\r\n")
                    conn.request_done = True
                    return
                ex.body_in += len(chunk)
                if ex.tap is not None:
                    ex.tap.request_body(chunk)
                if limit and ex.body_in > limit:
                    ex.body_error = ClientRequestError(413, f"request body exceeds {limit} bytes")
                else:
                    conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await conn.drain()
                    continue
            conn.fail(ex.body_error.message)
            return

    # -- WebSocket -----------------------------------------------------------------------

    async def _websocket(
        self,
        request: web.BaseRequest,
        cfg: Config,
        *,
        headers: list[tuple[str, str]],
        target: str,
        authority: str,
        ex: _Exchange,
    ) -> web.StreamResponse:
        """Relay a WebSocket message by message (control frames are answered per hop)."""
        host = authority or request.headers.get("Host", "")
        up_headers = CIMultiDict(
            _with_host(
                request_headers_for_backend(
                    headers, client_ip=ex.client_ip, proto="https", host=host, websocket=True
                ),
                authority,
            )
        )
        requested = [
            p.strip()
            for v in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in v.split(",")
            if p.strip()
        ]
        up_headers.popall("Sec-WebSocket-Protocol", None)
        url = URL(cfg.backend.base_url + target, encoded=True)
        # aiohttp refuses a message whose size equals max_msg_size; the configured value is
        # the largest message relayed, so it is passed one higher.
        max_msg = cfg.limits.websocket_max_message + 1
        pool = self.pool
        try:
            async with asyncio.timeout(cfg.backend.response_header_timeout):
                await pool.reserve()  # a WebSocket holds one of the pool's connections
        except TimeoutError as e:
            raise BackendTimeout("connect", cfg.backend.response_header_timeout) from e
        try:
            try:
                async with asyncio.timeout(cfg.backend.response_header_timeout):
                    upstream = await self.session.ws_connect(
                        url,
                        headers=up_headers,
                        protocols=requested,
                        max_msg_size=max_msg,
                        compress=0,
                        autoclose=False,
                        autoping=True,
                    )
            except TimeoutError as e:
                raise BackendTimeout("headers", cfg.backend.response_header_timeout) from e
            except aiohttp.WSServerHandshakeError as e:
                raise BackendError(f"backend refused the WebSocket upgrade: {e.status}") from e
            except (aiohttp.ClientError, OSError) as e:
                raise BackendError(f"backend WebSocket connect failed: {_describe(e)}") from e

            try:
                protocols = (upstream.protocol,) if upstream.protocol else ()
                client = ex.response = web.WebSocketResponse(
                    protocols=protocols, max_msg_size=max_msg, compress=False, autoclose=False
                )
                await client.prepare(request)
                ex.status = 101
                await relay_websocket(client, upstream, cfg.limits.send_timeout)
                return client
            finally:
                await upstream.close()
        finally:
            pool.unreserve()


# -- helpers ------------------------------------------------------------------------------


def _send(request: web.BaseRequest, data: bytes) -> None:
    """Write relayed bytes to the client; aiohttp's writer learns that the response started
    (its ``output_size``, which aiohttp and the gate read as "headers went out")."""
    transport = request.transport
    if transport is not None:
        transport.write(data)
    request.writer.output_size += len(data)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date field value (RFC 9110 6.6.1), computed once per second."""
    global _date_cache  # noqa: PLW0603 - a per-process cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request head sent upstream (the target as the client sent its bytes)."""
    fields = "".join([f"{n}: {v}\r\n" for n, v in headers])
    return (
        method.encode("ascii")
        + b" "
        + target.encode("utf-8", "surrogateescape")  # aiohttp decoded the raw bytes so
        + b" HTTP/1.1\r\n"
        + fields.encode("latin-1")
        + b"\r\n"
    )


def _with_host(headers: list[tuple[str, str]], host: str) -> list[tuple[str, str]]:
    """``headers`` without Content-Length (the framing upstream is the proxy's own, added
    after this) and with ``host`` as the only Host field (kept when ``host`` is empty)."""
    if not host:
        return [(n, v) for n, v in headers if n.lower() != "content-length"]
    return [("Host", host), *((n, v) for n, v in headers if n.lower() not in _HOST_AND_LENGTH)]


_HOST_AND_LENGTH = frozenset({"host", "content-length"})


def _count_local(request: web.BaseRequest, resp: web.StreamResponse | None, ex: _Exchange) -> None:
    """The access log's sizes for a response the proxy answered itself."""
    ex.body_in = max(ex.body_in, getattr(request.content, "total_bytes", 0))
    if isinstance(resp, web.Response) and request.method != "HEAD":
        ex.body_out = resp.content_length or 0


def _hsts_value(cfg: Config) -> str:
    t = cfg.tls
    if not t.hsts_max_age:
        return ""
    return f"max-age={t.hsts_max_age}" + (
        "; includeSubDomains" if t.hsts_include_subdomains else ""
    )


def _target(raw_target: str) -> tuple[str, str]:
    """The origin-form target to send upstream (RFC 9112 3.2) and, for an absolute-form
    target, its authority, which replaces the Host field (RFC 9112 3.2.2)."""
    if raw_target.startswith("/"):
        return raw_target, ""
    scheme, sep, rest = raw_target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        cut = len(rest)
        for c in "/?":
            i = rest.find(c)
            if 0 <= i < cut:
                cut = i
        authority, origin = rest[:cut], rest[cut:]
        if "@" in authority:
            raise ClientRequestError(400, "userinfo in the request target")
        if _AUTHORITY.fullmatch(authority) is None:
            raise ClientRequestError(400, "invalid authority in the request target")
        return (origin if origin.startswith("/") else "/" + origin), authority
    raise ClientRequestError(400, "unsupported request target form")


def _client_ip(request: web.BaseRequest) -> str:
    peer: Any = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


def _abort(request: web.BaseRequest) -> None:
    """Cut the client connection so a partial body is seen as an error, not a short body."""
    if request.transport is not None:
        request.transport.abort()


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."
