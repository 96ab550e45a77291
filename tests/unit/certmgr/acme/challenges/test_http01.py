"""certmgr.acme.challenges.http01: publishing, looking up and removing key
authorizations (RFC 8555 8.3), refusing bad tokens and foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest

from certmgr.acme.challenges import http01


def test_http01_publish_lookup_remove(tmp_path: Path) -> None:
    token = "A" * 43
    http01.publish(tmp_path, token, f"{token}.thumb")
    assert http01.lookup(tmp_path, token) == f"{token}.thumb".encode()
    http01.remove(tmp_path, token)
    assert http01.lookup(tmp_path, token) is None


@pytest.mark.parametrize("token", ["../../etc/passwd", "a/b" * 10, "short", "x" * 200, "a.b" * 8])
def test_http01_refuses_bad_tokens(tmp_path: Path, token: str) -> None:
    assert not http01.valid_token(token)
    assert http01.lookup(tmp_path, token) is None
    with pytest.raises(ValueError, match="invalid HTTP-01 token"):
        http01.publish(tmp_path, token, "x")


def test_http01_does_not_serve_foreign_or_oversized_files(tmp_path: Path) -> None:
    token = "B" * 43
    d = tmp_path / "acme/challenges/http-01"
    d.mkdir(parents=True)
    (d / token).write_bytes(b"other.value")  # not this token's key authorization
    assert http01.lookup(tmp_path, token) is None
    (d / token).write_bytes(token.encode() + b"." + b"x" * 1000)
    assert http01.lookup(tmp_path, token) is None
