"""certmgr.attest.providers.nitro: the NSM provider against a fake device at the ioctl
level (it reads the ``struct nsm_raw`` the provider passes, the CBOR request at its
address, and writes a CBOR response and its length back, as drivers/misc/nsm.c does)."""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from certmgr.attest.measurement import TeeType
from certmgr.attest.providers.factory import ProviderSettings, detect_provider, make_provider
from certmgr.attest.providers.nitro import (
    NSM_IOCTL_REQUEST,
    NSM_RESPONSE_MAX_SIZE,
    NitroProvider,
    attestation_request,
)
from certmgr.attest.quote import parse_evidence
from certmgr.errors import QuoteProviderError
from tests.helpers.nitro import NSM_QVL, nitro_vector


class FakeNsm:
    """The kernel side of ``NSM_IOCTL_REQUEST``: answers with ``respond(request)``."""

    def __init__(self, respond: Callable[[Any], object]) -> None:
        self.respond = respond
        self.requests: list[Any] = []

    def __call__(self, fd: int, request: int, arg: Any, mutate: bool) -> int:
        assert request == NSM_IOCTL_REQUEST == 0xC0200A00 and mutate
        view = memoryview(arg).cast("B")
        req_addr, req_len, resp_addr, resp_len = struct.unpack("<QQQQ", view.tobytes())
        assert resp_len == NSM_RESPONSE_MAX_SIZE
        decoded = cbor2.loads(ctypes.string_at(req_addr, req_len))
        self.requests.append(decoded)
        answer = self.respond(decoded)
        if isinstance(answer, OSError):
            raise answer
        out = answer if isinstance(answer, bytes) else cbor2.dumps(answer)
        n = min(len(out), resp_len)
        ctypes.memmove(resp_addr, out, n)
        view[:] = struct.pack("<QQQQ", req_addr, req_len, resp_addr, n)
        return 0


def _device(tmp_path: Path) -> str:
    dev = tmp_path / "nsm"
    dev.write_bytes(b"")
    return str(dev)


def test_attestation_request_is_serde_externally_tagged() -> None:
    assert cbor2.loads(attestation_request(b"u" * 64)) == {
        "Attestation": {"user_data": b"u" * 64, "nonce": None, "public_key": None}
    }


def test_provider_sends_report_data_as_user_data_and_returns_the_document(tmp_path: Path) -> None:
    doc = nitro_vector(NSM_QVL[0])
    fake = FakeNsm(lambda req: {"Attestation": {"document": doc}})
    p = NitroProvider(_device(tmp_path), ioctl=fake)
    rd = bytes(range(64))
    assert p.name == "nitro" and p.get_quote(rd) == doc
    assert fake.requests == [{"Attestation": {"user_data": rd, "nonce": None, "public_key": None}}]
    q = parse_evidence(p.get_quote(rd))
    assert q.tee is TeeType.NITRO  # what self_measurement and the evidence endpoint read


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"Error": "InvalidArgument"}, "error InvalidArgument"),
        ({"Attestation": {"document": b"not cose"}}, "no COSE_Sign1"),
        ({"Attestation": {}}, "no COSE_Sign1"),
        (b"\xff\xff", "malformed response"),
        (b"", "response of 0 bytes"),
        (OSError(errno.EMSGSIZE, "too big"), "too large"),
        (OSError(errno.EIO, "io"), "ioctl failed"),
    ],
)
def test_provider_refuses_bad_answers(tmp_path: Path, answer: object, match: str) -> None:
    p = NitroProvider(_device(tmp_path), ioctl=FakeNsm(lambda req: answer))
    with pytest.raises(QuoteProviderError, match=match):
        p.get_quote(bytes(64))


def test_provider_checks_its_input_and_device(tmp_path: Path) -> None:
    p = NitroProvider(str(tmp_path / "absent"), ioctl=FakeNsm(lambda req: {}))
    with pytest.raises(QuoteProviderError, match="cannot open"):
        p.get_quote(bytes(64))
    with pytest.raises(QuoteProviderError, match="64 bytes"):
        NitroProvider(_device(tmp_path)).get_quote(b"short")


def test_factory_builds_and_detects_nitro(tmp_path: Path) -> None:
    settings = ProviderSettings(nsm_device=_device(tmp_path))
    p = make_provider("nitro", settings)
    assert isinstance(p, NitroProvider) and p.device == settings.nsm_device
    absent = str(tmp_path / "none")
    # A regular file is not the NSM character device: "auto" finds nothing.
    assert detect_provider(absent, absent, absent, settings.nsm_device) == "none"
    assert detect_provider(absent, absent, absent, "/dev/null") == "nitro"  # a char device


def test_real_ioctl_on_a_file_that_is_no_nsm_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(QuoteProviderError, match="ioctl failed"):
        NitroProvider(_device(tmp_path)).get_quote(bytes(64))  # ENOTTY from the kernel
