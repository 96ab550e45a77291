"""Receipts for the certmgr.receipts tests: one fixed key, request and response.

:func:`make` signs a receipt over ``REQUEST`` / ``RESPONSE`` with ``KEY`` (the
docs/RECEIPTS.md test-vector key) for ``MEASUREMENT``; :func:`verify` checks one against
exactly those expectations; :func:`flip` flips one bit of one byte.
"""

from __future__ import annotations

import hashlib
from typing import Any

from certmgr.eth import eth_import_guard
from certmgr.receipts.format import Domain, Receipt
from certmgr.receipts.signing import sign_receipt
from certmgr.receipts.verify import verify_receipt

with eth_import_guard():
    from eth_account import Account


KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


ACCOUNT = Account.from_key(KEY)


SIGNER = bytes.fromhex(ACCOUNT.address[2:])


OTHER_KEY = b"\x11" * 32


MEASUREMENT = bytes(range(32))


REQUEST = b'{"model":"llama-3","messages":[{"role":"user","content":"hi"}],"stream":false}'


RESPONSE = b'{"id":"chatcmpl-42","model":"llama-3","choices":[{"message":{"content":"hello"}}]}'


def make(
    key: Any = KEY,
    *,
    request: bytes = REQUEST,
    response: bytes = RESPONSE,
    model: str = "llama-3",
    response_id: str = "chatcmpl-42",
    timestamp: int = 1_763_740_800,
    measurement: bytes = MEASUREMENT,
    domain: Domain | None = None,
) -> Receipt:
    kwargs: dict[str, Any] = {} if domain is None else {"domain": domain}
    return sign_receipt(
        key,
        request_sha256=hashlib.sha256(request).digest(),
        response_sha256=hashlib.sha256(response).digest(),
        model=model,
        response_id=response_id,
        timestamp=timestamp,
        measurement_id=measurement,
        **kwargs,
    )


def verify(receipt: Receipt, request: bytes = REQUEST, response: bytes = RESPONSE) -> None:
    verify_receipt(
        receipt,
        request,
        response,
        expected_signer=SIGNER,
        expected_measurement=MEASUREMENT,
    )


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]
