"""The Markdown report (bench/RESULTS.md): render() turns the Results of a run into the
summary table against the targets, the raw numbers of every test, the signed-receipts
section of (f), errors and notes; the _-prefixed helpers format its cells."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shlex
import statistics
import sys

import bench_llm
import clients
import configs
from harness import PROXIES, REPO, RX_OFF, RX_ON, RX_TARGETS, Results

TARGETS = {
    "a": ("req/s ratio", ">= 0.3 of nginx (stretch 0.5)"),
    "b": ("req/s ratio", ">= 0.7 of nginx"),
    "c": ("MiB/s ratio", ">= 0.8 of nginx"),
    "d": ("added p99 delay", "<= 2 ms"),
    "e": ("KiB per idle stream", "<= 40 KiB"),
    "f": ("latency signing adds per request", "reported, no target"),
    "g": ("LLM load: CPU per event, added p99 delay and TTFB", ">= 0.8, <= 2 ms, <= 10 ms"),
}


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0 or math.isnan(num) or math.isnan(den):
        return None
    return num / den


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**NOT met**")


def _rx_value(results: Results, name: str, metric: str) -> float | None:
    """One (f) number of one target; None when it was not measured."""
    kind, _, stat = metric.partition(":")
    if kind == "seq":
        post = results.rx_posts.get(name)
        if post is None or not post.latency_ms:
            return None
        if stat == "mean":
            return statistics.fmean(post.latency_ms)
        return clients.percentile(post.latency_ms, float(stat))
    if kind == "wrk":
        r = results.wrk.get(("f", name))
        return None if r is None else float(getattr(r, stat))
    attr, _, pct = stat.partition("@")
    stream = results.rx_streams.get(name)
    if stream is None or not stream.samples:
        return None
    return clients.percentile(stream.values(attr), float(pct))


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _nginx_on_off(results: Results, metric: str) -> tuple[float | None, ...]:
    """``metric`` of (f) for nginx, teeproxy with receipts on, and with receipts off."""
    return tuple(_rx_value(results, name, metric) for name in ("nginx", RX_ON, RX_OFF))


def _round_cell(added: list[float], digits: int = 3) -> str:
    if not added:
        return "n/a"
    return (
        f"{statistics.median(added):.{digits}f} ({min(added):.{digits}f} to "
        f"{max(added):.{digits}f})"
    )


def _receipt_summary_rows(results: Results) -> list[str]:
    rows = [
        f"| (f) one receipt signature, in process | ms | | {_fmt(results.rx_sign_ms, 3)} | | | |"
    ]
    seq = "(f1) signed JSON POST, 1 connection"
    n, on, off = _nginx_on_off(results, "seq:50")
    rows.append(
        f"| {seq} | p50 latency ms (teeproxy: receipts on) | {_fmt(n, 3)} | {_fmt(on, 3)} | "
        f"{_fmt(_ratio(on, n), 2)} | | |"
    )
    rows.append(
        f"| {seq} | **p50 latency signing adds ms** (receipts on - off) | | "
        f"{_fmt(_diff(on, off), 3)} | | reported | |"
    )
    _, on99, off99 = _nginx_on_off(results, "seq:99")
    rows.append(
        f"| {seq} | p99 latency signing adds ms (receipts on - off) | | "
        f"{_fmt(_diff(on99, off99), 3)} | | | |"
    )
    n, on, off = _nginx_on_off(results, "wrk:requests_per_s")
    rows.append(
        f"| (f1) signed JSON POST, wrk | req/s (teeproxy: receipts on; off: {_fmt(off, 0)}) | "
        f"{_fmt(n, 0)} | {_fmt(on, 0)} | {_fmt(_ratio(on, n), 2)} | | |"
    )
    _, on, off = _nginx_on_off(results, "wrk:cpu_ms_per_request")
    rows.append(
        f"| (f1) signed JSON POST, wrk | CPU ms per request signing adds (on - off) | | "
        f"{_fmt(_diff(on, off), 3)} | | | |"
    )
    _, on, off = _nginx_on_off(results, "stream:after_sent_ms@50")
    rows.append(
        f"| (f2) signed SSE stream | **p50 delay signing adds at the end of a stream ms** "
        f"(on - off) | | {_fmt(_diff(on, off), 3)} | | reported | |"
    )
    return rows


def _receipt_section(results: Results, args: argparse.Namespace) -> list[str]:
    names = list(RX_TARGETS)
    out = [
        "",
        "### Signed receipts (f)",
        "",
        f"Three targets on the same backend and certificate, {args.workers} worker(s) each: "
        f"`nginx` (cannot sign), `{RX_OFF}` and `{RX_ON}`: teeproxy with "
        '`[attestation] provider = "simulated"` (development quotes: no TEE here) and '
        "`[receipts] enabled = false` / `true`, so only signing differs. "
        f"(f1) `POST {configs.CHAT_PATH}` with a {len(configs.CHAT_REQUEST)}-byte JSON body; "
        f"the backend nginx answers a {len(configs.CHAT_RESPONSE)}-byte JSON completion "
        f"(with Content-Length, so `{RX_ON}` holds it back, hashes and signs it and sends "
        f"`{clients.RECEIPT_HEADER}`). Sequential = one keep-alive TLS connection, one "
        "request at a time, latency from the request's first byte written to the response's "
        "last byte read (Python http.client); wrk = the same POST (Lua script), "
        f"-t{args.threads} -c{args.connections}. (f2) `POST {configs.STREAM_PATH}`: an "
        f"SSE completion of {args.rx_events} data events every {args.rx_interval:g} s plus "
        "`data: [DONE]` from sse_server.py (through the backend nginx), read line by line "
        f"on one keep-alive connection; `{RX_ON}` signs and stores the receipt before "
        "it writes the end of the response. Rounds rotate the order of the targets; "
        "samples are pooled.",
        "",
        f"| metric | nginx | {RX_OFF} | {RX_ON} | on - off | on / off | on / nginx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows: list[tuple[str, str, int]] = [
        ("(f1) sequential p50 ms", "seq:50", 3),
        ("(f1) sequential p90 ms", "seq:90", 3),
        ("(f1) sequential p99 ms", "seq:99", 3),
        ("(f1) sequential mean ms", "seq:mean", 3),
        ("(f1) wrk req/s", "wrk:requests_per_s", 0),
        ("(f1) wrk p50 ms", "wrk:p50_ms", 2),
        ("(f1) wrk p99 ms", "wrk:p99_ms", 2),
        ("(f1) wrk proxy CPU ms/request", "wrk:cpu_ms_per_request", 3),
        ("(f1) wrk proxy CPU (cores)", "wrk:cpu_utilisation", 2),
        (
            "(f2) end of response after the backend wrote the last event, p50 ms",
            "stream:after_sent_ms@50",
            3,
        ),
        (
            "(f2) end of response after the backend wrote the last event, p99 ms",
            "stream:after_sent_ms@99",
            3,
        ),
        ("(f2) end of response after the last event was read, p50 ms", "stream:tail_ms@50", 3),
        ("(f2) end of response after the last event was read, p99 ms", "stream:tail_ms@99", 3),
        ("(f2) whole stream (request to end), p50 ms", "stream:total_ms@50", 2),
        ("(f2) whole stream (request to end), p99 ms", "stream:total_ms@99", 2),
    ]
    for label, metric, digits in rows:
        n, off, on = (_rx_value(results, name, metric) for name in names)
        out.append(
            f"| {label} | {_fmt(n, digits)} | {_fmt(off, digits)} | {_fmt(on, digits)} | "
            f"{_fmt(_diff(on, off), max(digits, 2))} | {_fmt(_ratio(on, off), 2)} | "
            f"{_fmt(_ratio(on, n), 2)} |"
        )
    out += [
        "",
        "One receipt in isolation (this Python process, no proxy, no I/O: `sign_receipt` over "
        "the (f1) body hashes + the `Teeproxy-Receipt` encoding, median of 5 x 400): "
        f"**{_fmt(results.rx_sign_ms, 3)} ms**. The on - off differences above should be "
        "close to it (plus hashing and parsing the body); much more means scheduling noise.",
    ]
    counts = {name: len(results.rx_posts[name].latency_ms) for name in results.rx_posts}
    streams = {name: len(results.rx_streams[name].samples) for name in results.rx_streams}
    out += [
        "",
        f"Samples: (f1) {', '.join(f'{k} {v:,}' for k, v in counts.items()) or 'none'}; "
        f"(f2) {', '.join(f'{k} {v:,}' for k, v in streams.items()) or 'none'}.",
    ]
    if args.rx_rounds > 1:
        out += [
            "",
            f"Per round (median and range over {args.rx_rounds} rounds, robust against one "
            "disturbed round): p50 latency signing adds (f1) "
            f"{_round_cell(results.rx_round_added('f1'))} ms; p50 delay at the end of a "
            f"stream signing adds (f2) {_round_cell(results.rx_round_added('f2'))} ms.",
        ]
    out += [
        "",
        "(f2) columns: *after the backend wrote the last event* = the client's clock at the "
        "end of the response - the time sse_server.py put into the last data event just "
        "before writing it (same machine, same clock): what the proxies add between the "
        "last token and the end of the stream, independent of how the last chunks were "
        "coalesced on the way; *after the last event was read* = the client's own gap "
        "between reading the last data event and the end of the response.",
    ]
    if results.rx_checks:
        out += ["", "Checks (a bench that measured no signing fails instead):", ""]
        out += [f"- {c}" for c in results.rx_checks]
    return out


def _llm_summary_rows(results: Results, args: argparse.Namespace) -> list[str]:
    """(g) at --llm-streams: CPU efficiency, added delay and TTFB, streams sustained."""
    n = args.llm_streams
    label = f"(g) LLM {n} streams x {args.llm_rate:g}/s"
    rows: list[str] = []

    def cpu(target: str) -> float | None:
        r = results.llm.get((n, target))
        return r.cpu_us_per_event if r is not None else None

    ngx = cpu("nginx")
    for target, tag in (("teeproxy-off", "receipts off"), ("teeproxy-on", "receipts on")):
        tee = cpu(target)
        eff = _ratio(ngx, tee)  # nginx's CPU per event / teeproxy's: 1.0 = as efficient
        rows.append(
            f"| {label} | CPU us per event, {tag} (ratio: nginx/teeproxy) | {_fmt(ngx, 1)} | "
            f"{_fmt(tee, 1)} | {_fmt(eff, 2)} | >= 0.8 | "
            f"{_status(None if eff is None else eff >= 0.8)} |"
        )
    ngx_split = bench_llm.cpu_split(results, "nginx", n)
    for target, tag in (("teeproxy-off", "receipts off"), ("teeproxy-on", "receipts on")):
        tee_split = bench_llm.cpu_split(results, target, n)
        if ngx_split is None or tee_split is None:
            continue
        rows.append(
            f"| {label} | of that: CPU ms per stream (connection, handshake, request), {tag} "
            f"(ratio) | {_fmt(ngx_split.stream_ms, 3)} | {_fmt(tee_split.stream_ms, 3)} | "
            f"{_fmt(_ratio(ngx_split.stream_ms, tee_split.stream_ms), 2)} | reported | |"
        )
        rows.append(
            f"| {label} | of that: CPU us per further event, {tag} (ratio) | "
            f"{_fmt(ngx_split.event_us, 1)} | {_fmt(tee_split.event_us, 1)} | "
            f"{_fmt(_ratio(ngx_split.event_us, tee_split.event_us), 2)} | reported | |"
        )
    for metric, what, bound_off, bound_on in (
        ("delay_ms", "added p99 delay ms", args.llm_bound, args.llm_bound + 1.0),
        ("ttfb_ms", "added p99 time to first byte ms", 10.0, 10.0),
    ):
        ngx_v = bench_llm.added(results, n, "nginx", metric, "p99")
        for target, tag, bound in (
            ("teeproxy-off", "receipts off", bound_off),
            ("teeproxy-on", "receipts on", bound_on),
        ):
            tee_v = bench_llm.added(results, n, target, metric, "p99")
            rows.append(
                f"| {label} | {what}, {tag} | {_fmt(ngx_v, 2)} | {_fmt(tee_v, 2)} | | "
                f"<= {bound:g} ms | {_status(None if tee_v is None else tee_v <= bound)} |"
            )
    if args.llm_scale:
        cells = []
        for target in ("nginx", "teeproxy-off", "teeproxy-on"):
            best = bench_llm.sustained(results, target, args.llm_bound)
            cells.append(f"{target} {best if best is not None else 'none'}")
        rows.append(
            f"| (g) LLM scaling | streams sustained with added p99 <= {args.llm_bound:g} ms "
            f"| {cells[0]} | {cells[1]}, {cells[2]} | | reported | |"
        )
    return rows


def _llm_section(results: Results, args: argparse.Namespace) -> list[str]:
    out = ["", "### LLM-shaped load (g)", ""]
    out += [
        f"{args.llm_events} events per stream at {args.llm_rate:g} events/s, stream starts "
        f"spread over {args.llm_spread:g} s, chat.completion.chunk events of about 210 bytes "
        "(`bench/llm_client.py` in its own process). Added = the target's percentile minus "
        "`direct`'s at the same number of streams. CPU = the proxy's whole process tree; "
        "top = of that, the share of the top process (nginx master, teeproxy supervisor): "
        "what the supervisor costs under load.",
        "",
        "| streams | target | events | failures | delay p50 ms | delay p99 ms | "
        "added p99 ms | TTFB p50 ms | TTFB p99 ms | added TTFB p99 ms | CPU us/event | top % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, target), r in sorted(results.llm.items()):
        add = bench_llm.added(results, n, target, "delay_ms", "p99")
        add_t = bench_llm.added(results, n, target, "ttfb_ms", "p99")
        out.append(
            f"| {n} | {target} | {r.events:,}/{r.events_expected:,} | {r.failures} | "
            f"{_fmt(r.delay_ms['p50'], 2)} | {_fmt(r.delay_ms['p99'], 2)} | "
            f"{'' if target == 'direct' else _fmt(add, 2)} | {_fmt(r.ttfb_ms['p50'], 2)} | "
            f"{_fmt(r.ttfb_ms['p99'], 2)} | {'' if target == 'direct' else _fmt(add_t, 2)} | "
            f"{'' if target == 'direct' else _fmt(r.cpu_us_per_event, 1)} | "
            f"{'' if target == 'direct' or not r.cpu_s else _fmt(100 * r.top_cpu_s / r.cpu_s, 1)} |"
        )
        if r.first_failures:
            out.append(f"|  | failures: {'; '.join(r.first_failures[:3])} | | | | | | | | | | |")
    out += _llm_split_section(results, args)
    return out


def _llm_split_section(results: Results, args: argparse.Namespace) -> list[str]:
    """Per stream and per further event, user and system CPU (bench_llm.cpu_split)."""
    n = args.llm_streams
    rows = []
    for target in bench_llm.LLM_TARGETS:
        sp = bench_llm.cpu_split(results, target, n)
        one = results.llm_one.get(target)
        if sp is None or one is None:
            continue
        rows.append(
            f"| {target} | {one.events:,}/{one.events_expected:,} | "
            f"{_fmt(sp.stream_user_ms, 3)} | {_fmt(sp.stream_sys_ms, 3)} | "
            f"{_fmt(sp.stream_ms, 3)} | {_fmt(sp.event_user_us, 1)} | "
            f"{_fmt(sp.event_sys_us, 1)} | {_fmt(sp.event_us, 1)} |"
        )
    if not rows:
        return []
    return [
        "",
        f"Where the CPU goes at {n} streams: one more run per proxy with one event per stream "
        "(connect, TLS handshake, request, response head, one event, close) gives the CPU per "
        f"stream; (CPU of the {args.llm_events}-event run - that) / "
        f"({n} x {args.llm_events - 1}) is the CPU of each further event relayed. User = "
        "the proxy's own code (and OpenSSL), system = the kernel (socket reads and writes; "
        "on loopback a write also runs the peer's TCP receive).",
        "",
        "| target | one-event run events | per stream user ms | per stream system ms | "
        "per stream ms | per further event user us | per further event system us | "
        "per further event us |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def render(results: Results, args: argparse.Namespace, env: list[tuple[str, str]]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    cmd = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv])
    w = results.wrk
    out: list[str] = [
        "# teeproxy vs nginx benchmark results",
        "",
        f"- date: {now}",
        *(f"- {k}: {v}" for k, v in env),
        f"- command: `{cmd}`",
        f"- settings: workers={args.workers} per proxy, backend nginx workers="
        f"{args.backend_workers}, wrk -t{args.threads} -c{args.connections} "
        f"-d{round(args.duration)}s, SSE {args.sse_rounds} rounds x "
        f"{args.sse_streams} streams x {args.sse_events} events at {args.sse_rate:g}/s, "
        f"{args.idle_streams} idle streams, nginx TLS session tickets {args.nginx_resumption}, "
        f"niceness {os.getpriority(os.PRIO_PROCESS, 0)}"
        + (
            f"; (f) {args.rx_requests} sequential POSTs (+{args.rx_warmup} warm-up) and "
            f"{args.rx_streams} streams x {args.rx_events} events every {args.rx_interval:g} s "
            f"per target, in {args.rx_rounds} rounds"
            if "f" in args.tests
            else ""
        ),
        "",
        "## Summary",
        "",
        "| test | metric | nginx | teeproxy | teeproxy/nginx | target | status |",
        "|---|---|---:|---:|---:|---|---|",
    ]

    def wrk_val(test: str, target: str, attr: str) -> float | None:
        r = w.get((test, target))
        return getattr(r, attr) if r is not None else None

    # (a)
    for attr, label, digits in (
        ("requests_per_s", "req/s", 0),
        ("p50_ms", "p50 latency ms", 2),
        ("p99_ms", "p99 latency ms", 2),
    ):
        n, t = wrk_val("a", "nginx", attr), wrk_val("a", "teeproxy", attr)
        r = _ratio(t, n)
        target_s, status = "", ""
        if attr == "requests_per_s":
            target_s, status = ">= 0.3 (0.5)", _status(None if r is None else r >= 0.3)
        out.append(
            f"| (a) small, keep-alive TLS | {label} | {_fmt(n, digits)} | {_fmt(t, digits)} | "
            f"{_fmt(r, 2)} | {target_s} | {status} |"
        )
    # (b)
    n, t = wrk_val("b", "nginx", "requests_per_s"), wrk_val("b", "teeproxy", "requests_per_s")
    r = _ratio(t, n)
    out.append(
        f"| (b) new TLS handshake per request | req/s | {_fmt(n, 0)} | {_fmt(t, 0)} | "
        f"{_fmt(r, 2)} | >= 0.7 | {_status(None if r is None else r >= 0.7)} |"
    )
    # (c)
    n, t = wrk_val("c", "nginx", "transfer_mib_s"), wrk_val("c", "teeproxy", "transfer_mib_s")
    r = _ratio(t, n)
    out.append(
        f"| (c) 1 MiB responses | MiB/s | {_fmt(n, 0)} | {_fmt(t, 0)} | {_fmt(r, 2)} | "
        f">= 0.8 | {_status(None if r is None else r >= 0.8)} |"
    )
    # (d)
    base = results.sse.get("direct")
    added: dict[str, dict[str, float | None]] = {}
    for name in PROXIES:
        s = results.sse.get(name)
        if s is None or base is None:
            added[name] = {"p50": None, "p99": None, "ttfb50": None}
            continue
        ss, bs = s.summary(), base.summary()
        added[name] = {
            "p50": ss["delay_p50"] - bs["delay_p50"],
            "p99": ss["delay_p99"] - bs["delay_p99"],
            "ttfb50": ss["ttfb_p50"] - bs["ttfb_p50"],
        }
    for key, label in (("p50", "added p50 delay ms"), ("p99", "added p99 delay ms")):
        n_v, t_v = added["nginx"][key], added["teeproxy"][key]
        status, tgt = "", ""
        if key == "p99":
            tgt, status = "<= 2 ms", _status(None if t_v is None else t_v <= 2.0)
        out.append(
            f"| (d) SSE 50 events/s | {label} | {_fmt(n_v, 3)} | {_fmt(t_v, 3)} | | "
            f"{tgt} | {status} |"
        )
    if args.sse_rounds > 1:
        cells = []
        for name in ("nginx", "teeproxy"):
            per_round = results.sse_round_p99_added(name)
            cells.append(
                f"{statistics.median(per_round):.3f} ({min(per_round):.2f} to {max(per_round):.2f})"
                if per_round
                else "n/a"
            )
        out.append(
            f"| (d) SSE 50 events/s | added p99 delay ms, median of {args.sse_rounds} rounds "
            f"(range) | {cells[0]} | {cells[1]} | | | |"
        )
    n_v, t_v = added["nginx"]["ttfb50"], added["teeproxy"]["ttfb50"]
    out.append(
        f"| (d) SSE 50 events/s | added p50 time to first event ms | {_fmt(n_v, 3)} | "
        f"{_fmt(t_v, 3)} | | | |"
    )
    # (e)
    n_m, t_m = results.mem.get("nginx"), results.mem.get("teeproxy")
    n_k = n_m.kib_per_stream_pss if n_m else None
    t_k = t_m.kib_per_stream_pss if t_m else None
    out.append(
        f"| (e) idle streams | KiB per stream (PSS) | {_fmt(n_k)} | {_fmt(t_k)} | "
        f"{_fmt(_ratio(t_k, n_k), 2)} | <= 40 KiB | "
        f"{_status(None if t_k is None else t_k <= 40.0)} |"
    )
    if "f" in args.tests:
        out += _receipt_summary_rows(results)
    if "g" in args.tests:
        out += _llm_summary_rows(results, args)

    # Raw numbers.
    out += ["", "## Raw numbers", "", "### wrk (a) (b) (c) (f)", ""]
    out += [
        "| test | target | req/s | MiB/s | p50 ms | p99 ms | requests | errors "
        "| proxy CPU (cores) | proxy CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for (test, target), wr in sorted(w.items()):
        errs = ", ".join(f"{k} {v}" for k, v in wr.socket_errors.items() if v)
        if wr.non_2xx:
            errs = (errs + ", " if errs else "") + f"non-2xx {wr.non_2xx}"
        cpu = wr.cpu_s > 0
        out.append(
            f"| ({test}) | {target} | {_fmt(wr.requests_per_s, 0)} | "
            f"{_fmt(wr.transfer_mib_s, 1)} | {_fmt(wr.p50_ms, 2)} | {_fmt(wr.p99_ms, 2)} | "
            f"{wr.requests:,} | {errs or '0'} | "
            f"{_fmt(wr.cpu_utilisation, 2) if cpu else '-'} | "
            f"{_fmt(wr.cpu_ms_per_request, 3) if cpu else '-'} |"
        )
    if results.resumption:
        out += ["", "TLS session resumption offered by the client on reconnect (as wrk does):"]
        for name, (resumed, tried) in results.resumption.items():
            out.append(f"- {name}: resumed {resumed} of {tried} reconnections")
    out += ["", "### SSE (d)", ""]
    out += [
        "| path | streams (all rounds) | events | TTFB p50 ms | TTFB p99 ms | delay p50 ms | "
        "delay p99 ms | delay max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in results.sse.items():
        sm = s.summary()
        out.append(
            f"| {name} | {s.streams} | {s.events_received:,} | {_fmt(sm['ttfb_p50'], 3)} | "
            f"{_fmt(sm['ttfb_p99'], 3)} | {_fmt(sm['delay_p50'], 3)} | "
            f"{_fmt(sm['delay_p99'], 3)} | {_fmt(sm['delay_max'], 3)} |"
        )
    out += [
        "",
        "Delay = arrival time at the client - timestamp written by the SSE server just "
        "before sending. `direct` = plain HTTP to the backend nginx (which fronts the SSE "
        "server exactly as for the proxies); `direct-sse` = plain HTTP to the Python SSE "
        "server itself. Added delay = proxy percentile - `direct` percentile.",
    ]
    out += ["", "### Memory (e)", ""]
    out += [
        "| proxy | processes | streams | open s | RSS before KiB | RSS after KiB | "
        "PSS before KiB | PSS after KiB | KiB/stream (PSS) | KiB/stream (RSS) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in results.mem.items():
        out.append(
            f"| {name} | {m.after.processes} | {m.idle.established:,} | "
            f"{m.idle.open_seconds:.1f} | {m.before.rss_kib:,} | {m.after.rss_kib:,} | "
            f"{m.before.pss_kib:,} | {m.after.pss_kib:,} | {_fmt(m.kib_per_stream_pss)} | "
            f"{_fmt(m.kib_per_stream_rss)} |"
        )
    if results.rest:
        out += ["", "### Memory at rest, per process", ""]
        out += [
            "Each proxy's processes after start-up, before any request (VmRSS counts shared "
            "pages in every process; PSS splits them).",
            "",
            "| proxy | pid | role | RSS KiB | PSS KiB |",
            "|---|---:|---|---:|---:|",
        ]
        for name, rows in results.rest.items():
            for pm in rows:
                out.append(f"| {name} | {pm.pid} | {pm.role} | {pm.rss_kib:,} | {pm.pss_kib:,} |")
    if "f" in args.tests:
        out += _receipt_section(results, args)
    if "g" in args.tests:
        out += _llm_section(results, args)
    if results.profile_file is not None:
        out += ["", f"Profile of test (a): `{results.profile_file.relative_to(REPO)}`"]
    if results.errors:
        out += ["", "## Errors", ""]
        for target, msgs in results.errors.items():
            for msg in msgs:
                out += [f"- {target}:", "", "```", msg, "```"]
    if results.notes:
        out += ["", "## Notes", ""]
        out += [f"- {n}" for n in results.notes]
    return "\n".join(out) + "\n"
