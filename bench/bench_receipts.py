"""Test (f): the latency that signed receipts add per request, on three targets: nginx
(the peer; it cannot sign), teeproxy with receipts off and with receipts on (simulated
attestation provider in both). Each part checks that it measured what it claims: the
receipt headers are on every response of teeproxy-on and on none of the others, and
receipts verify against the exact bytes sent and received.

  (f1) sequential POSTs of a JSON completion on one keep-alive connection per target,
       then the same POST under wrk (req/s, proxy CPU per request)
  (f2) streamed (SSE) completions one after the other; the receipts of the first and the
       last stream fetched from teeproxy-on and verified

plus what one signature costs in this process (signing_cost_ms). Entry: run()."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import statistics
import time
from functools import partial
from pathlib import Path

import clients
import configs
import wrk
from harness import RX_ON, Results, Target, ensure_alive, guarded, log, run_wrk

from certmgr.errors import ReceiptError
from certmgr.receipts.format import Receipt
from certmgr.receipts.signing import SigningKey, sign_receipt
from certmgr.receipts.verify import verify_receipt


def _expects_receipt(target: Target) -> bool:
    return target.name == RX_ON


def f1_posts(target: Target, conn: clients.KeepAlive, count: int) -> clients.PostResult:
    """count sequential signed-route POSTs; the receipt header must be there on every
    response of teeproxy-on and on none of the others (else nothing was measured)."""
    ensure_alive(target)
    res = clients.timed_posts(conn, configs.CHAT_PATH, configs.CHAT_REQUEST.encode(), count)
    expected = count if _expects_receipt(target) else 0
    if res.with_receipt != expected:
        raise RuntimeError(
            f"{res.with_receipt} of {count} responses carried a {clients.RECEIPT_HEADER} "
            f"header, expected {expected}"
        )
    return res


def f2_streams(
    target: Target, conn: clients.KeepAlive, count: int, path: str
) -> list[clients.StreamSample]:
    """count sequential streamed completions; Teeproxy-Receipt-Id on every one of
    teeproxy-on, on none of the others."""
    ensure_alive(target)
    body = configs.STREAM_REQUEST.encode()
    samples = [clients.timed_stream(conn, path, body) for _ in range(count)]
    with_id = sum(s.receipt_id is not None for s in samples)
    expected = count if _expects_receipt(target) else 0
    if with_id != expected:
        raise RuntimeError(
            f"{with_id} of {count} streams carried a {clients.RECEIPT_ID_HEADER} header, "
            f"expected {expected}"
        )
    return samples


def signer_address(target: Target) -> bytes | None:
    """The receipt signer's address teeproxy wrote to STATE_DIR/signing/address."""
    if target.state_dir is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        text = (target.state_dir / "signing" / "address").read_text().strip()
        return bytes.fromhex(text.removeprefix("0x"))
    return None


def check_receipt(
    target: Target, what: str, blob: str | bytes, request: bytes, response: bytes
) -> str:
    """Verify a receipt (header or JSON form) against the exact bodies sent and received,
    and its signer against the address teeproxy published; raises if it does not verify."""

    signer = signer_address(target)
    if signer is None:
        raise RuntimeError(f"{target.name}: no receipt signer address in its state dir")
    try:
        receipt = Receipt.from_header(blob) if isinstance(blob, str) else Receipt.from_json(blob)
        verify_receipt(
            receipt, request, response, expected_signer=signer, expected_measurement=None
        )
    except ReceiptError as exc:
        msg = f"{what} does NOT verify against the bytes sent and received: {exc}"
        raise RuntimeError(msg) from exc
    return (
        f"{what}: verifies against the exact request and response bytes, signed by "
        f"0x{receipt.signer.hex()} (STATE_DIR/signing/address), model {receipt.model!r}, "
        f"responseId {receipt.response_id!r}"
    )


def signing_cost_ms(rounds: int = 5, count: int = 400) -> float:
    """What one receipt costs in isolation (this Python, no proxy, no I/O): sign_receipt
    over (f1)'s bodies plus the Teeproxy-Receipt encoding; median over rounds of the mean."""

    key = SigningKey.from_private_bytes(hashlib.sha256(b"teeproxy bench key").digest())
    req = hashlib.sha256(configs.CHAT_REQUEST.encode()).digest()
    resp = hashlib.sha256(configs.CHAT_RESPONSE.encode()).digest()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(count):
            sign_receipt(
                key,
                request_sha256=req,
                response_sha256=resp,
                model="bench-model",
                response_id="chatcmpl-bench0001",
                timestamp=int(time.time()),
                measurement_id=bytes(32),
            ).to_header()
        per_round.append((time.perf_counter() - t0) * 1000 / count)
    return statistics.median(per_round)


def f1_sequential(rx: list[Target], args: argparse.Namespace, results: Results) -> None:
    """(f1) sequential keep-alive POSTs, rounds over the targets in rotating order."""
    conns = {t.name: clients.KeepAlive(t.port, t.ctx) for t in rx}
    try:
        active = [
            t
            for t in rx
            if guarded(
                results, t.name, "(f1) warm-up", partial(f1_posts, t, conns[t.name], args.rx_warmup)
            )
            is not None
        ]
        per_round = math.ceil(args.rx_requests / args.rx_rounds)
        failed: set[str] = set()
        for rnd in range(args.rx_rounds):
            k = rnd % len(active) if active else 0
            for t in active[k:] + active[:k]:
                if t.name in failed:
                    continue
                r = guarded(
                    results, t.name, "(f1) POST", partial(f1_posts, t, conns[t.name], per_round)
                )
                if r is None:
                    failed.add(t.name)
                    results.rx_posts.pop(t.name, None)
                    results.rx_round_p50.pop(("f1", t.name), None)
                    continue
                results.rx_posts.setdefault(t.name, clients.PostResult()).extend(r)
                results.rx_round_p50.setdefault(("f1", t.name), []).append(
                    clients.percentile(r.latency_ms, 50)
                )
    finally:
        for conn in conns.values():
            conn.close()
    on = results.rx_posts.get(RX_ON)
    target_on = next((t for t in rx if t.name == RX_ON), None)
    if on is not None and target_on is not None and on.receipt is not None:
        note = guarded(
            results,
            RX_ON,
            "(f1) receipt check",
            partial(
                check_receipt,
                target_on,
                f"(f1) {clients.RECEIPT_HEADER} header",
                on.receipt,
                configs.CHAT_REQUEST.encode(),
                on.response,
            ),
        )
        if note is not None:
            results.rx_checks.append(note)
    for name, res in results.rx_posts.items():
        results.rx_checks.append(
            f"(f1) {name}: {res.with_receipt} of {len(res.latency_ms):,} measured responses "
            f"carried {clients.RECEIPT_HEADER}"
        )


def f2_streaming(rx: list[Target], args: argparse.Namespace, results: Results) -> None:
    """(f2) sequential streamed completions, rounds over the targets in rotating order;
    then the receipts of the first and the last stream fetched from teeproxy-on."""
    path = f"{configs.STREAM_PATH}?events={args.rx_events}&interval={args.rx_interval:g}"
    conns = {t.name: clients.KeepAlive(t.port, t.ctx) for t in rx}
    try:
        active = [
            t
            for t in rx
            if guarded(
                results, t.name, "(f2) warm-up", partial(f2_streams, t, conns[t.name], 3, path)
            )
            is not None
        ]
        per_round = math.ceil(args.rx_streams / args.rx_rounds)
        failed: set[str] = set()
        for rnd in range(args.rx_rounds):
            k = rnd % len(active) if active else 0
            for t in active[k:] + active[:k]:
                if t.name in failed:
                    continue
                samples = guarded(
                    results,
                    t.name,
                    "(f2) streams",
                    partial(f2_streams, t, conns[t.name], per_round, path),
                )
                if samples is None:
                    failed.add(t.name)
                    results.rx_streams.pop(t.name, None)
                    results.rx_round_p50.pop(("f2", t.name), None)
                    continue
                results.rx_streams.setdefault(t.name, clients.StreamResult()).samples += samples
                results.rx_round_p50.setdefault(("f2", t.name), []).append(
                    clients.percentile([x.after_sent_ms for x in samples], 50)
                )
        on = results.rx_streams.get(RX_ON)
        target_on = next((t for t in rx if t.name == RX_ON), None)
        if on is not None and target_on is not None and on.samples:
            for label, sample in (("first", on.samples[0]), ("last", on.samples[-1])):
                note = guarded(
                    results,
                    RX_ON,
                    "(f2) receipt fetch",
                    partial(fetch_stream_receipt, target_on, conns[RX_ON], label, sample),
                )
                if note is not None:
                    results.rx_checks.append(note)
    finally:
        for conn in conns.values():
            conn.close()
    for name, res in results.rx_streams.items():
        with_id = sum(s.receipt_id is not None for s in res.samples)
        results.rx_checks.append(
            f"(f2) {name}: {with_id} of {len(res.samples):,} measured streams carried "
            f"{clients.RECEIPT_ID_HEADER}"
        )


def fetch_stream_receipt(
    target: Target, conn: clients.KeepAlive, label: str, sample: clients.StreamSample
) -> str:
    assert sample.receipt_id is not None  # noqa: S101 - f2_streams checked
    path = f"/v1/receipts/{sample.receipt_id}"
    status, blob = conn.get(path)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {blob[:200]!r}")
    return check_receipt(
        target,
        f"(f2) GET /v1/receipts/{{id}} of the {label} stream: HTTP 200, the receipt",
        blob,
        configs.STREAM_REQUEST.encode(),
        sample.body,
    )


def f1_wrk(rx: list[Target], args: argparse.Namespace, results: Results, tmp: Path) -> None:
    """(f1) under wrk: the same POST through a Lua script written into tmp."""
    script = tmp / "post.lua"
    script.write_text(wrk.post_script(configs.CHAT_REQUEST))
    # Only targets that passed the header checks of f1_sequential (a teeproxy-on that did
    # not sign would be measured as if it did).
    for t in (t for t in rx if t.name in results.rx_posts):
        log(f"(f1) wrk POST {configs.CHAT_PATH} -> {t.name}")
        r = guarded(
            results,
            t.name,
            "(f1) wrk",
            partial(run_wrk, t, configs.CHAT_PATH, args, (), script),
        )
        if r is not None:
            results.wrk[("f", t.name)] = r
            log(
                f"    {r.requests_per_s:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                f"p99 {r.p99_ms:.2f} ms, CPU {r.cpu_ms_per_request:.3f} ms/request, "
                f"errors {r.error_count}"
            )


def run(rx: list[Target], args: argparse.Namespace, results: Results, tmp: Path) -> None:
    """All of (f) on the targets rx (nginx, teeproxy-off, teeproxy-on: those that
    started), into results.rx_* and results.wrk[("f", target)]; tmp takes wrk's Lua script."""
    log(f"(f1) {args.rx_requests} sequential POST {configs.CHAT_PATH} per target")
    results.rx_sign_ms = guarded(results, "setup", "(f) signing cost", signing_cost_ms)
    sign_ms = "n/a" if results.rx_sign_ms is None else f"{results.rx_sign_ms:,.3f}"
    log(f"(f) one receipt signature in process: {sign_ms} ms")
    f1_sequential(rx, args, results)
    for name, post in results.rx_posts.items():
        log(
            f"    {name}: p50 {clients.percentile(post.latency_ms, 50):.3f} ms, "
            f"p99 {clients.percentile(post.latency_ms, 99):.3f} ms"
        )
    f1_wrk(rx, args, results, tmp)
    log(
        f"(f2) {args.rx_streams} streams x {args.rx_events} events per target "
        f"({configs.STREAM_PATH})"
    )
    f2_streaming(rx, args, results)
    for name, st in results.rx_streams.items():
        log(
            f"    {name}: end after last event sent p50 "
            f"{clients.percentile(st.values('after_sent_ms'), 50):.3f} ms"
        )
