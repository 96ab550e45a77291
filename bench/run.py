#!/usr/bin/env python3
"""teeproxy vs nginx benchmark: one run starts a fast loopback backend, nginx as a
TLS-terminating reverse proxy and teeproxy in front of it, measures

  (a) small responses over keep-alive TLS        wrk -t2 -c50 /small     req/s, p50, p99
  (b) one full TLS handshake per request         wrk ... Connection: close  req/s
  (c) 1 MiB responses                            wrk /1m                 MiB/s
  (d) SSE delivery delay at 50 events/s          asyncio client          added p50/p99
  (e) memory per open idle stream                2,000 streams           KiB/stream
  (f) latency signing adds per request           sequential POSTs, wrk POST, SSE streams
      (teeproxy with signed receipts on vs off, nginx as the peer)  ms added, req/s
  (g) LLM-shaped load: 512 streamed chat completions at 25 events/s (then scaled up),
      receipts off and on          CPU per 1,000 events, added p50/p99 delay and TTFB

and writes a Markdown report to bench/RESULTS.md. See bench/README.md.

    /tmp/venv/bin/python bench/run.py            # full run, ~5 minutes
    /tmp/venv/bin/python bench/run.py --quick    # smoke run, ~1.5-2 minutes

This file owns the command line and the order of the run; the tests are bench_wrk.py
(a, b, c), bench_sse.py (d), bench_memory.py (e), bench_receipts.py (f), bench_llm.py (g)
and
bench_profile.py (--profile), what they share is in harness.py, the report in report.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_llm
import bench_memory
import bench_profile
import bench_receipts
import bench_sse
import bench_wrk
import clients
import configs
import harness
import procs
import report
from harness import (
    ALL_TESTS,
    BENCH_DIR,
    PROXIES,
    REPO,
    RX_OFF,
    RX_ON,
    RX_TARGETS,
    Results,
    Target,
    log,
)

# --------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark teeproxy against nginx as TLS-terminating reverse proxies.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk test [15]")
    p.add_argument("--workers", type=int, default=1, help="worker processes of each proxy")
    p.add_argument("--backend-workers", type=int, default=1, help="backend nginx workers")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--quick", action="store_true", help="short smoke run (~1.5-2 minutes)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile teeproxy (workers=1 for both proxies) with py-spy during an "
        "extra run of test (a); writes bench/profile_a.txt",
    )
    p.add_argument(
        "--proxies",
        default=",".join(PROXIES),
        help="comma-separated subset of nginx,teeproxy to run",
    )
    p.add_argument("--tests", default=ALL_TESTS, help="subset of tests to run, e.g. 'ade'")
    p.add_argument("--idle-streams", type=int, default=2000, help="streams for test (e)")
    p.add_argument("--sse-streams", type=int, default=20, help="concurrent streams for (d)")
    p.add_argument("--sse-events", type=int, default=50, help="events per stream per round")
    p.add_argument(
        "--sse-rounds", type=int, default=None, help="rounds of (d) over all paths [10; quick 1]"
    )
    p.add_argument("--sse-rate", type=float, default=50.0, help="events per second per stream")
    p.add_argument(
        "--rx-requests",
        type=int,
        default=None,
        help="(f1) sequential POSTs per target, after --rx-warmup more [2000; quick 500]",
    )
    p.add_argument("--rx-warmup", type=int, default=200, help="(f1) unmeasured POSTs first")
    p.add_argument(
        "--rx-streams", type=int, default=None, help="(f2) streams per target [300; quick 60]"
    )
    p.add_argument("--rx-events", type=int, default=20, help="(f2) data events per stream")
    p.add_argument("--rx-interval", type=float, default=0.002, help="(f2) seconds between events")
    p.add_argument(
        "--rx-rounds",
        type=int,
        default=None,
        help="(f) rounds over the targets (rotating order, samples pooled) [5; quick 2]",
    )
    p.add_argument(
        "--llm-streams", type=int, default=None, help="(g) concurrent streams [512; quick 128]"
    )
    p.add_argument("--llm-rate", type=float, default=25.0, help="(g) events/s per stream")
    p.add_argument("--llm-events", type=int, default=None, help="(g) events per stream [100]")
    p.add_argument("--llm-spread", type=float, default=1.0, help="(g) seconds to start all")
    p.add_argument(
        "--llm-scale",
        default=None,
        help="(g) comma-separated stream counts to scale through [64,128,256,512,768,1024; "
        "quick: none]",
    )
    p.add_argument("--llm-bound", type=float, default=2.0, help="(g) added p99 delay bound, ms")
    p.add_argument(
        "--teeproxy-cmd",
        default=None,
        help="command that starts teeproxy (before 'serve --config FILE'); default: the "
        "teeproxy console script next to this Python, else 'python -m proxy.cli'",
    )
    p.add_argument(
        "--nginx-resumption",
        choices=("on", "off"),
        default="on",
        help="TLS session tickets in the nginx proxy (its default is on; teeproxy resumes "
        "sessions too). 'off' makes every (b) connection to nginx a full handshake",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for the machine to be >= 90%% idle (other "
        "work running at the same time distorts every number)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for this run and everything it starts (e.g. -10, as "
        "root, to shield the measurement from other work on a shared machine)",
    )
    p.add_argument("--ready-timeout", type=float, default=20.0)
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (debugging)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 15.0
    if args.sse_rounds is None:
        args.sse_rounds = 1 if args.quick else 10
    if args.rx_requests is None:
        args.rx_requests = 500 if args.quick else 2000
    if args.rx_streams is None:
        args.rx_streams = 60 if args.quick else 300
    if args.rx_rounds is None:
        args.rx_rounds = 2 if args.quick else 5
    if args.llm_streams is None:
        args.llm_streams = 128 if args.quick else 512
    if args.llm_events is None:
        args.llm_events = 40 if args.quick else 100
    if args.llm_scale is None:
        args.llm_scale = "" if args.quick else "64,128,256,512,768,1024"
    try:
        args.llm_scale = [int(x) for x in args.llm_scale.split(",") if x.strip()]
    except ValueError:
        p.error("--llm-scale takes comma-separated integers")
    if min([args.llm_streams, args.llm_events, *args.llm_scale]) < 1 or args.llm_rate <= 0:
        p.error("--llm-streams, --llm-events, --llm-scale and --llm-rate must be > 0")
    args.warmup = 1.0 if args.quick else 2.0
    args.proxies = [x.strip() for x in args.proxies.split(",") if x.strip()]
    unknown = set(args.proxies) - set(PROXIES)
    if unknown:
        p.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    if set(args.tests) - set(ALL_TESTS):
        p.error(f"--tests takes letters from '{ALL_TESTS}'")
    if min(args.rx_requests, args.rx_streams, args.rx_rounds, args.rx_events) < 1:
        p.error("--rx-requests, --rx-streams, --rx-rounds and --rx-events must be >= 1")
    if args.rx_warmup < 0 or args.rx_interval < 0:
        p.error("--rx-warmup and --rx-interval must be >= 0")
    if args.profile and args.workers != 1:
        log("--profile: using workers=1 for both proxies")
        args.workers = 1
    if args.backend_workers < 1:
        p.error("--backend-workers must be >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1 (nginx and teeproxy need the same explicit count)")
    return args


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pyspy = harness.require_tools(args.profile)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as exc:
            sys.exit(f"error: cannot set niceness {args.nice}: {exc}")
    nofile = procs.raise_nofile(max(65536, args.idle_streams * 8 + 4096))
    if nofile < args.idle_streams * 3 + 1024:
        sys.exit(f"error: RLIMIT_NOFILE is {nofile}, too low for {args.idle_streams} streams")
    conns = max(4096, args.idle_streams * 2 + 1024)  # nginx worker_connections

    idle = harness.wait_for_idle(args.wait_idle)
    log(f"machine {100 * idle:.0f}% idle before the run")
    started = time.monotonic()
    busy0, own0 = procs.machine_busy_seconds(), procs.own_cpu_seconds()
    tmp = Path(tempfile.mkdtemp(prefix="teeproxy-bench-"))
    running: list[procs.Proc] = []
    results = Results()
    env = harness.environment(args)
    try:
        (tmp / "logs").mkdir()
        certs = configs.make_certs(tmp)
        ctx = clients.client_context(str(certs.ca_file))
        targets: dict[str, Target] = harness.start_backend(
            args, tmp=tmp, connections=conns, running=running
        )
        backend_port = targets["direct"].port
        if "nginx" in args.proxies:
            nginx_target = harness.start_proxy_nginx(
                args,
                tmp=tmp,
                backend_port=backend_port,
                connections=conns,
                certs=certs,
                ctx=ctx,
                running=running,
                results=results,
            )
            if nginx_target is not None:
                targets["nginx"] = nginx_target
        if "teeproxy" in args.proxies:
            # (f) adds two more teeproxy processes (simulated attestation, receipts off/on).
            variants: list[tuple[str, bool | None]] = []
            if set(args.tests) - {"f"}:  # tests a-e use the default configuration
                variants.append(("teeproxy", None))
            if {"f", "g"} & set(args.tests):
                variants += [(RX_OFF, False), (RX_ON, True)]
            for name, receipts in variants:
                tee_target = harness.start_teeproxy(
                    name,
                    receipts,
                    args,
                    tmp=tmp,
                    backend_port=backend_port,
                    max_connections=conns * 2,
                    certs=certs,
                    ctx=ctx,
                    running=running,
                    results=results,
                )
                if tee_target is not None:
                    targets[name] = tee_target
        proxies = [targets[n] for n in PROXIES if n in targets]
        rx = [targets[n] for n in RX_TARGETS if n in targets] if "f" in args.tests else []
        extra = [targets[n] for n in (RX_OFF, RX_ON) if n in targets]
        rx_only = [t for t in extra if t not in proxies]

        time.sleep(1.0)  # let the workers finish importing
        for t in [*proxies, *rx_only]:
            if t.proc is not None:
                results.rest[t.name] = procs.per_process_memory(t.proc.pid)
        for t in rx_only:
            harness.guarded(results, t.name, "warm-up", partial(harness.warm_up, t, args))
        for t in proxies:
            harness.guarded(results, t.name, "warm-up", partial(harness.warm_up, t, args))
            res = harness.guarded(
                results,
                t.name,
                "resumption probe",
                partial(clients.resumption_probe, t.port, ctx),
            )
            if res is not None:
                results.resumption[t.name] = res

        if "e" in args.tests:
            bench_memory.run(proxies, args, results)
        if "d" in args.tests:
            bench_sse.run([targets["direct-sse"], targets["direct"], *proxies], args, results)
        bench_wrk.run(targets["direct"], proxies, args, results)  # those of a, b, c selected
        if rx:
            bench_receipts.run(rx, args, results, tmp)
        if "g" in args.tests:
            bench_llm.run(targets, args, results, certs.ca_file)
            bench_llm.split_runs(targets, args, results, certs.ca_file)
        if args.profile and "teeproxy" in targets:
            if pyspy is None:
                results.notes.append("--profile skipped: py-spy not installed")
            else:
                log("profiling teeproxy under (a) with py-spy")
                results.profile_file = harness.guarded(
                    results,
                    "teeproxy",
                    "profile",
                    partial(bench_profile.run, targets["teeproxy"], args, pyspy, tmp),
                )
        if args.profile and "g" in args.tests and pyspy is not None:
            for name in (RX_OFF, RX_ON):
                if name not in targets:
                    continue
                log(f"profiling {name} under (g) with py-spy --native")
                prof_g = harness.guarded(
                    results,
                    name,
                    "profile (g)",
                    partial(bench_profile.run_llm, targets[name], args, pyspy, tmp, certs.ca_file),
                )
                if prof_g is not None:
                    results.notes.append(
                        f"profile of (g) through {name}: `{prof_g.relative_to(REPO)}`"
                    )
    except KeyboardInterrupt:
        log("interrupted; stopping processes")
        results.notes.append("run interrupted")
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        # Setup of the backend failed (per-test failures are handled by guarded()).
        results.error("setup", "".join(traceback.format_exception(exc)).strip())
    finally:
        harness.stop_all(running, tmp, results, keep_tmp=args.keep_tmp)

    results.notes.append(harness.load_note(idle, started, busy0, own0))
    text = report.render(results, args, env)
    print(text)
    args.output.write_text(text)
    log(f"wrote {args.output}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
