"""AWS Nitro Enclaves quote provider: the Nitro Secure Module device ``/dev/nsm``.

Interface (Linux ``drivers/misc/nsm.c`` and ``include/uapi/linux/nsm.h``, and
aws-nitro-enclaves-nsm-api ``src/driver/mod.rs``, which speaks the same ioctl): one ioctl
``NSM_IOCTL_REQUEST = _IOWR(0x0A, 0, struct nsm_raw)`` on the open device, where
``struct nsm_raw { struct nsm_iovec request, response; }`` and ``struct nsm_iovec { __u64
addr; __u64 len; }`` (32 bytes, so the request code is ``0xC0200A00``). The request buffer
holds a CBOR request of at most 0x1000 bytes, the response buffer receives the CBOR
response (at most 0x3000 bytes) and the driver writes its length back into
``response.len``. Requests and responses are serde's externally tagged enums
(aws-nitro-enclaves-nsm-api ``src/api/mod.rs``)::

    {"Attestation": {"user_data": bstr|null, "nonce": bstr|null, "public_key": bstr|null}}
    -> {"Attestation": {"document": bstr}}   or   {"Error": "InvalidArgument" | ...}

No maintained Python binding exists (``aws-nsm-interface`` last released in 2020), so the
ioctl is made here with :mod:`fcntl` and :mod:`ctypes`. Tests replace the ioctl function
with a fake device that reads the same structure and CBOR.

Binding: the 64 bytes of report_data every provider is given become the document's
``user_data`` (as dstack does on Nitro); ``nonce`` and ``public_key`` stay unset, because
teeproxy's claims (the key's SPKI hash, the client's nonce) are already inside that
report_data. Blocking, like every provider.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable
from typing import Any

import cbor2

from certmgr.attest.measurement import check_report_data
from certmgr.attest.nitro import MAX_DOCUMENT_SIZE, looks_like_cose_sign1
from certmgr.attest.providers.base import DEFAULT_NSM_DEVICE
from certmgr.errors import QuoteProviderError

__all__ = [
    "DEFAULT_NSM_DEVICE",
    "NSM_IOCTL_REQUEST",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "NitroProvider",
    "NsmIovec",
    "NsmMessage",
    "attestation_request",
]

NSM_REQUEST_MAX_SIZE = 0x1000
NSM_RESPONSE_MAX_SIZE = 0x3000
_NSM_IOCTL_MAGIC = 0x0A


class NsmIovec(ctypes.Structure):
    """``struct nsm_iovec``: a user address and a length, both __u64."""

    _fields_ = (("addr", ctypes.c_uint64), ("len", ctypes.c_uint64))


class NsmMessage(ctypes.Structure):
    """``struct nsm_raw``: the request and the response buffer."""

    _fields_ = (("request", NsmIovec), ("response", NsmIovec))


def _iowr(kind: int, nr: int, size: int) -> int:
    """Linux ``_IOWR`` (asm-generic/ioctl.h): dir 3 << 30 | size << 16 | type << 8 | nr."""
    return (3 << 30) | (size << 16) | (kind << 8) | nr


NSM_IOCTL_REQUEST = _iowr(_NSM_IOCTL_MAGIC, 0, ctypes.sizeof(NsmMessage))

Ioctl = Callable[[int, int, Any, bool], Any]


def attestation_request(
    user_data: bytes | None, nonce: bytes | None = None, public_key: bytes | None = None
) -> bytes:
    """The CBOR ``Attestation`` request, as serde_cbor encodes ``Request::Attestation``."""
    body = {"user_data": user_data, "nonce": nonce, "public_key": public_key}
    return cbor2.dumps({"Attestation": body})


class NitroProvider:
    """Attestation documents from the NSM; ``ioctl`` is :func:`fcntl.ioctl` (tests pass a
    fake speaking the same structure)."""

    def __init__(self, device: str = DEFAULT_NSM_DEVICE, *, ioctl: Ioctl | None = None) -> None:
        self.device = device
        self._ioctl: Ioctl = ioctl or fcntl.ioctl

    @property
    def name(self) -> str:
        return "nitro"

    def _exchange(self, request: bytes) -> bytes:
        if len(request) > NSM_REQUEST_MAX_SIZE:
            raise QuoteProviderError("nsm: request too large")
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        msg = NsmMessage(
            NsmIovec(ctypes.addressof(req), len(request)),
            NsmIovec(ctypes.addressof(resp), NSM_RESPONSE_MAX_SIZE),
        )
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise QuoteProviderError(f"nsm: cannot open {self.device}: {e}") from e
        try:
            self._ioctl(fd, NSM_IOCTL_REQUEST, msg, True)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise QuoteProviderError("nsm: request too large for the device") from e
            raise QuoteProviderError(f"nsm: ioctl failed: {e}") from e
        finally:
            os.close(fd)
        n = msg.response.len
        if not 0 < n <= NSM_RESPONSE_MAX_SIZE:
            raise QuoteProviderError(f"nsm: response of {n} bytes")
        return resp.raw[:n]

    def get_quote(self, report_data: bytes) -> bytes:
        check_report_data(report_data)
        raw = self._exchange(attestation_request(report_data))
        try:
            answer = cbor2.loads(raw, max_depth=4)
        except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
            raise QuoteProviderError(f"nsm: malformed response: {e}") from e
        if isinstance(answer, dict) and "Error" in answer:
            raise QuoteProviderError(f"nsm: device answered error {str(answer['Error'])[:40]}")
        doc = answer.get("Attestation") if isinstance(answer, dict) else None
        document = doc.get("document") if isinstance(doc, dict) else None
        if type(document) is not bytes or not looks_like_cose_sign1(document):
            raise QuoteProviderError("nsm: response holds no COSE_Sign1 attestation document")
        if len(document) > MAX_DOCUMENT_SIZE:
            raise QuoteProviderError("nsm: attestation document too large")
        return document
