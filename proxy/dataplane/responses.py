"""The one builder of the JSON error bodies the proxy answers itself.

OpenAI-compatible shape, so clients of the backend's API read the proxy's errors the same
way: ``{"error": {"message": ..., "type": ..., "code": STATUS}}``. Every response the proxy
answers itself carries ``Server:`` :data:`SERVER` (set for all of them by
:class:`proxy.dataplane.protocol.ProxyRequest`), never a software version; a relayed
response keeps the backend's Server field, and gets :data:`SERVER` only when it has none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from aiohttp import web

__all__ = ["SERVER", "json_error", "json_response"]

SERVER: Final = "teeproxy"
"""The Server field of what the proxy answers itself (no version: nothing to fingerprint)."""


def json_response(
    status: int,
    doc: object,
    *,
    no_store: bool = True,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON document (keys sorted); ``no_store``: ``Cache-Control: no-store``."""
    extra = {"Cache-Control": "no-store"} if no_store else {}
    return web.Response(
        status=status,
        body=json.dumps(doc, sort_keys=True).encode(),
        content_type="application/json",
        headers={**extra, **(headers or {})},
    )


def json_error(
    status: int,
    kind: str,
    message: str,
    *,
    close: bool = False,
    no_store: bool = True,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error answered by the proxy itself. ``close``: the connection is closed after it
    (a failed exchange leaves the connection's state unknown)."""
    resp = json_response(
        status,
        {"error": {"message": message, "type": kind, "code": status}},
        no_store=no_store,
        headers=headers,
    )
    if close:
        resp.force_close()
    return resp
