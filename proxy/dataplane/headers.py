"""Pure header rules for forwarding: framing checks, hop-by-hop removal, Forwarded.

No I/O and no aiohttp objects: functions take header lists of ``(name, value)`` string pairs
and return new lists, so the rules test in memory.

References:
- RFC 9110 7.6.1 (Connection): hop-by-hop fields, and every field named in Connection, are
  removed by a proxy before forwarding, in both directions.
- RFC 9112 6.1 / 6.3 (message body length): a request with both Transfer-Encoding and
  Content-Length, several or invalid Content-Length values, or a transfer coding other than a
  final ``chunked`` is rejected with 400 rather than guessed at; guessing differently from the
  next hop is what request smuggling exploits.
- RFC 7239 (Forwarded) and the de-facto X-Forwarded-For/-Proto/-Host fields: values supplied
  by the client are dropped and replaced with what this proxy observed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from proxy.errors import ClientRequestError

__all__ = [
    "HOP_BY_HOP",
    "check_request_framing",
    "forwarded_element",
    "request_headers_for_backend",
    "response_headers_for_client",
]

Header = tuple[str, str]

# RFC 9110 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
# Upgrade; Trailer (RFC 9110 6.6.2) describes this hop's framing; the Proxy-Authenticate /
# Proxy-Authorization pair is addressed to this proxy, never to the backend or client.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Client-supplied provenance fields: replaced, never trusted or appended to.
_PROVENANCE = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
)

# Handled by this proxy itself (100-continue is answered here, not by the backend).
_CONSUMED = frozenset({"expect"})

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2 token (ASCII only)


# Never removed because a Connection header names them: a client must not be able to make
# the proxy drop the request's target host.
_PROTECTED = frozenset({"host"})


def _connection_tokens(headers: Iterable[Header]) -> set[str]:
    """Field names listed in every Connection header (RFC 9110 7.6.1), lower-cased."""
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names - _PROTECTED


def check_request_framing(headers: Sequence[Header]) -> int | None:
    """Validate request body framing; return the Content-Length, or None when chunked/absent.

    Raises ClientRequestError(400) for every ambiguity a smuggling attack relies on.
    """
    lengths = [v for n, v in headers if n.lower() == "content-length"]
    codings = [v for n, v in headers if n.lower() == "transfer-encoding"]
    if lengths and codings:
        raise ClientRequestError(400, "both Content-Length and Transfer-Encoding present")
    if len(lengths) > 1:
        raise ClientRequestError(400, "more than one Content-Length header")
    if codings:
        parts = [p.strip().lower() for v in codings for p in v.split(",")]
        if parts != ["chunked"]:
            raise ClientRequestError(400, "unsupported Transfer-Encoding (only 'chunked')")
        return None
    if lengths:
        value = lengths[0].strip()
        # RFC 9110 8.6: 1*DIGIT; no sign, no comma list, no whitespace inside.
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ClientRequestError(400, "invalid Content-Length")
        return int(value)
    return None


def forwarded_element(client_ip: str, proto: str, host: str) -> str:
    """One RFC 7239 Forwarded element; IPv6 nodes are bracketed and quoted (RFC 7239 6).

    An unknown client address (a unix-socket listener) is ``for=unknown`` (RFC 7239 6.2).
    """
    if not client_ip:
        node = "unknown"
    elif ":" in client_ip:
        node = f'"[{client_ip}]"'
    else:
        node = client_ip
    return f"for={node};proto={proto};host={_quote_if_needed(host)}"


def _quote_if_needed(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_REQUEST_DROP = HOP_BY_HOP | _PROVENANCE | _CONSUMED


def request_headers_for_backend(
    headers: Sequence[Header], *, client_ip: str, proto: str, host: str, websocket: bool = False
) -> list[Header]:
    """Headers to send upstream: hop-by-hop and provenance removed, provenance set anew.

    For a WebSocket upgrade the handshake fields are produced by the upstream client library,
    so the client's Sec-WebSocket-Key/-Version/-Extensions are dropped here; the subprotocol
    list is kept so the backend can choose.
    """
    tokens = _connection_tokens(headers)
    drop = _REQUEST_DROP | tokens if tokens else _REQUEST_DROP
    if websocket:
        drop = drop | {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
    out = [(n, v) for n, v in headers if n.lower() not in drop]
    if client_ip:
        out.append(("X-Forwarded-For", client_ip))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("Forwarded", forwarded_element(client_ip, proto, host)))
    return out


def response_headers_for_client(headers: Sequence[Header]) -> list[Header]:
    """Headers to send downstream: hop-by-hop fields and those named in Connection removed.

    Content-Length is kept (the body is relayed byte for byte); Content-Encoding is kept
    (bodies are never recoded).
    """
    tokens = _connection_tokens(headers)
    drop = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    return [(n, v) for n, v in headers if n.lower() not in drop]
