"""Hooks into the forwarder: a tap sees one exchange's bytes as they are relayed.

In the manner of mitmproxy's event hooks (``requestheaders``, ``responseheaders``,
``response``, ``error``): the forwarder does not know what a tap does with the bytes, and a
tap never reaches into the forwarder. A :class:`TapFactory` is asked once per forwarded
HTTP exchange (WebSocket upgrades are not tapped) and returns the exchange's
:class:`ExchangeTap`, or None to stay out of it. The forwarder then calls, in order:

1. :meth:`~ExchangeTap.request_body` for every request body chunk, as it is forwarded;
2. :meth:`~ExchangeTap.response_headers` once, with the headers about to go to the client
   (the tap may change them); it returns :data:`STREAM` (None) to relay the body as it
   comes, or a byte limit: hold the body back (at most that many bytes: more is a backend
   error, 502) so that the tap can finish before the headers are sent;
3. :meth:`~ExchangeTap.response_body` for every response body chunk;
4. exactly one of :meth:`~ExchangeTap.response_end` (the body is complete; awaited before
   the last byte, or for a held body before the headers, are written) or
   :meth:`~ExchangeTap.error` (the exchange did not complete).

The synchronous hooks run on the hot path once per chunk: they must not block or await.
"""

from __future__ import annotations

from typing import Final, Protocol

from multidict import CIMultiDict

__all__ = ["STREAM", "ExchangeTap", "TapFactory"]

STREAM: Final = None
""":meth:`ExchangeTap.response_headers`' answer for "relay the body as it arrives"."""


class ExchangeTap(Protocol):
    def request_body(self, chunk: bytes) -> None: ...

    def response_headers(
        self, status: int, headers: CIMultiDict[str], content_length: int | None
    ) -> int | None: ...

    def response_body(self, chunk: bytes) -> None: ...

    async def response_end(self) -> None: ...

    def error(self) -> None: ...


class TapFactory(Protocol):
    def tap(self, method: str, path: str) -> ExchangeTap | None:
        """The tap for a request to ``path`` (None: not tapped). Called once per exchange."""
        ...
