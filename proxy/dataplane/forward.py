"""The streaming forwarder: one client request in, one backend exchange out, bytes relayed.

Guarantees (each has a test under tests/integration):
- Bodies stream both ways chunk by chunk as they arrive, and each SSE event is written to
  the client as soon as the backend's bytes arrive. Two bounded exceptions: a request body
  declaring at most 64 KiB is read whole first and sent with the headers (cheaper, and a
  stalled client never reaches the backend), and a tap (:mod:`proxy.dataplane.hooks`) may
  ask for a response of bounded size to be held back (receipts put their signature in the
  headers of such a response).
- Bodies are relayed byte for byte: no decompression, no compression (Content-Encoding and
  the client's Accept-Encoding pass through; the HTTP client adds no headers of its own).
- Framing is re-established on each hop: the client's framing is validated
  (:func:`proxy.dataplane.headers.check_request_framing`) and never copied upstream.
- A client disconnect cancels the handler (aiohttp ``handler_cancellation``), which closes
  the backend connection at once instead of returning it to the pool.
- Failures before the response starts give 502 (backend broken) or 504 (backend timeout)
  with a JSON body; after it started, the client connection is aborted so a truncated body
  can never look complete.

What the proxy answers itself (evidence, receipts) is looked up in a
:class:`proxy.dataplane.endpoints.LocalEndpoints` before forwarding; what observes the
relayed bytes (receipts) is a tap from a :class:`proxy.dataplane.hooks.TapFactory`.
WebSocket upgrades are relayed by :mod:`proxy.dataplane.websocket`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import metrics
from proxy.config import Config
from proxy.dataplane.endpoints import LocalEndpoints
from proxy.dataplane.headers import (
    check_request_framing,
    request_headers_for_backend,
    response_headers_for_client,
)
from proxy.dataplane.hooks import STREAM, ExchangeTap, TapFactory
from proxy.dataplane.responses import json_error
from proxy.dataplane.websocket import is_websocket_upgrade, relay_websocket
from proxy.deadline import Deadline
from proxy.errors import BackendError, BackendTimeout, ClientRequestError
from proxy.log import access_log
from proxy.log import forward_log as log

__all__ = ["Forwarder", "make_session"]

# Headers aiohttp's client would otherwise add on its own (and so change what the backend
# sees: an Accept-Encoding the client never sent would let the backend compress).
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


# Request bodies up to this size that declare a Content-Length are read before the backend
# request starts and sent in one piece; larger or chunked ones stream (_pump_body).
_INLINE_BODY = 64 * 1024


def make_session(cfg: Config) -> aiohttp.ClientSession:
    """The upstream client: a bounded keep-alive pool to one backend, no decompression."""
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


class _RelayResponse(web.StreamResponse):
    """A StreamResponse that adds no Content-Type of its own and can coalesce its headers.

    aiohttp fills in ``application/octet-stream`` for a body without a Content-Type
    (correct for an origin server, RFC 9110 8.3); a proxy must relay the backend's headers as
    they are, so that default is removed again when the backend sent none.

    ``send_headers_early`` (aiohttp's ``_send_headers_immediately``): when False, the header
    block is held back and written together with the first body bytes.
    """

    @property
    def send_headers_early(self) -> bool:
        return self._send_headers_immediately

    @send_headers_early.setter
    def send_headers_early(self, value: bool) -> None:
        self._send_headers_immediately = value

    async def _prepare_headers(self) -> None:
        had_type = "Content-Type" in self.headers
        await super()._prepare_headers()
        if not had_type:
            self.headers.popall("Content-Type", None)


@dataclass(slots=True)
class _Exchange:
    """Per-request state shared by the steps of one forward (and read by the access log)."""

    client_ip: str
    status: int = 0
    body_in: int = 0
    body_out: int = 0
    body_error: ClientRequestError | None = None
    response: web.StreamResponse | None = None
    tap: ExchangeTap | None = None  # sees this exchange's bytes (hooks.TapFactory)


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
        self.session = session
        self.endpoints = endpoints or LocalEndpoints()
        self.taps = taps
        self._hsts = _hsts_value(cfg)
        self.draining = False

    def reconfigure(self, cfg: Config, session: aiohttp.ClientSession) -> None:
        """Take a new config (SIGHUP); requests already running keep what they started with."""
        self.cfg = cfg
        self.session = session
        self._hsts = _hsts_value(cfg)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        cfg = self.cfg
        ex = _Exchange(client_ip=_client_ip(request))
        metrics.OPEN_STREAMS.inc()
        try:
            return await self._handle(request, cfg, ex)
        finally:
            elapsed = time.monotonic() - started
            metrics.OPEN_STREAMS.dec()
            if ex.status:
                metrics.status_counter(ex.status).inc()
                metrics.REQUEST_DURATION.observe(elapsed)
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
        return json_error(status, kind, message, close=True, no_store=False)

    # -- plain HTTP --------------------------------------------------------------------

    async def _forward(
        self, request: web.BaseRequest, cfg: Config, ex: _Exchange
    ) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        content_length = check_request_framing(headers)
        target = _origin_form(request.raw_path)
        limit = cfg.limits.max_body_size
        if limit and content_length is not None and content_length > limit:
            raise ClientRequestError(413, f"request body exceeds {limit} bytes")

        if is_websocket_upgrade(request):
            return await self._websocket(request, cfg, headers, target, ex)

        if request.headers.get("Expect", "").lower() == "100-continue":
            # Answer for the backend: the body limits are ours to enforce (RFC 9110 10.1.1).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        host = request.headers.get("Host", "")
        up_headers = CIMultiDict(
            request_headers_for_backend(headers, client_ip=ex.client_ip, proto="https", host=host)
        )
        if self.taps is not None:
            ex.tap = self.taps.tap(request.method, request.path)
        has_body = request.body_exists and content_length != 0
        data: bytes | AsyncIterator[bytes] | None = None
        if has_body and content_length is not None and content_length <= _INLINE_BODY:
            # A small declared body (every chat request) is read first and sent with the
            # request headers: aiohttp's streamed-payload path costs more than the copy.
            data = await self._read_small_body(request, cfg, ex, content_length)
        elif has_body:
            data = self._pump_body(request, cfg, ex)
        url = URL(cfg.backend.base_url + target, encoded=True)
        deadline = Deadline(cfg.backend.total_timeout or None)
        try:
            return await self._exchange(
                request, cfg, ex, deadline, url=url, headers=up_headers, data=data
            )
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
        url: URL,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
    ) -> web.StreamResponse:
        b = cfg.backend
        deadline.set(b.response_header_timeout, "headers")
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        except TimeoutError as e:  # aiohttp's connect timeout (session-level)
            if ex.body_error is not None:
                raise ex.body_error from e
            raise BackendTimeout("connect", b.connect_timeout) from e
        except (aiohttp.ClientError, OSError) as e:
            if ex.body_error is not None:
                raise ex.body_error from e
            raise BackendError(f"backend request failed: {_describe(e)}") from e

        try:
            resp = ex.response = _RelayResponse(status=upstream.status, reason=upstream.reason)
            for name, value in response_headers_for_client(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers]
            ):
                resp.headers.add(name, value)
            if self._hsts:
                resp.headers["Strict-Transport-Security"] = self._hsts
            resp.headers.setdefault("Server", "teeproxy")
            if self.draining:
                resp.force_close()
            # A body already received whole (small responses) goes out with the headers in
            # one write; otherwise the headers go now, before the first chunk exists, so a
            # streaming client sees them as soon as the backend sent them.
            resp.send_headers_early = not upstream.content.is_eof()
            tap = ex.tap
            hold = (
                tap.response_headers(upstream.status, resp.headers, upstream.content_length)
                if tap is not None
                else STREAM
            )
            if hold is not STREAM:
                return await self._relay_held(
                    request, resp, upstream, cfg, ex, limit=hold, deadline=deadline
                )
            deadline.set(cfg.limits.send_timeout, "send")
            completed = False
            try:
                await resp.prepare(request)
                ex.status = upstream.status
                completed = await self._relay_body(
                    request, resp, upstream, cfg, ex, deadline=deadline
                )
            except ConnectionResetError:
                # The client went away mid-response: nothing to answer, nothing to log
                # above debug; aiohttp finishes the dead connection quietly.
                log.debug("client disconnected mid-response")
            finally:
                if tap is not None and not completed:
                    tap.error()
            return resp
        finally:
            # Not release(): a response not read to the end must not go back to the pool.
            upstream.close()

    async def _relay_held(
        self,
        request: web.BaseRequest,
        resp: _RelayResponse,
        upstream: aiohttp.ClientResponse,
        cfg: Config,
        ex: _Exchange,
        *,
        limit: int,
        deadline: Deadline,
    ) -> web.StreamResponse:
        """A response of at most ``limit`` bytes read whole, shown to the tap, then sent
        with the headers the tap completed, in one write.

        Nothing has gone to the client yet, so a backend failure here is still a clean 502.
        """
        tap = ex.tap
        assert tap is not None  # noqa: S101 - only a tap asks to hold
        idle = cfg.backend.idle_timeout
        content = upstream.content
        body = bytearray()
        try:
            while True:
                deadline.set(idle, "idle")
                try:
                    chunk = await content.readany()
                except (aiohttp.ClientError, OSError) as e:
                    metrics.BACKEND_ERRORS.labels("broken_response").inc()
                    raise BackendError(f"backend response broke mid-body: {_describe(e)}") from e
                if not chunk:
                    break
                body += chunk
                if len(body) > limit:  # the client enforces Content-Length; never trust it
                    raise BackendError(f"backend response exceeds its {limit}-byte Content-Length")
            data = bytes(body)
            tap.response_body(data)
            await tap.response_end()
        except BaseException:
            tap.error()
            raise
        resp.send_headers_early = False
        deadline.set(cfg.limits.send_timeout, "send")
        try:
            await resp.prepare(request)
            ex.status = upstream.status
            await resp.write_eof(data)
        except ConnectionResetError:
            log.debug("client disconnected mid-response")
            return resp
        ex.body_out += len(data)
        metrics.BYTES_OUT.inc(len(data))
        return resp

    async def _relay_body(
        self,
        request: web.BaseRequest,
        resp: _RelayResponse,
        upstream: aiohttp.ClientResponse,
        cfg: Config,
        ex: _Exchange,
        *,
        deadline: Deadline,
    ) -> bool:
        """Copy the backend body to the client as it arrives, then end the response.

        True when the body was relayed whole. The deadline guards each wait: ``idle``
        while reading from the backend, ``send`` while the client drains what was written.
        The last chunk is written together with the end of the response (one write, one
        TLS record, for a small body); a tap's ``response_end`` runs before that write. A
        backend failure mid-body aborts the client connection instead of ending the
        response.
        """
        idle = cfg.backend.idle_timeout
        send_timeout = cfg.limits.send_timeout
        content = upstream.content
        tap = ex.tap
        while True:
            deadline.set(idle, "idle")
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError) as e:
                metrics.BACKEND_ERRORS.labels("broken_response").inc()
                log.warning("backend response broke mid-body: %s", _describe(e))
                _abort(request)
                return False
            deadline.set(send_timeout, "send")
            last = not chunk or content.at_eof()
            if tap is not None:
                if chunk:
                    tap.response_body(chunk)
                if last:
                    await tap.response_end()
            if last:
                await resp.write_eof(chunk)
            else:
                await resp.write(chunk)
            if chunk:
                ex.body_out += len(chunk)
                metrics.BYTES_OUT.inc(len(chunk))
            if last:
                return True

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
        metrics.BYTES_IN.inc(size)
        if ex.tap is not None:
            ex.tap.request_body(body)
        return body

    async def _pump_body(
        self, request: web.BaseRequest, cfg: Config, ex: _Exchange
    ) -> AsyncIterator[bytes]:
        """Yield the client's body as it arrives, enforcing size and idle limits.

        Errors are recorded on ``ex`` before raising: the HTTP client wraps whatever the
        body iterator raises, and the handler must still answer 400/408/413, not 502.
        """
        limit = cfg.limits.max_body_size
        idle = cfg.limits.body_read_timeout
        content = request.content
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError as e:
                ex.body_error = ClientRequestError(408, f"request body idle for {idle:g} s")
                raise ex.body_error from e
            except aiohttp.web.RequestPayloadError as e:
                ex.body_error = ClientRequestError(400, f"malformed request body: {e}")
                raise ex.body_error from e
            if not chunk:
                return
            ex.body_in += len(chunk)
            if ex.tap is not None:
                ex.tap.request_body(chunk)
            if limit and ex.body_in > limit:
                ex.body_error = ClientRequestError(413, f"request body exceeds {limit} bytes")
                raise ex.body_error
            metrics.BYTES_IN.inc(len(chunk))
            yield chunk

    # -- WebSocket -----------------------------------------------------------------------

    async def _websocket(
        self,
        request: web.BaseRequest,
        cfg: Config,
        headers: list[tuple[str, str]],
        target: str,
        ex: _Exchange,
    ) -> web.StreamResponse:
        """Relay a WebSocket message by message (control frames are answered per hop)."""
        host = request.headers.get("Host", "")
        up_headers = CIMultiDict(
            request_headers_for_backend(
                headers, client_ip=ex.client_ip, proto="https", host=host, websocket=True
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


# -- helpers ------------------------------------------------------------------------------


def _hsts_value(cfg: Config) -> str:
    t = cfg.tls
    if not t.hsts_max_age:
        return ""
    return f"max-age={t.hsts_max_age}" + (
        "; includeSubDomains" if t.hsts_include_subdomains else ""
    )


def _origin_form(raw_target: str) -> str:
    """The origin-form target to send upstream (RFC 9112 3.2); absolute-form is reduced."""
    if raw_target.startswith("/"):
        return raw_target
    parts = urlsplit(raw_target)
    if parts.scheme in ("http", "https") and parts.netloc:
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path
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
