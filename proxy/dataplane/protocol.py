"""Per-connection protocol: aiohttp's HTTP/1.1 server with the limits it lacks.

aiohttp's ``RequestHandler`` parses requests with llhttp (strict: it rejects conflicting or
duplicate framing headers) and enforces line, field and count limits. Added here:

- a header-read deadline: after the TLS handshake, and again from the first byte of each
  later request on a keep-alive connection, complete headers must arrive within
  ``limits.header_read_timeout`` or the connection is closed (slowloris);
- a connection cap per worker (``limits.max_connections``): connections beyond it are closed
  as soon as they are accepted (on the TLS listener, handshakes under way count against
  the same cap: :meth:`ProxyHTTPServer.admit`);
- request bodies are never decompressed (``auto_decompress=False``);
- handler cancellation on disconnect, so a client that goes away cancels its backend call;
- the chunk-size line of a chunked request body (size plus extensions) is bounded by
  ``limits.max_chunk_line`` (:class:`proxy.dataplane.framing.RequestChunkGuard`): llhttp
  accepts one of any length. Over it, the body fails (the forwarder answers 400, a streamed
  upload is aborted upstream) and the connection closes after the response;
- the forwarder, which writes relayed bytes to the transport itself, hears when the
  client's transport pauses and resumes writing (its buffer passed the high-water mark and
  drained again) and when the connection is lost (:func:`set_write_listener`);
- every response aiohttp prepares for this server (the proxy's own answers, aiohttp's 400s
  for unparsable requests) says ``Server: teeproxy`` (:class:`ProxyRequest`), not aiohttp's
  ``Python/3.x aiohttp/3.x``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from proxy import metrics
from proxy.config import LimitsConfig
from proxy.dataplane.endpoints import Handler
from proxy.dataplane.framing import RequestChunkGuard
from proxy.dataplane.responses import SERVER
from proxy.errors import FramingError
from proxy.log import server_log as log

__all__ = ["ProxyHTTPServer", "ProxyRequest", "WriteListener", "make_request", "set_write_listener"]


class WriteListener(Protocol):
    """Told about the client connection of the request it listens to."""

    def client_paused(self) -> None:
        """The transport's write buffer passed its high-water mark."""

    def client_resumed(self) -> None:
        """It drained below the low-water mark again."""

    def client_lost(self) -> None:
        """The connection is gone (before aiohttp cancels the handler)."""


def set_write_listener(request: web.BaseRequest, listener: WriteListener | None) -> None:
    """Tell ``listener`` (None: nobody) about ``request``'s client connection.

    Raises TypeError when the request is not served by :class:`ProxyHTTPServer`: without
    these notifications a relay could not apply back-pressure.
    """
    protocol = request.protocol
    if not isinstance(protocol, _Handler):
        raise TypeError("the forwarder runs behind ProxyHTTPServer only")
    protocol.listener = listener


class ProxyRequest(BaseRequest):
    """aiohttp's low-level request; what the proxy answers itself says ``Server: teeproxy``."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Called by aiohttp for every response it prepares for this request, after its own
        # defaults (a Server field naming its version) and just before the header block is
        # written. Relayed responses never pass here: the forwarder writes those itself.
        response.headers["Server"] = SERVER


def make_request(
    message: Any,
    payload: Any,
    protocol: RequestHandler,
    writer: Any,
    task: asyncio.Task[None],
) -> BaseRequest:
    """A ``request_factory`` for aiohttp's ``web.Server`` making :class:`ProxyRequest`\\ s."""
    return ProxyRequest(message, payload, protocol, writer, task, asyncio.get_running_loop())


class _Handler(RequestHandler):
    """RequestHandler with a header-read deadline, a connection cap, a bound on chunk-size
    lines and write notifications for the forwarder."""

    _deadline: asyncio.TimerHandle | None = None  # fires at _deadline_at or earlier
    _deadline_at = math.inf  # the header-read deadline (loop time), inf: none
    _counted = False
    _guard: RequestChunkGuard | None = None
    listener: WriteListener | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if not isinstance(manager, ProxyHTTPServer):
            raise TypeError("_Handler needs a ProxyHTTPServer")
        super().connection_made(transport)
        if manager.tls:
            metrics.TALLY.add(metrics.TLS_HANDSHAKES)
        if manager.open_connections >= manager.limits.max_connections:
            metrics.CONNECTIONS_REJECTED.labels("max_connections").inc()
            self.force_close()
            transport.close()
            return
        manager.open_connections += 1
        self._counted = True
        metrics.TALLY.add(metrics.CONNECTIONS_OPEN)
        lim = manager.limits
        self._guard = RequestChunkGuard(
            max_line=lim.max_chunk_line,
            max_head=lim.max_request_line + 2 + lim.max_headers * (lim.max_header_size + 2) + 2,
        )
        self._arm(lim.header_read_timeout)

    def data_received(self, data: bytes) -> None:
        if self._deadline_at == math.inf and not self._request_in_progress and not self._upgraded:
            manager = self._manager
            if isinstance(manager, ProxyHTTPServer):
                self._arm(manager.limits.header_read_timeout)
        queued = len(self._messages)
        parsing = not (self._force_close or self._close) and self._payload_parser is None
        super().data_received(data)
        guard = self._guard
        if guard is not None and data and parsing:
            try:
                guard.feed(data)
            except FramingError as e:
                self._refuse_body(str(e))
        self._fail_unfinished_body(queued)

    def _refuse_body(self, reason: str) -> None:
        """A request body over a framing limit: fail it and parse nothing after it."""
        self._guard = None
        payload = self._messages[-1][1] if self._messages else None
        if payload is None and self._current_request is not None:
            payload = self._current_request.content
        if isinstance(payload, StreamReader):  # even when llhttp saw all of it already
            payload.set_exception(RequestPayloadError(reason))
        metrics.CONNECTIONS_REJECTED.labels("max_chunk_line").inc()
        log.info("refusing a request body: %s", reason)
        self.close()  # no more requests on this connection; the bytes left are not parsed

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.listener is not None:
            self.listener.client_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.listener is not None:
            self.listener.client_resumed()

    def _fail_unfinished_body(self, queued: int) -> None:
        """Fail the body being read when the parser rejects bytes in the middle of it.

        aiohttp turns a parse error into a queued 400 "message" but, when the request head
        came in an earlier read (the handler may already be streaming the body upstream),
        never tells that request's body stream: the handler would wait for body bytes that
        can no longer come (until ``body_read_timeout``) while the backend holds a
        half-sent request. Failing the stream ends the upload at once (400, upstream aborted).
        """
        messages = self._messages
        if len(messages) <= queued or isinstance(messages[-1][0], RawRequestMessage):
            return  # no new parse error in this read
        payload: Any = None
        if queued:
            # The newest request parsed before this read owns the body that broke.
            msg, payload = messages[queued - 1]
            if not isinstance(msg, RawRequestMessage):
                return
        elif self._current_request is not None:
            payload = self._current_request.content
        if isinstance(payload, StreamReader) and not payload.is_eof():
            payload.set_exception(RequestPayloadError("malformed request body framing"))

    def connection_lost(self, exc: BaseException | None) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.client_lost()
        manager = self._manager
        self._deadline_at = math.inf
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._counted and isinstance(manager, ProxyHTTPServer):
            manager.open_connections -= 1
            metrics.TALLY.add(metrics.CONNECTIONS_OPEN, -1)
            self._counted = False
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        # One timer per connection at a time, as proxy.deadline.Deadline does: arming for
        # the next kept-alive request moves a float; the timer, when it fires early (the
        # request it was set for came in time), re-arms itself for the deadline now set.
        when = self._deadline_at = self._loop.time() + seconds
        handle = self._deadline
        if handle is not None and when < handle.when():  # new limits: a shorter deadline
            handle.cancel()
            handle = None
        if handle is None:
            self._deadline = self._loop.call_at(when, self._headers_overdue)

    def disarm(self) -> None:
        """The headers came: no deadline until the next request's first byte."""
        self._deadline_at = math.inf

    def _headers_overdue(self) -> None:
        self._deadline = None
        when = self._deadline_at
        if when == math.inf:
            return
        if self._loop.time() < when:
            self._deadline = self._loop.call_at(when, self._headers_overdue)
            return
        self._deadline_at = math.inf
        if self._request_in_progress or self.transport is None:
            return
        metrics.CONNECTIONS_REJECTED.labels("header_read_timeout").inc()
        log.debug("closing connection: request headers incomplete after deadline")
        self.force_close()  # closes the transport (and forgets it)


class ProxyHTTPServer(web.Server):
    """aiohttp's low-level server producing :class:`_Handler` connections."""

    def __init__(
        self,
        handler: Handler,
        limits: LimitsConfig,
        *,
        tls: bool = True,
        **kwargs: Any,
    ) -> None:
        self.limits = limits
        self.tls = tls
        self.open_connections = 0
        super().__init__(
            handler,
            request_factory=self._request_factory,
            handler_cancellation=True,
            **self._handler_kwargs(limits),
            **kwargs,
        )

    def _handler_kwargs(self, limits: LimitsConfig) -> dict[str, Any]:
        return {
            # TLS listeners (proxy.dataplane.tlsserver) set SO_KEEPALIVE once on the
            # listening socket, which accepted sockets inherit; aiohttp would set it again
            # on each connection through a socket object made for the call.
            "tcp_keepalive": not self.tls,
            "keepalive_timeout": limits.keepalive_timeout,
            "max_line_size": limits.max_request_line,
            "max_field_size": limits.max_header_size,
            "max_headers": limits.max_headers,
            "auto_decompress": False,
            "access_log": None,
            "lingering_time": 2.0,
        }

    def admit(self, handshakes: int) -> bool:
        """One more TLS handshake (the listener's ``admit``)? ``limits.max_connections``
        bounds handshakes under way and open connections together, as nginx's
        worker_connections does."""
        if handshakes + self.open_connections < self.limits.max_connections:
            return True
        metrics.CONNECTIONS_REJECTED.labels("max_connections").inc()
        return False

    def update_limits(self, limits: LimitsConfig) -> None:
        """New connections use the new limits; open ones keep aiohttp's (line and field
        sizes, keep-alive) and take the new header-read deadline from their next request."""
        self.limits = limits
        self._kwargs.update(self._handler_kwargs(limits))

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def _request_factory(
        self,
        message: Any,
        payload: Any,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        if isinstance(protocol, _Handler):
            protocol.disarm()
        return ProxyRequest(message, payload, protocol, writer, task, self._loop)
