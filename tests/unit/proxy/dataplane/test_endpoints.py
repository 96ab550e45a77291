"""proxy.dataplane.endpoints and .responses: the local endpoint registry, the JSON errors."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from proxy.dataplane.endpoints import LocalEndpoints
from proxy.dataplane.responses import json_error


async def _a(_r: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="a")


async def _b(_r: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="b")


def test_exact_then_longest_prefix_then_nothing() -> None:
    e = LocalEndpoints()
    e.add("/.well-known/tee/attestation", _a)
    e.add("/v1/", _b, prefix=True)
    e.add("/v1/receipts/", _a, prefix=True)
    assert e.find("GET", "/.well-known/tee/attestation") is _a
    assert e.find("GET", "/.well-known/tee/attestation/x") is None  # exact is exact
    assert e.find("GET", "/v1/receipts/abc") is _a  # the longer prefix wins
    assert e.find("GET", "/v1/models") is _b
    assert e.find("GET", "/v2/models") is None
    assert e.paths() == ["/.well-known/tee/attestation", "/v1/*", "/v1/receipts/*"]


def test_methods_restrict_and_other_methods_fall_through() -> None:
    e = LocalEndpoints()
    e.add("/.well-known/tee/acme", _a, methods=("GET", "HEAD"))
    assert e.find("HEAD", "/.well-known/tee/acme") is _a
    assert e.find("POST", "/.well-known/tee/acme") is None


def test_bad_and_duplicate_registrations_are_refused() -> None:
    e = LocalEndpoints()
    e.add("/x", _a)
    with pytest.raises(ValueError, match="twice"):
        e.add("/x", _b)
    e.add("/x", _b, prefix=True)  # an exact path and a prefix may share a string
    with pytest.raises(ValueError, match="start with /"):
        e.add("x", _a)


def test_json_error_shape_and_options() -> None:
    r = json_error(503, "policy_denied", "no", close=True, headers={"Retry-After": "3"})
    assert r.status == 503 and r.content_type == "application/json"
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Retry-After"] == "3"
    assert r.keep_alive is False
    assert r.body is not None
    assert json.loads(bytes(r.body)) == {
        "error": {"message": "no", "type": "policy_denied", "code": 503}
    }
    plain = json_error(502, "backend_unavailable", "down", no_store=False)
    assert "Cache-Control" not in plain.headers and plain.keep_alive is None
