"""The streaming forwarder: one client request in, one backend exchange out, bytes relayed.

Guarantees (each has a test under tests/integration):
- Bodies stream both ways chunk by chunk as they arrive, and each SSE event is written to
  the client as soon as the backend's bytes arrive. Two bounded exceptions: a request body
  declaring at most 64 KiB is read whole first and sent with the headers (cheaper, and a
  stalled client never reaches the backend), and a signed response (issue 6) of at most
  ``receipts.max_buffered_body`` is held back to carry its receipt in the headers.
- Bodies are relayed byte for byte: no decompression, no compression (Content-Encoding and
  the client's Accept-Encoding pass through; the HTTP client adds no headers of its own).
- Framing is re-established on each hop: the client's framing is validated
  (:func:`proxy.headers.check_request_framing`) and never copied upstream.
- A client disconnect cancels the handler (aiohttp ``handler_cancellation``), which closes
  the backend connection at once instead of returning it to the pool.
- Failures before the response starts give 502 (backend broken) or 504 (backend timeout)
  with a JSON body; after it started, the client connection is aborted so a truncated body
  can never look complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from certmgr.receipts.format import IncrementalHash
from proxy import metrics
from proxy.config import RECEIPTS_PATH, Config
from proxy.deadline import Deadline
from proxy.errors import BackendError, BackendTimeout, ClientRequestError
from proxy.headers import (
    check_request_framing,
    request_headers_for_backend,
    response_headers_for_client,
)
from proxy.receipts import ID_HEADER, RECEIPT_HEADER, ReceiptIssuer, new_receipt_id
from proxy.tasks import spawn

__all__ = ["Forwarder", "make_session"]

access_log = logging.getLogger("teeproxy.access")
log = logging.getLogger("teeproxy.forward")

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


def error_response(status: int, kind: str, message: str) -> web.Response:
    """An OpenAI-style JSON error body; the connection is closed after it."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}})
    resp = web.Response(status=status, text=body, content_type="application/json")
    resp.force_close()
    return resp


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
    # Issue 6: SHA-256 of the request body as forwarded, when this exchange is signed.
    request_hash: IncrementalHash | None = None


class _Tap:
    """A streamed, signed response: every relayed byte is hashed, the receipt is stored
    before the last byte goes out (so a client that saw the end can fetch it)."""

    __slots__ = ("fields", "hash", "issuer", "request_hash", "rid")

    def __init__(
        self, issuer: ReceiptIssuer, rid: str, request_hash: IncrementalHash, ctype: str
    ) -> None:
        self.issuer = issuer
        self.rid = rid
        self.request_hash = request_hash
        self.hash = IncrementalHash()
        self.fields = issuer.fields(ctype)

    def update(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.fields.feed(chunk)

    async def complete(self) -> None:
        self.fields.finish()
        # The request digest is taken now, not when the response started: a backend may
        # answer before the upload ended, and the receipt covers every byte forwarded.
        receipt = self.issuer.sign(self.request_hash.digest(), self.hash.digest(), self.fields)
        await self.issuer.publish(self.rid, receipt)


class Forwarder:
    """Handles every request on the TLS listener by relaying it to the backend."""

    def __init__(self, cfg: Config, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self._hsts = _hsts_value(cfg)
        self.draining = False
        # proxy.wellknown.AttestationEndpoint (issue 4), set by the worker; None: forwarded.
        self.attestation: Any = None
        # Issue 6: signs exchanges on the configured routes; None: receipts are off.
        self.receipts: ReceiptIssuer | None = None

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
            if request.path.startswith("/.well-known/tee/"):  # evidence served by the proxy
                local = await _tee_wellknown(request, cfg, self.attestation)
                if local is not None:
                    ex.status = local.status
                    return local
            if self.receipts is not None and request.path.startswith(RECEIPTS_PATH):
                local = await self.receipts.handle_get(request)
                ex.status = local.status
                return local
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
        return error_response(status, kind, message)

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

        if _is_websocket_upgrade(request):
            return await self._websocket(request, cfg, headers, target, ex)

        if request.headers.get("Expect", "").lower() == "100-continue":
            # Answer for the backend: the body limits are ours to enforce (RFC 9110 10.1.1).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        host = request.headers.get("Host", "")
        up_headers = CIMultiDict(
            request_headers_for_backend(headers, client_ip=ex.client_ip, proto="https", host=host)
        )
        if self.receipts is not None and self.receipts.applies(request.method, request.path):
            ex.request_hash = IncrementalHash()
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
            return ex.response or error_response(408, "send_timeout", "client stopped reading")
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
            tap = None
            issuer = self.receipts
            if issuer is not None:  # only the proxy speaks for its receipts
                resp.headers.popall(RECEIPT_HEADER, None)
                resp.headers.popall(ID_HEADER, None)
            if ex.request_hash is not None and issuer is not None and 200 <= upstream.status < 300:
                ctype = upstream.headers.get("Content-Type", "")
                if issuer.buffers(ctype, upstream.content_length):
                    return await self._relay_whole_signed(
                        request, resp, upstream, cfg, ex, issuer=issuer, deadline=deadline
                    )
                tap = _Tap(issuer, new_receipt_id(), ex.request_hash, ctype)
                resp.headers[ID_HEADER] = tap.rid
                issuer.pending.add(tap.rid)
            deadline.set(cfg.limits.send_timeout, "send")
            try:
                await resp.prepare(request)
                ex.status = upstream.status
                await self._relay_body(request, resp, upstream, cfg, ex, deadline=deadline, tap=tap)
            except ConnectionResetError:
                # The client went away mid-response: nothing to answer, nothing to log
                # above debug; aiohttp finishes the dead connection quietly.
                log.debug("client disconnected mid-response")
            finally:
                if tap is not None and tap.rid in tap.issuer.pending:  # it did not complete
                    spawn(tap.issuer.publish(tap.rid, None), "receipt-incomplete")
            return resp
        finally:
            # Not release(): a response not read to the end must not go back to the pool.
            upstream.close()

    async def _relay_whole_signed(
        self,
        request: web.BaseRequest,
        resp: _RelayResponse,
        upstream: aiohttp.ClientResponse,
        cfg: Config,
        ex: _Exchange,
        *,
        issuer: ReceiptIssuer,
        deadline: Deadline,
    ) -> web.StreamResponse:
        """A bounded response read whole, signed, and sent with its ``Teeproxy-Receipt``.

        Nothing has gone to the client yet, so a backend failure here is still a clean 502.
        """
        assert ex.request_hash is not None  # noqa: S101 - the caller checked
        idle = cfg.backend.idle_timeout
        limit = issuer.cfg.max_buffered_body
        content = upstream.content
        body = bytearray()
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
            if len(body) > limit:  # the client enforces Content-Length; never trust it blindly
                raise BackendError(f"backend response exceeds its {limit}-byte Content-Length")
        data = bytes(body)
        fields = issuer.fields(upstream.headers.get("Content-Type", ""))
        fields.feed(data)
        fields.finish()
        receipt = issuer.sign(ex.request_hash.digest(), hashlib.sha256(data).digest(), fields)
        resp.headers[RECEIPT_HEADER] = receipt.to_header()
        metrics.RECEIPT_HEADER.inc()
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
        tap: _Tap | None = None,
    ) -> None:
        """Copy the backend body to the client as it arrives, then end the response.

        The deadline guards each wait: ``idle`` while reading from the backend, ``send``
        while the client drains what was written. The last chunk is written together with
        the end of the response (one write, one TLS record, for a small body). A backend
        failure mid-body aborts the client connection instead of ending the response.
        """
        idle = cfg.backend.idle_timeout
        send_timeout = cfg.limits.send_timeout
        content = upstream.content
        while True:
            deadline.set(idle, "idle")
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError) as e:
                metrics.BACKEND_ERRORS.labels("broken_response").inc()
                log.warning("backend response broke mid-body: %s", _describe(e))
                _abort(request)
                return
            deadline.set(send_timeout, "send")
            last = not chunk or content.at_eof()
            if tap is not None:
                if chunk:
                    tap.update(chunk)
                if last:
                    await tap.complete()
            if last:
                await resp.write_eof(chunk)
            else:
                await resp.write(chunk)
            if chunk:
                ex.body_out += len(chunk)
                metrics.BYTES_OUT.inc(len(chunk))
            if last:
                return

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
        if ex.request_hash is not None:
            ex.request_hash.update(body)
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
            if ex.request_hash is not None:
                ex.request_hash.update(chunk)
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
            await _ws_relay(client, upstream, cfg.limits.send_timeout)
            return client
        finally:
            await upstream.close()


@dataclass(slots=True)
class _WsClose:
    """Why the relay is closing, shared by both directions so each hop gets the same code."""

    code: int | None = None


async def _ws_pipe(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    send_timeout: float,
    reason: _WsClose,
) -> None:
    async for msg in src:  # ends on CLOSE/CLOSING/CLOSED; close_code then holds the peer's
        if msg.type is WSMsgType.ERROR:
            log.info("WebSocket relay error: %s", msg.data)
            # The reason (1009 too big, 1007 bad UTF-8, ...): src.close_code may since have
            # become 1006, its own failed closing handshake with the misbehaving peer.
            reason.code = reason.code or getattr(msg.data, "code", None) or 1011
            break
        try:
            # A peer that stops reading must not pin the relay (limits.send_timeout).
            async with asyncio.timeout(send_timeout):
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
        except TimeoutError:
            metrics.CONNECTIONS_REJECTED.labels("send_timeout").inc()
            log.info("WebSocket peer stopped reading for %.0f s: closing", send_timeout)
            reason.code = reason.code or WSCloseCode.POLICY_VIOLATION
            # Tell the healthy side first: the stalled one may never take a close frame.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(send_timeout):
                    await src.close(code=reason.code)
            break
    reason.code = reason.code or src.close_code
    if not dst.closed:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(send_timeout):
                await dst.close(code=_wire_close_code(reason.code))


def _wire_close_code(code: int | None) -> int:
    """A close code that may be sent in a Close frame (RFC 6455 7.4.1)."""
    if code is None or code in (WSCloseCode.OK, 1005):  # 1005: "no status received"
        return WSCloseCode.OK
    if code in (1004, 1006, 1015) or not 1000 <= code < 5000:  # reserved, never on the wire
        return WSCloseCode.INTERNAL_ERROR
    return code


async def _ws_relay(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    send_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    reason = _WsClose()
    up = loop.create_task(
        _ws_pipe(client, upstream, send_timeout, reason), name="ws-client-to-backend"
    )
    down = loop.create_task(
        _ws_pipe(upstream, client, send_timeout, reason), name="ws-backend-to-client"
    )
    try:
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # One side finished: give the other a moment to forward the close, then stop it.
        if pending:
            await asyncio.wait(pending, timeout=5)
    finally:
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    if not client.closed:
        await client.close()


# -- helpers ------------------------------------------------------------------------------


async def _tee_wellknown(
    request: web.BaseRequest, cfg: Config, attestation: Any = None
) -> web.StreamResponse | None:
    """Dispatch for ``/.well-known/tee/*`` paths the proxy answers itself (None: forward)."""
    if request.path == "/.well-known/tee/attestation" and attestation is not None:
        return await attestation.handle(request)  # type: ignore[no-any-return]  # issue 4
    if request.path == "/.well-known/tee/acme" and request.method in ("GET", "HEAD"):
        from proxy.acme_runtime import acme_evidence_response  # noqa: PLC0415

        return await acme_evidence_response(cfg)
    return None


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


def _is_websocket_upgrade(request: web.BaseRequest) -> bool:
    if request.method != "GET":
        return False
    upgrade = request.headers.get("Upgrade", "").lower()
    conn = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return upgrade == "websocket" and "upgrade" in conn


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
