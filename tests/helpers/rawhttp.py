"""A hand-written HTTP/1.1 client over TLS, for requests no well-behaved client would send.

``tls_connect`` opens the connection; ``read_response`` frames a response the way a client
must (RFC 9112 6.3); ``wait_closed`` reads until the peer closes; ``close_writer`` drops the
connection without the TLS close handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass


async def tls_connect(
    port: int, client_ssl: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost"
    )


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return RawResponse(int(status), reason[0] if reason else "", headers)


async def read_response(
    reader: asyncio.StreamReader, *, method: str = "GET", within: float = 5.0
) -> RawResponse:
    """Read one response, framing its body by the rules a client must apply (RFC 9112 6.3)."""
    async with asyncio.timeout(within):
        resp = await read_head(reader)
        while 100 <= resp.status < 200 and resp.status != 101:
            resp = await read_head(reader)
        if method == "HEAD" or resp.status in (204, 304):
            return resp
        te = resp.get("Transfer-Encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from the proxy
                    break
                body += await reader.readexactly(size)
                assert await reader.readexactly(2) == b"\r\n"
            resp.body = bytes(body)
        elif resp.get("Content-Length") is not None:
            resp.body = await reader.readexactly(int(resp.get("Content-Length") or 0))
        else:
            resp.body = await reader.read()
        return resp


async def wait_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Read until the peer closes (EOF or reset) and return what arrived before that.

    Raises TimeoutError when the connection is still open after ``within`` seconds.
    """
    data = bytearray()
    async with asyncio.timeout(within):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except (ConnectionError, ssl.SSLError):
            pass
    return bytes(data)


def close_writer(writer: asyncio.StreamWriter) -> None:
    """Drop a raw client connection without waiting for the TLS close handshake."""
    writer.transport.abort()
