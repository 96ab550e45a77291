"""Per-connection protocol: aiohttp's HTTP/1.1 server with the limits it lacks.

aiohttp's ``RequestHandler`` parses requests with llhttp (strict: it rejects conflicting or
duplicate framing headers) and enforces line, field and count limits. Added here:

- a header-read deadline: after the TLS handshake, and again from the first byte of each
  later request on a keep-alive connection, complete headers must arrive within
  ``limits.header_read_timeout`` or the connection is closed (slowloris);
- a connection cap per worker (``limits.max_connections``): connections beyond it are closed
  as soon as they are accepted;
- request bodies are never decompressed (``auto_decompress=False``);
- handler cancellation on disconnect, so a client that goes away cancels its backend call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from proxy import metrics
from proxy.config import LimitsConfig
from proxy.dataplane.endpoints import Handler
from proxy.log import server_log as log

__all__ = ["ProxyHTTPServer"]


class _Handler(RequestHandler):
    """RequestHandler with a header-read deadline and a connection cap."""

    _deadline: asyncio.TimerHandle | None = None
    _counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if not isinstance(manager, ProxyHTTPServer):
            raise TypeError("_Handler needs a ProxyHTTPServer")
        super().connection_made(transport)
        if manager.tls:
            metrics.TLS_HANDSHAKES.inc()
        if manager.open_connections >= manager.limits.max_connections:
            metrics.CONNECTIONS_REJECTED.labels("max_connections").inc()
            self.force_close()
            transport.close()
            return
        manager.open_connections += 1
        self._counted = True
        metrics.CONNECTIONS_OPEN.inc()
        self._arm(manager.limits.header_read_timeout)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and not self._request_in_progress and not self._upgraded:
            manager = self._manager
            if isinstance(manager, ProxyHTTPServer):
                self._arm(manager.limits.header_read_timeout)
        queued = len(self._messages)
        super().data_received(data)
        self._fail_unfinished_body(queued)

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
        manager = self._manager
        self.disarm()
        if self._counted and isinstance(manager, ProxyHTTPServer):
            manager.open_connections -= 1
            metrics.CONNECTIONS_OPEN.dec()
            self._counted = False
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._deadline = self._loop.call_later(seconds, self._headers_overdue)

    def disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_overdue(self) -> None:
        self._deadline = None
        if self._request_in_progress or self.transport is None:
            return
        metrics.CONNECTIONS_REJECTED.labels("header_read_timeout").inc()
        log.debug("closing connection: request headers incomplete after deadline")
        self.force_close()
        self.transport.close()


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

    @staticmethod
    def _handler_kwargs(limits: LimitsConfig) -> dict[str, Any]:
        return {
            "keepalive_timeout": limits.keepalive_timeout,
            "max_line_size": limits.max_request_line,
            "max_field_size": limits.max_header_size,
            "max_headers": limits.max_headers,
            "auto_decompress": False,
            "access_log": None,
            "lingering_time": 2.0,
        }

    def update_limits(self, limits: LimitsConfig) -> None:
        """New connections use the new limits; open ones keep theirs."""
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
        return BaseRequest(message, payload, protocol, writer, task, self._loop)
