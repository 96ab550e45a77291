"""A TLS listener whose connections are OpenSSL sockets driven by the event loop.

asyncio's (and uvloop's) TLS transport runs OpenSSL over two memory BIOs: every record is
copied from the socket into a BIO, decrypted through an ``SSLObject``, and every write is
encrypted into the outgoing BIO and copied out again, with the handshake and the shutdown
driven by a state machine in between. Here OpenSSL reads and writes the socket itself
(a non-blocking ``ssl.SSLSocket``) and the loop only says when the descriptor is ready,
the way nginx drives ``SSL_read``/``SSL_write``: a 240-byte token event is one
``SSL_write`` and one ``write(2)``, a handshake is ``SSL_do_handshake`` called when the
socket is readable. The transport is the selector transport asyncio had before 3.7, kept
small:

- the handshake must finish within ``handshake_timeout`` s (then the socket is closed);
  failed handshakes are logged at debug level and never reach the protocol; an ``admit``
  callback, asked with the number of handshakes under way, may refuse one more (the
  accepted socket is closed before any TLS: the worker's connection cap);
- reads: one ``SSL_read`` of up to a record per readiness, then what OpenSSL already
  decrypted (``pending()``); the peer's close_notify or a TCP FIN is ``eof_received()``,
  after which the connection closes (TLS has no half-close); a ``data_received`` that
  raises aborts the connection before the error reaches the loop's exception handler;
- writes: straight to ``SSL_write`` while nothing is queued; otherwise bytes queue in one
  buffer that is retried as OpenSSL requires (the same bytes first, more may follow:
  CPython sets ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``), with ``pause_writing()`` and
  ``resume_writing()`` at the water marks;
- ``close()`` flushes the queue, sends close_notify and closes without waiting for the
  peer's; ``abort()`` closes at once.

The protocol sees an ordinary ``asyncio.Transport`` with the usual extra info
(``peername``, ``sockname``, ``socket``, ``sslcontext``, ``ssl_object``, ``peercert``,
``cipher``); ``ssl_object`` is the ``SSLSocket``, whose ``context`` the SNI callback set.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any

from proxy.log import tls_log as log

__all__ = ["TLSServer", "TLSTransport", "create_tls_server"]

_RECORD = 16384  # the most plaintext one TLS record carries (RFC 8446 5.1)
_ACCEPTS_PER_WAKEUP = 64  # bound the work one readiness of the listener does
_WRITE_CHUNK = 256 * 1024  # bytes handed to one SSL_write from the queue
_ACCEPT_RETRY = 1.0  # s to wait after accept() ran out of descriptors


class TLSTransport(asyncio.Transport):
    """One established TLS connection (after its handshake)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.Protocol,
        server: TLSServer | None,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock: ssl.SSLSocket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._server = server
        self._buffer = bytearray()
        self._closing = False
        self._reading = False  # reader registered
        self._read_paused = False
        self._writer = False  # writer registered
        self._write_wants_read = False  # SSL_write waits for the socket to be readable
        self._protocol_paused = False
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._extra: dict[str, Any] = {
            "socket": sock,
            "ssl_object": sock,
            "sslcontext": sock.context,
        }
        if server is not None:
            server.attach(self)

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading and tell the protocol (bytes may already wait in OpenSSL).

        A reader the handshake left on the descriptor is replaced, not removed and made
        again; the protocol's ``close()`` in ``connection_made`` removes it.
        """
        self._loop.add_reader(self._fd, self._read_ready)
        self._reading = True
        self._protocol.connection_made(self)
        if self._sock is not None and not self._closing and self._sock.pending():
            self._loop.call_soon(self._read_ready)

    # -- asyncio.BaseTransport -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        sock = self._sock
        if sock is None:
            return default
        if name in ("peername", "sockname"):  # asked for by few requests: looked up then
            try:
                value = sock.getpeername() if name == "peername" else sock.getsockname()
            except OSError:
                value = None
            self._extra[name] = value
            return value
        if name == "peercert":
            return sock.getpeercert()
        if name == "cipher":
            return sock.cipher()
        if name == "compression":
            return sock.compression()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("TLSTransport needs an asyncio.Protocol")
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._write_wants_read:
            self._remove_reader()
        if not self._buffer:
            self._loop.call_soon(self._finish, None, True)

    def abort(self) -> None:
        self._finish(None, False)

    # -- asyncio.ReadTransport -------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._read_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._read_paused:
            return
        self._read_paused = True
        self._remove_reader()

    def resume_reading(self) -> None:
        if self._closing or not self._read_paused:
            return
        self._read_paused = False
        self._add_reader()
        if self._sock is not None and self._sock.pending():
            self._loop.call_soon(self._read_ready)

    # -- asyncio.WriteTransport ------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing or self._sock is None:
            return
        if self._buffer or len(data) > _WRITE_CHUNK:
            self._buffer += data
            if not self._writer and not self._write_wants_read:
                self._write_ready()
            self._maybe_pause()
            return
        try:
            self._sock.send(data)
            return
        except ssl.SSLWantWriteError:
            pass
        except ssl.SSLWantReadError:
            self._write_wants_read = True
            self._add_reader()
        except (OSError, ssl.SSLError) as e:
            self._fatal(e)
            return
        # OpenSSL may have sent some records of ``data`` already; it must be offered the
        # same bytes again, so all of them are queued.
        self._buffer += data
        if not self._write_wants_read:
            self._add_writer()
        self._maybe_pause()

    # -- readiness -------------------------------------------------------------------------

    def _read_ready(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._write_ready()
        sock = self._sock
        if sock is None:
            return
        if self._closing or self._read_paused:
            if not self._write_wants_read:
                self._remove_reader()
            return
        protocol = self._protocol
        while True:
            try:
                data = sock.recv(_RECORD)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return
            except ssl.SSLWantWriteError:
                return  # OpenSSL wants to write first (TLS 1.3 KeyUpdate); readiness retries
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            except (OSError, ssl.SSLError) as e:
                self._fatal(e)
                return
            if not data:
                self._eof()
                return
            try:
                protocol.data_received(data)
            except BaseException:
                # A protocol that failed on its input left the connection in an unknown
                # state: it is cut (as asyncio's own transports do); the loop's exception
                # handler reports the error.
                self.abort()
                raise
            if self._closing or self._read_paused or self._sock is None:
                return
            if not sock.pending():
                return

    def _write_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        buf = self._buffer
        while buf:
            # A retry after WANT_WRITE must offer at least the bytes offered before: the
            # queue only grows at its end and is cut only after a write succeeded, so its
            # first _WRITE_CHUNK bytes always are. (A bytes copy, not a memoryview: an
            # exception's traceback would keep the view and the queue could not be cut.)
            try:
                n = sock.send(buf if len(buf) <= _WRITE_CHUNK else bytes(buf[:_WRITE_CHUNK]))
            except ssl.SSLWantWriteError:
                self._add_writer()
                return
            except ssl.SSLWantReadError:
                self._remove_writer()
                self._write_wants_read = True
                self._add_reader()
                return
            except (OSError, ssl.SSLError) as e:
                self._fatal(e)
                return
            del buf[:n]
        self._remove_writer()
        if self._protocol_paused and len(buf) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._finish(None, True)

    def _maybe_pause(self) -> None:
        if not self._protocol_paused and len(self._buffer) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _eof(self) -> None:
        if self._protocol.eof_received():
            log.debug("eof_received() asked to keep a TLS connection open: closing anyway")
        self.close()

    # -- the end -----------------------------------------------------------------------------

    def _fatal(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
            log.debug("TLS connection reset by peer")
        else:
            log.debug("TLS connection failed: %s", exc)
        self._finish(exc, False)

    def _finish(self, exc: Exception | None, notify_peer: bool) -> None:
        sock = self._sock
        if sock is None:
            return
        self._closing = True
        self._remove_reader()
        self._remove_writer()
        self._sock = None
        self._buffer.clear()
        if notify_peer:
            # One close_notify; the peer's own is not waited for (as nginx does).
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                sock.unwrap()
        sock.close()
        if self._server is not None:
            self._server.detach(self)
            self._server = None
        self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        protocol, self._protocol = self._protocol, _Gone()
        protocol.connection_lost(exc)

    # -- registrations -------------------------------------------------------------------------

    def _add_reader(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def _remove_reader(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _add_writer(self) -> None:
        if not self._writer:
            self._writer = True
            self._loop.add_writer(self._fd, self._write_ready)

    def _remove_writer(self) -> None:
        if self._writer:
            self._writer = False
            self._loop.remove_writer(self._fd)


class _Gone(asyncio.Protocol):
    """What a closed transport points at, so a late callback reaches nothing."""


class _Handshake:
    """One accepted socket until its TLS handshake finishes (or fails or times out)."""

    __slots__ = ("fd", "server", "sock", "timer", "want")

    def __init__(self, server: TLSServer, sock: ssl.SSLSocket, timeout: float) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.want = 0  # 1: reader registered, 2: writer registered
        self.timer: asyncio.TimerHandle | None = server.loop.call_later(timeout, self.expire)

    def step(self) -> None:
        sock = self.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._wait(1)
            return
        except ssl.SSLWantWriteError:
            self._wait(2)
            return
        except (OSError, ssl.SSLError, ValueError) as e:
            log.debug("TLS handshake failed: %s", e)
            self.end(close=True)
            return
        # The reader stays registered: the transport takes it over (the loop swaps the
        # callback instead of tearing its poll handle down and making a new one).
        self.end(close=False, keep_reader=self.want == 1)
        self.server.established(sock)

    def expire(self) -> None:
        log.debug("TLS handshake not done within the timeout: closing")
        self.timer = None
        self.end(close=True)

    def _wait(self, want: int) -> None:
        if self.want == want:
            return
        loop = self.server.loop
        self._unregister()
        if want == 1:
            loop.add_reader(self.fd, self.step)
        else:
            loop.add_writer(self.fd, self.step)
        self.want = want

    def _unregister(self) -> None:
        loop = self.server.loop
        if self.want == 1:
            loop.remove_reader(self.fd)
        elif self.want == 2:
            loop.remove_writer(self.fd)
        self.want = 0

    def end(self, *, close: bool, keep_reader: bool = False) -> None:
        if not keep_reader:
            self._unregister()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.handshakes.discard(self)
        if close:
            self.sock.close()


class TLSServer:
    """Accepts on its listening sockets; each connection gets a :class:`TLSTransport`.

    The part of ``asyncio.Server`` the worker uses: ``sockets``, ``close()``,
    ``wait_closed()``, ``is_serving()``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: list[socket.socket],
        context: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        *,
        admit: Callable[[int], bool] | None = None,
    ) -> None:
        self.loop = loop
        # Asked with the number of handshakes under way before one more starts; False:
        # the accepted connection is closed at once (a flood of silent handshakes is
        # bounded by the connection cap, not only by the handshake deadline).
        self.admit = admit
        self._listeners = listeners
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.handshakes: set[_Handshake] = set()
        self.transports: set[TLSTransport] = set()
        self._retry: dict[int, asyncio.TimerHandle] = {}
        self._closed = loop.create_future()
        for sock in listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._listeners)

    def is_serving(self) -> bool:
        return bool(self._listeners)

    def close(self) -> None:
        """Stop accepting; handshakes under way are closed, connections are not."""
        listeners, self._listeners = self._listeners, []
        for sock in listeners:
            retry = self._retry.pop(sock.fileno(), None)
            if retry is not None:
                retry.cancel()
            else:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        for hs in list(self.handshakes):
            hs.end(close=True)
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await self._closed

    def attach(self, transport: TLSTransport) -> None:
        self.transports.add(transport)

    def detach(self, transport: TLSTransport) -> None:
        self.transports.discard(transport)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a while, as asyncio does,
                    # rather than spin on a listener that stays readable.
                    log.warning("accept() failed (%s): pausing for %.0f s", e, _ACCEPT_RETRY)
                    fd = listener.fileno()
                    self.loop.remove_reader(fd)
                    self._retry[fd] = self.loop.call_later(
                        _ACCEPT_RETRY, self._resume_accept, listener
                    )
                    return
                log.debug("accept() failed: %s", e)
                return
            self._start(conn)

    def _resume_accept(self, listener: socket.socket) -> None:
        self._retry.pop(listener.fileno(), None)
        if listener in self._listeners:
            self.loop.add_reader(listener.fileno(), self._accept, listener)

    def _start(self, conn: socket.socket) -> None:
        if self.admit is not None and not self.admit(len(self.handshakes)):
            conn.close()
            return
        # TCP_NODELAY and SO_KEEPALIVE come from the listening socket (Linux copies them
        # to each accepted one), so no option is set here.
        try:
            conn.setblocking(False)
            sock = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as e:
            log.debug("could not start TLS on an accepted connection: %s", e)
            conn.close()
            return
        hs = _Handshake(self, sock, self.handshake_timeout)
        self.handshakes.add(hs)
        hs.step()

    def established(self, sock: ssl.SSLSocket) -> None:
        TLSTransport(self.loop, sock, self.protocol_factory(), self).start()


async def create_tls_server(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    handshake_timeout: float,
    reuse_port: bool = False,
    backlog: int = 2048,
    admit: Callable[[int], bool] | None = None,
) -> TLSServer:
    """Listen on every address ``host`` resolves to, at ``port`` (``reuse_port``:
    SO_REUSEPORT), and serve TLS there, as ``loop.create_server(ssl=...)`` would.

    Accepted sockets inherit TCP_NODELAY (token events are small writes that must not wait
    for an ACK) and SO_KEEPALIVE (a dead peer of an idle stream is found) from the listener.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return TLSServer(loop, listeners, ssl_context, protocol_factory, handshake_timeout, admit=admit)
