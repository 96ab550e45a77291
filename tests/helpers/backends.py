"""Backends for the forwarding tests: what the proxy sent, byte for byte.

- :class:`Recorder` / :func:`record_request`: an aiohttp handler recording every request it
  receives (raw target, raw headers, body, the proxy-side port), answering 200 with the body
  length;
- :class:`UploadProbe`: how each upload ended at the backend (complete or aborted);
- :class:`RawBackend`: a plain asyncio TCP server driven by a test-supplied coroutine, for
  byte-level control of what the "backend" sends; :func:`read_request_head` reads one
  request head on its connection.

The ``recording_backend``, ``upload_probe`` and ``raw_backend`` fixtures
(tests/integration/conftest.py) start them on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


# -- recording aiohttp backend ---------------------------------------------------------------
@dataclass
class Seen:
    """One request as the backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    port: int
    body: bytes = b""
    complete: bool = False

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


@dataclass
class Recorder:
    """What the recording backend saw; ``arrived`` is set when any request starts."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def completed(self) -> list[Seen]:
        return [s for s in self.seen if s.complete]


async def record_request(rec: Recorder, request: web.BaseRequest) -> web.StreamResponse:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    seen = Seen(
        method=request.method,
        target=request.raw_path,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        port=peer[1] if isinstance(peer, tuple) else 0,
    )
    rec.seen.append(seen)
    rec.arrived.set()
    seen.body = await request.read()
    seen.complete = True
    return web.Response(text=f"{len(seen.body)}", headers={"X-Seen": str(len(rec.seen))})


# -- upload probe ---------------------------------------------------------------------------
@dataclass
class UploadProbe:
    """A backend that reports how each upload ended: ``complete:<n>`` or ``aborted:<exc>``.

    ``head`` is set once a request reached the backend, ``done`` once its body read ended.
    """

    url: str = ""
    head: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: list[str] = field(default_factory=list)


# -- raw TCP backend -------------------------------------------------------------------------
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawBackend:
    port: int
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


RawBackendFactory = Callable[[RawHandler], Awaitable[RawBackend]]


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """Read one request's head (through the blank line) on a raw backend connection."""
    return await reader.readuntil(b"\r\n\r\n")
