"""proxy.dataplane.headers: pure header rules: request framing (anti-smuggling), hop-by-hop
removal, provenance."""

from __future__ import annotations

import pytest

from proxy.dataplane.headers import (
    HOP_BY_HOP,
    check_request_framing,
    forwarded_element,
    request_headers_for_backend,
    response_headers_for_client,
)
from proxy.errors import ClientRequestError

H = list[tuple[str, str]]


# -- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], None, id="no-body-headers"),
        pytest.param([("Host", "a")], None, id="unrelated-headers"),
        pytest.param([("Content-Length", "0")], 0, id="cl-zero"),
        pytest.param([("Content-Length", "1234")], 1234, id="cl"),
        pytest.param([("content-length", " 42 ")], 42, id="cl-ows-and-case"),
        pytest.param([("Content-Length", "007")], 7, id="cl-leading-zeros"),
        pytest.param([("Content-Length", "9" * 18)], 10**18 - 1, id="cl-18-digits"),
        pytest.param([("Transfer-Encoding", "chunked")], None, id="te-chunked"),
        pytest.param([("transfer-encoding", "Chunked")], None, id="te-chunked-case"),
        pytest.param([("Transfer-Encoding", " chunked ")], None, id="te-chunked-ows"),
    ],
)
def test_framing_accepted(headers: H, expected: int | None) -> None:
    assert check_request_framing(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], id="cl+te"),
        pytest.param([("Transfer-Encoding", "chunked"), ("content-length", "0")], id="te+cl"),
        pytest.param([("Content-Length", "5"), ("Content-Length", "5")], id="dup-cl-same"),
        pytest.param([("Content-Length", "5"), ("Content-Length", "6")], id="dup-cl-differ"),
        pytest.param([("Content-Length", "5, 5")], id="cl-list"),
        pytest.param([("Content-Length", "-1")], id="cl-negative"),
        pytest.param([("Content-Length", "+5")], id="cl-plus"),
        pytest.param([("Content-Length", "1.0")], id="cl-decimal"),
        pytest.param([("Content-Length", "0x10")], id="cl-hex"),
        pytest.param([("Content-Length", "")], id="cl-empty"),
        pytest.param([("Content-Length", "1 2")], id="cl-inner-space"),
        pytest.param([("Content-Length", "\uff11\uff12")], id="cl-fullwidth-digits"),
        pytest.param([("Content-Length", "\u00b2")], id="cl-superscript-digit"),
        pytest.param([("Content-Length", "1" * 19)], id="cl-too-long"),
        pytest.param([("Transfer-Encoding", "gzip, chunked")], id="te-gzip-chunked"),
        pytest.param([("Transfer-Encoding", "chunked, gzip")], id="te-chunked-not-last"),
        pytest.param([("Transfer-Encoding", "chunked, chunked")], id="te-chunked-twice"),
        pytest.param(
            [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            id="te-two-headers",
        ),
        pytest.param([("Transfer-Encoding", "identity")], id="te-identity"),
        pytest.param([("Transfer-Encoding", "xchunked")], id="te-lookalike"),
        pytest.param([("Transfer-Encoding", "chunked;q=1")], id="te-params"),
        pytest.param([("Transfer-Encoding", "")], id="te-empty"),
        pytest.param([("Transfer-Encoding", "chunked,")], id="te-trailing-comma"),
    ],
)
def test_framing_rejected_with_400(headers: H) -> None:
    with pytest.raises(ClientRequestError) as info:
        check_request_framing(headers)
    assert info.value.status == 400
    assert info.value.message


# -- request headers to the backend ---------------------------------------------------------


def _names(headers: H) -> list[str]:
    return [n.lower() for n, _ in headers]


def test_request_hop_by_hop_removed_end_to_end_kept_in_order() -> None:
    headers = [
        ("Host", "api.example"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Authenticate", "Basic"),
        ("Expect", "100-continue"),
        ("Authorization", "Bearer sk-123"),
        ("Accept", "text/event-stream"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    ]
    out = request_headers_for_backend(headers, client_ip="192.0.2.7", proto="https", host="h")
    kept = [
        (n, v)
        for n, v in out
        if n.lower()
        not in {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"}
    ]
    assert kept == [
        ("Host", "api.example"),
        ("Authorization", "Bearer sk-123"),
        ("Accept", "text/event-stream"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    ]
    assert not set(_names(out)) & HOP_BY_HOP


def test_request_fields_named_in_connection_removed_any_case() -> None:
    headers = [
        ("connection", "close, X-Internal-Token"),
        ("CONNECTION", " x-other ,"),
        ("X-Internal-Token", "secret"),
        ("x-other", "1"),
        ("X-Kept", "yes"),
    ]
    out = request_headers_for_backend(headers, client_ip="192.0.2.7", proto="https", host="h")
    names = _names(out)
    assert "x-internal-token" not in names
    assert "x-other" not in names
    assert "connection" not in names
    assert ("X-Kept", "yes") in out


def test_request_client_provenance_replaced_not_appended() -> None:
    headers = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("x-forwarded-proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;proto=http"),
    ]
    out = request_headers_for_backend(
        headers, client_ip="192.0.2.7", proto="https", host="api.example"
    )
    assert [(n, v) for n, v in out] == [
        ("X-Forwarded-For", "192.0.2.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example"),
        ("Forwarded", "for=192.0.2.7;proto=https;host=api.example"),
    ]
    assert "6.6.6.6" not in repr(out)
    assert "x-real-ip" not in _names(out)


def test_request_without_host_has_no_forwarded_host() -> None:
    out = request_headers_for_backend([], client_ip="192.0.2.7", proto="https", host="")
    assert "x-forwarded-host" not in _names(out)


def test_forwarded_ipv6_node_is_bracketed_and_quoted() -> None:
    """RFC 7239 section 6: an IPv6 node is "[v6]" and, as ':' is not a token char, quoted."""
    out = request_headers_for_backend(
        [], client_ip="2001:db8::1", proto="https", host="api.example"
    )
    assert ("Forwarded", 'for="[2001:db8::1]";proto=https;host=api.example') in out
    # X-Forwarded-For carries the bare address (de-facto format).
    assert ("X-Forwarded-For", "2001:db8::1") in out


@pytest.mark.parametrize(
    ("host", "rendered"),
    [
        ("api.example", "host=api.example"),
        ("api.example:8443", 'host="api.example:8443"'),
        ("[::1]:8443", 'host="[::1]:8443"'),
        ('we"ird\\', 'host="we\\"ird\\\\"'),
        # Not ASCII: not a token, though its lower case (a KELVIN SIGN's is "k") is one.
        ("\u212a.example", 'host="\u212a.example"'),
        ("", 'host=""'),
    ],
)
def test_forwarded_host_quoted_when_not_a_token(host: str, rendered: str) -> None:
    assert forwarded_element("192.0.2.1", "https", host) == f"for=192.0.2.1;proto=https;{rendered}"


def test_websocket_handshake_fields_dropped_subprotocol_kept() -> None:
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("Sec-WebSocket-Protocol", "chat"),
    ]
    ws = request_headers_for_backend(
        headers, client_ip="192.0.2.7", proto="https", host="h", websocket=True
    )
    names = _names(ws)
    assert "sec-websocket-key" not in names
    assert "sec-websocket-version" not in names
    assert "sec-websocket-extensions" not in names
    assert ("Sec-WebSocket-Protocol", "chat") in ws
    plain = request_headers_for_backend(headers, client_ip="192.0.2.7", proto="https", host="h")
    assert "sec-websocket-key" in _names(plain)


def test_request_input_not_mutated() -> None:
    headers = [("Connection", "close"), ("X-A", "1")]
    before = list(headers)
    request_headers_for_backend(headers, client_ip="192.0.2.7", proto="https", host="h")
    assert headers == before


# -- response headers to the client ---------------------------------------------------------


def test_response_hop_by_hop_and_connection_named_removed() -> None:
    headers = [
        ("Content-Type", "text/event-stream"),
        ("Connection", "keep-alive, X-Backend-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("X-Backend-Secret", "pod-7"),
        ("Proxy-Authenticate", "Basic"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Checksum"),
        ("Content-Length", "10"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert response_headers_for_client(headers) == [
        ("Content-Type", "text/event-stream"),
        ("Content-Length", "10"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_response_without_hop_by_hop_unchanged() -> None:
    headers = [("Content-Type", "application/json"), ("X-Request-Id", "abc")]
    assert response_headers_for_client(headers) == headers


def test_connection_cannot_strip_host() -> None:
    out = request_headers_for_backend(
        [("Host", "api.example"), ("Connection", "host, x-hop"), ("X-Hop", "1")],
        client_ip="192.0.2.1",
        proto="https",
        host="api.example",
    )
    names = [n.lower() for n, _ in out]
    assert "host" in names
    assert "x-hop" not in names


def test_unknown_client_address_is_forwarded_as_unknown() -> None:
    assert forwarded_element("", "https", "h").startswith("for=unknown;")
    out = dict(request_headers_for_backend([], client_ip="", proto="https", host="h"))
    assert "X-Forwarded-For" not in out
    assert out["Forwarded"] == "for=unknown;proto=https;host=h"
