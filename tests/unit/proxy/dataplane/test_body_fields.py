"""proxy.dataplane.body_fields: the bounded model and id extraction from JSON and
SSE response bodies, never raising."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dataplane.body_fields import BodyFields, is_event_stream


def _fields(chunks: list[bytes], *, sse: bool, limit: int = 1 << 20) -> tuple[str, str]:
    f = BodyFields(sse=sse, limit=limit)
    for c in chunks:
        f.feed(c)
    f.finish()
    return f.model, f.response_id


def test_json_body_fields() -> None:
    body = json.dumps({"id": "cmpl-1", "object": "x", "model": "m-7", "usage": {"id": "no"}})
    assert _fields([body.encode()], sse=False) == ("m-7", "cmpl-1")
    # Split anywhere: same result.
    raw = body.encode()
    assert _fields([raw[:5], raw[5:17], raw[17:]], sse=False) == ("m-7", "cmpl-1")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"id": 5, "model": null}',
        b'{"id": "\\ud800", "model": "ok"}',  # lone surrogate: not UTF-8 encodable
        b"[" * 100_000,  # nesting beyond the recursion limit
        b"\xff\xfe",
    ],
)
def test_unusable_json_gives_empty_fields_not_errors(body: bytes) -> None:
    model, rid = _fields([body], sse=False)
    assert rid == ""
    assert model in ("", "ok")


def test_values_over_256_utf8_bytes_are_not_signed() -> None:
    body = json.dumps({"id": "é" * 129, "model": "m" * 256}).encode()  # 258 bytes / 256 bytes
    assert _fields([body], sse=False) == ("m" * 256, "")


def test_json_body_over_the_limit_is_not_parsed() -> None:
    body = json.dumps({"id": "a", "model": "b", "pad": "x" * 100}).encode()
    assert _fields([body], sse=False, limit=len(body)) == ("b", "a")
    assert _fields([body], sse=False, limit=len(body) - 1) == ("", "")
    assert _fields([body], sse=False, limit=0) == ("", "")


def test_sse_first_data_event_with_any_line_ending_and_chunking() -> None:
    event = b'data: {"id":"c-1","model":"m"}'
    for nl in (b"\n", b"\r\n", b"\r"):
        stream = b": comment" + nl + nl + b"retry: 5" + nl + nl + event + nl + nl
        stream += b"data: {" + nl + b'data: "id":"second"}' + nl + nl
        for cut in range(len(stream)):
            assert _fields([stream[:cut], stream[cut:]], sse=True) == ("m", "c-1"), (nl, cut)
        assert _fields([bytes([b]) for b in stream], sse=True) == ("m", "c-1")


def test_sse_multi_line_data_is_joined_with_newlines() -> None:
    stream = b'data: {"id":\ndata: "x", "model": "y"}\n\n'
    assert _fields([stream], sse=True) == ("y", "x")


def test_sse_first_event_not_json_gives_empty_fields() -> None:
    stream = b'data: hello\n\ndata: {"id":"late","model":"m"}\n\n'
    assert _fields([stream], sse=True) == ("", "")


def test_sse_event_that_does_not_end_within_the_limit() -> None:
    stream = b'data: {"id":"c","model":"m","pad":"' + b"x" * 200 + b'"}\n\n'
    assert _fields([stream], sse=True, limit=len(stream)) == ("m", "c")
    assert _fields([stream], sse=True, limit=len(stream) - 1) == ("", "")


def test_sse_scanning_is_linear_in_the_bytes_fed() -> None:
    # A first event fed one byte at a time must not be rescanned from the start each time.
    f = BodyFields(sse=True, limit=1 << 20)
    payload = b'data: {"id":"c","model":"m","pad":"' + b"x" * 300_000
    for i in range(0, len(payload), 1):
        f.feed(payload[i : i + 1])
    f.feed(b'"}\n\n')
    f.finish()
    assert (f.model, f.response_id) == ("m", "c")


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=20),
    sse=st.booleans(),
    limit=st.integers(0, 2000),
)
def test_fields_never_raise_and_stay_bounded(chunks: list[bytes], sse: bool, limit: int) -> None:
    model, rid = _fields(chunks, sse=sse, limit=limit)
    assert len(model.encode()) <= 256
    assert len(rid.encode()) <= 256


def test_event_stream_content_type() -> None:
    assert is_event_stream("text/event-stream")
    assert is_event_stream("Text/Event-Stream; charset=utf-8")
    assert not is_event_stream("application/json")
    assert not is_event_stream("")
