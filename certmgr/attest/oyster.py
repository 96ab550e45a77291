"""A client of Marlin Oyster's attestation server: fetch an enclave's Nitro document, judge it.

Interface (marlinprotocol/oyster-monorepo ``attestation/server/README.md`` and
``attestation/server-custom/README.md``): plain HTTP (the document authenticates itself),
port 1300 by default (oyster-cvm's ``DEFAULT_ATTESTATION_PORT``), ``GET /attestation/raw``
(the COSE_Sign1 bytes, ``application/octet-stream``) or ``GET /attestation/hex`` (the same,
hex encoded, ``text/plain``). The *custom* server puts the query parameters ``public_key``,
``user_data`` and ``nonce`` (hex without ``0x``) into the document; the public server takes
its public key (the enclave's ``/app/id.pub``) and user data from files and ignores them.
Either way the document must carry exactly the values asked for, and :func:`verify_oyster`
requires that. Oyster's own verifier also reports an ``image_id``: SHA-256 of the big-endian
u32 bit set of PCRs 0, 1, 2 and 16 followed by those four PCRs (PCR16 zero when absent);
it is reported here as ``oyster_image_id``.

Pure except :func:`fetch_oyster`, the one function that does I/O (blocking ``http.client``;
the answer is size-capped before decoding).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from certmgr.attest.nitro import MAX_DOCUMENT_SIZE, NitroDocument, parse_nitro_document
from certmgr.attest.verify import (
    Failure,
    Reason,
    Verdict,
    VerifyOptions,
    merge_failures,
    verify_quote_verdict,
)
from certmgr.errors import QuoteError, VerifyError

__all__ = [
    "DEFAULT_OYSTER_PORT",
    "decode_oyster_body",
    "fetch_oyster",
    "oyster_image_id",
    "oyster_target",
    "verify_oyster",
]

DEFAULT_OYSTER_PORT = 1300
_IMAGE_ID_PCRS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 16)


def oyster_target(
    encoding: str = "raw",
    *,
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
) -> str:
    """The request target: ``/attestation/{raw,hex}`` with the parameters given."""
    if encoding not in ("raw", "hex"):
        raise VerifyError("Oyster encoding must be raw or hex")
    params = [
        (name, value.hex())
        for name, value in (("public_key", public_key), ("user_data", user_data), ("nonce", nonce))
        if value is not None
    ]
    return f"/attestation/{encoding}" + (f"?{urlencode(params)}" if params else "")


def decode_oyster_body(body: bytes, encoding: str) -> bytes:
    """The document bytes of an answer (``hex``: hex text, whitespace around allowed)."""
    limit = MAX_DOCUMENT_SIZE * (2 if encoding == "hex" else 1) + 2
    if len(body) > limit:
        raise VerifyError("Oyster answer too large")
    if encoding == "raw":
        return body
    try:
        return bytes.fromhex(body.decode("ascii").strip().removeprefix("0x"))
    except (UnicodeDecodeError, ValueError) as e:
        raise VerifyError(f"Oyster hex answer is not hex: {e}") from e


def fetch_oyster(url: str, target: str, *, timeout: float = 10.0) -> bytes:
    """GET ``target`` from ``url`` (``http://HOST[:PORT]``); blocking; the body, capped."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise VerifyError("expected http://HOST[:PORT] (the Oyster attestation server)")
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port or DEFAULT_OYSTER_PORT, timeout=timeout
    )
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read(2 * MAX_DOCUMENT_SIZE + 3)
    except (OSError, http.client.HTTPException) as e:
        raise VerifyError(f"{url}: {e}") from e
    finally:
        conn.close()
    if resp.status != 200:
        raise VerifyError(f"{url}{target}: HTTP {resp.status}")
    return body


def oyster_image_id(doc: NitroDocument) -> bytes:
    """Oyster's ``image_id`` of a document (module docstring)."""
    pcrs = [doc.pcrs[0], doc.pcrs[1], doc.pcrs[2], doc.pcrs.get(16, bytes(48))]
    return hashlib.sha256(_IMAGE_ID_PCRS.to_bytes(4, "big") + b"".join(pcrs)).digest()


def _expect(name: str, got: bytes | None, want: bytes | None, reason: Reason) -> list[Failure]:
    if want is None:
        return []
    if got is None or not hmac.compare_digest(got, want):
        return [Failure(reason, f"the document's {name} is not the one asked for")]
    return []


def verify_oyster(
    raw: bytes,
    opts: VerifyOptions,
    *,
    now: float | None = None,
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
) -> Verdict:
    """Verify an Oyster enclave's document: genuine (AWS root, signature, time, debug,
    measurement policy) and carrying exactly the ``public_key``, ``user_data`` and ``nonce``
    given (any of them; None means not checked)."""
    now = time.time() if now is None else now
    v = verify_quote_verdict(raw, None, opts, now=int(now))
    try:
        doc = parse_nitro_document(raw)
    except QuoteError:
        return v  # the verdict already says quote-malformed
    if v.tee != "nitro":
        return merge_failures(v, [Failure(Reason.TEE_TYPE, "not a Nitro attestation document")])
    fails = [
        *_expect("public_key", doc.public_key, public_key, Reason.PUBLIC_KEY),
        *_expect("user_data", doc.user_data, user_data, Reason.REPORT_DATA),
        *_expect("nonce", doc.nonce, nonce, Reason.NONCE),
    ]
    extra: dict[str, Any] = {"oyster_image_id": oyster_image_id(doc).hex()}
    out = merge_failures(v, fails, **extra)
    bound = any(x is not None for x in (public_key, user_data, nonce))
    return Verdict(
        tee=out.tee,
        status=out.status,
        advisories=out.advisories,
        binding=bound and not fails,
        measurement=out.measurement,
        failures=out.failures,
        simulated=False,
        details=out.details,
        signing_address=None,
    )
