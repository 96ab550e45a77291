"""``teeproxy receipt verify``: check a signed receipt against the exact bodies (client side).

Wraps :func:`certmgr.receipts.verify.verify_receipt` (docs/RECEIPTS.md "Verifying off chain"): the
SHA-256 of the request and response bodies are recomputed here from the files (a hash
carried by the receipt is never trusted), then the measurement id, the signature (ecrecover
rules, EIP-2 low ``s``) and the signer are checked.

Where the expected signer comes from decides what a valid receipt proves:

- ``--attest https://HOST[:PORT]`` (the strong form): the proxy's RA-TLS certificate and
  fresh evidence are verified first, exactly as ``teeproxy verify`` does with the same trust
  options (:func:`proxy.cli.attest.attest`); the attestation must be trusted and name a
  signing address. That address and the attested measurement id become the expectations.
- ``--signer 0xADDR``: the caller vouches for the address (for example one registered on
  chain); ``--measurement`` then adds the measurement check, without it the receipt's
  measurement id is not judged.

Exit codes: 0 valid; 1 not valid (the reason is printed: a :class:`ReceiptError` message, or
why the attestation is not trusted); 2 usage or input error (unreadable or oversized file,
malformed option, unreachable host).

Bodies are read whole, up to ``--max-body-bytes`` (default 256 MiB) each, because the
library checks bytes; a larger body is an input error, not a silent truncation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from certmgr.errors import ReceiptError
from proxy.cli.attest import add_attest_options, attest
from proxy.errors import UsageError

__all__ = ["DEFAULT_MAX_BODY", "add_parsers", "cmd_receipt_verify"]

DEFAULT_MAX_BODY = 256 * 1024 * 1024
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
_MEASUREMENT = re.compile(r"0x[0-9a-fA-F]{64}", re.ASCII)


def _read_prefix(path: str, size: int, what: str) -> bytes:
    """At most ``size`` bytes of the file (never more in memory)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(size)
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from e


def _read_capped(path: str, cap: int, what: str) -> bytes:
    data = _read_prefix(path, cap + 1, what)
    if len(data) > cap:
        raise UsageError(f"{what} {path} is larger than {cap} bytes (--max-body-bytes)")
    return data


def _hex_arg(value: str | None, pattern: re.Pattern[str], name: str) -> bytes | None:
    if value is None:
        return None
    if pattern.fullmatch(value) is None:
        digits = 40 if pattern is _ADDRESS else 64
        raise UsageError(f"{name} must be 0x followed by {digits} hex digits")
    return bytes.fromhex(value[2:])


def _show(b: bytes | None) -> str | None:
    return "0x" + b.hex() if b is not None else None


def _result(out: dict[str, Any], as_json: bool, valid: bool, reason: str | None = None) -> int:
    out["valid"] = valid
    out["reason"] = reason
    if as_json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print("receipt:  VALID" if valid else f"receipt:  INVALID: {reason}")
        receipt = out.get("receipt")
        if isinstance(receipt, dict):
            for label, key in (
                ("signer", "signer"),
                ("measurement", "measurementId"),
                ("model", "model"),
                ("response", "responseId"),
                ("timestamp", "timestamp"),
            ):
                print(f"{label + ':':<13} {receipt[key]}")
        print(f"{'expected:':<13} signer {out['expected_signer']} ({out['signer_source']})")
        if out.get("attestation", {}).get("simulated"):
            print("WARNING: SIMULATED attestation (no TEE): trusted only because you named the key")
    return 0 if valid else 1


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    from certmgr.receipts.format import MAX_JSON_BYTES, Receipt  # noqa: PLC0415 - eth stack: slow import
    from certmgr.receipts.verify import verify_receipt  # noqa: PLC0415 - eth stack: slow import

    try:
        signer = _hex_arg(args.signer, _ADDRESS, "--signer")
        measurement = _hex_arg(args.measurement, _MEASUREMENT, "--measurement")
        if args.max_body_bytes < 0:
            raise UsageError("--max-body-bytes must be >= 0")
        request = _read_capped(args.request, args.max_body_bytes, "request body")
        response = _read_capped(args.response, args.max_body_bytes, "response body")
        # One byte over the format's cap, so that Receipt.from_json refuses an oversized
        # receipt as malformed (exit 1) without reading all of it.
        receipt_json = (
            _read_prefix(args.receipt, MAX_JSON_BYTES + 1, "receipt")
            if args.receipt is not None
            else None
        )
    except UsageError as e:
        print(f"teeproxy receipt verify: {e}", file=sys.stderr)
        return 2

    out: dict[str, Any] = {
        "receipt": None,
        "expected_signer": _show(signer),
        "expected_measurement": _show(measurement),
        "signer_source": "attestation" if args.url else "command line",
    }
    try:
        receipt = (
            Receipt.from_json(receipt_json)
            if receipt_json is not None
            else Receipt.from_header(args.receipt_header)
        )
    except ReceiptError as e:
        return _result(out, args.json, False, f"malformed receipt: {e}")
    out["receipt"] = receipt.to_dict()

    if args.url:
        try:
            attested = attest(args)
        except UsageError as e:
            print(f"teeproxy receipt verify: {e}", file=sys.stderr)
            return 2
        out["attestation"] = attested.report
        if not attested.trusted:
            reasons = [f["reason"] for f in attested.report.get("failures", [])]
            ev = attested.report.get("evidence")
            if isinstance(ev, dict):
                reasons += [f["reason"] for f in ev.get("failures", [])]
            shown = ", ".join(reasons) or "not trusted"
            return _result(out, args.json, False, f"attestation of {args.url} not trusted: {shown}")
        signer = attested.signing_address
        if signer is None:
            return _result(
                out, args.json, False, f"attestation of {args.url} names no signing address"
            )
        attested_mid = attested.measurement_id
        if measurement is not None and attested_mid != measurement:
            return _result(
                out,
                args.json,
                False,
                f"attested measurement {_show(attested_mid)} is not --measurement "
                f"{args.measurement}",
            )
        measurement = attested_mid
        out["expected_signer"] = _show(signer)
        out["expected_measurement"] = _show(measurement)

    try:
        verify_receipt(
            receipt,
            request,
            response,
            expected_signer=signer,
            expected_measurement=measurement,
        )
    except ReceiptError as e:
        return _result(out, args.json, False, str(e))
    return _result(out, args.json, True)


def add_parsers(sub: Any) -> None:
    """Register ``teeproxy receipt ...`` on ``teeproxy``'s subparsers."""

    r = sub.add_parser("receipt", help="signed inference receipts (docs/RECEIPTS.md)")
    rsub = r.add_subparsers(dest="receipt_command", required=True)
    v = rsub.add_parser(
        "verify",
        help="check a receipt against the request and response bodies and the attested signer",
        description="Exit 0 only when the receipt is valid; 1 not valid; 2 input error.",
    )
    v.add_argument("--request", required=True, metavar="FILE", help="the exact request body")
    v.add_argument("--response", required=True, metavar="FILE", help="the exact response body")
    form = v.add_mutually_exclusive_group(required=True)
    form.add_argument("--receipt", metavar="FILE", help="the receipt as JSON (/v1/receipts/ID)")
    form.add_argument("--receipt-header", metavar="VALUE", help="the Teeproxy-Receipt header value")
    who = v.add_mutually_exclusive_group(required=True)
    who.add_argument("--signer", metavar="0xADDR", help="the expected signer's address")
    who.add_argument(
        "--attest",
        dest="url",
        metavar="https://HOST[:PORT]",
        help="verify the proxy's attestation (trust options as for teeproxy verify) and "
        "expect its attested signing address and measurement id",
    )
    v.add_argument("--measurement", metavar="0xID", help="the expected measurement id (bytes32)")
    v.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY,
        metavar="N",
        help=f"refuse bodies larger than this (default {DEFAULT_MAX_BODY})",
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    add_attest_options(v)
    v.set_defaults(func=cmd_receipt_verify)
