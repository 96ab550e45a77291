"""--profile: an extra, unreported run of (a) with `py-spy record` attached to teeproxy
(--subprocesses, 100 Hz); writes bench/profile_a.txt (top frames by self and inclusive
time, summarize_folded) and bench/profile_a.folded (py-spy's collapsed stacks). Entry: run().
With (g) selected, also an extra run of (g) at --llm-streams through teeproxy with receipts
off and one with receipts on, py-spy with --native (so OpenSSL and uvloop's C frames show):
bench/profile_g_<target>.txt and .folded. Entry: run_llm().

Not named profile.py: bench/ is first on sys.path, so that would shadow the standard
library's `profile` module (which cProfile imports) in the whole run."""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import bench_llm
import procs
import wrk
from harness import BENCH_DIR, WRK, Target


def run(target: Target, args: argparse.Namespace, pyspy: str, tmp: Path) -> Path:
    """An extra run of (a) with py-spy attached to teeproxy; top frames to a text file."""
    assert target.proc is not None  # noqa: S101
    raw = tmp / "profile.folded"
    duration = max(5, round(args.duration))
    spy = procs.Proc(
        "py-spy",
        [
            *(pyspy, "record", "--pid", str(target.proc.pid), "--subprocesses"),
            *("--rate", "100", "--format", "raw"),
            *("--duration", str(duration), "-o", str(raw)),
        ],
        tmp / "py-spy.log",
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        res = wrk.run(
            target.url + "/small",
            duration=duration - 2,
            threads=args.threads,
            connections=args.connections,
            wrk=WRK,
        )
        spy.popen.wait(timeout=duration + 30)
    finally:
        spy.stop(timeout=5, sig=signal.SIGINT)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile:\n{spy.log_tail()}")
    out = BENCH_DIR / "profile_a.txt"
    out.write_text(
        summarize_folded(
            raw.read_text(),
            header=f"py-spy profile of teeproxy (workers=1) during test (a): "
            f"{res.requests_per_s:.0f} req/s while sampled (100 Hz)\n",
        )
    )
    shutil.copy(raw, BENCH_DIR / "profile_a.folded")
    return out


def run_llm(target: Target, args: argparse.Namespace, pyspy: str, tmp: Path, ca: Path) -> Path:
    """An extra (g) load at --llm-streams with py-spy --native attached; top frames to a file."""
    assert target.proc is not None  # noqa: S101
    stem = f"profile_g_{target.name}"
    raw = tmp / f"{stem}.folded"
    duration = round(args.llm_spread + args.llm_events / args.llm_rate) + 2
    spy = procs.Proc(
        "py-spy-g",
        [
            *(pyspy, "record", "--pid", str(target.proc.pid), "--subprocesses", "--native"),
            *("--rate", "100", "--format", "raw"),
            *("--duration", str(duration), "-o", str(raw)),
        ],
        tmp / f"py-spy-{stem}.log",
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        res = bench_llm.measure(target, args.llm_streams, args, ca)
        spy.popen.wait(timeout=duration + 30)
    finally:
        spy.stop(timeout=5, sig=signal.SIGINT)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile:\n{spy.log_tail()}")
    out = BENCH_DIR / f"{stem}.txt"
    out.write_text(
        summarize_folded(
            raw.read_text(),
            header=f"py-spy --native profile of {target.name} (workers=1) during test (g): "
            f"{args.llm_streams} streams x {args.llm_rate:g} events/s, "
            f"{res.cpu_us_per_event:.1f} us CPU/event while sampled (the sampler's own "
            "pauses inflate this) (100 Hz)\n",
        )
    )
    shutil.copy(raw, BENCH_DIR / f"{stem}.folded")
    return out


_IDLE_LEAF = re.compile(r"^_worker \(concurrent/futures/thread\.py:\d+\)$")
_PY_FRAME = re.compile(r"\.py:\d+\)$")
_SYSCALL = re.compile(r"^([a-z_0-9]+) \(libc\.so[.0-9]*\)$")
_IDLE_SYSCALLS = frozenset({"epoll_wait", "epoll_pwait", "select", "poll", "futex"})
_SYSCALLS = frozenset(
    {
        *("read", "write", "readv", "writev", "send", "recv", "sendmsg", "recvmsg"),
        *("sendto", "recvfrom", "connect", "accept", "accept4", "socket", "close"),
        *("shutdown", "getpid", "getsockname", "getpeername", "setsockopt", "getsockopt"),
        *("fcntl", "ioctl", "epoll_ctl", "syscall", "mmap", "munmap", "madvise", "brk"),
    }
)


def _kind(leaf: str) -> str:
    """What a sample's innermost frame spends time in, coarsely (--native profiles)."""
    m = _SYSCALL.match(leaf)
    if m:
        name = m.group(1)
        if name in _IDLE_SYSCALLS:
            return f"waiting ({name})"
        return f"system call {name}" if name in _SYSCALLS else "libc (other)"
    if "libcrypto" in leaf or "libssl" in leaf or "_ssl" in leaf:
        return "OpenSSL"
    if _PY_FRAME.search(leaf):
        return "Python code"
    return "interpreter, uvloop/libuv, C extensions, unresolved"


_PROCESS_FRAME = re.compile(r'^(?:process \d+:"[^"]*"(?:;|$))+')


def summarize_folded(text: str, header: str, top: int = 40) -> str:
    """Self and inclusive sample counts per frame from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        # With --subprocesses the stack starts with 'process PID:"CMDLINE"' frames (supervisor,
        # then worker), whose command lines may contain ';'.
        stack = _PROCESS_FRAME.sub("", stack)
        frames = [f for f in stack.split(";") if f]
        # Idle pool thread: its innermost Python frame is the executor's _worker (with
        # --native, C frames of the queue's lock wait follow it).
        py_frames = [f for f in frames if _PY_FRAME.search(f)]
        if not frames or (py_frames and _IDLE_LEAF.match(py_frames[-1])):
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        kinds[_kind(frames[-1])] += count
        for frame in set(frames):
            incl[frame] += count
    if total == 0:
        return header + "no samples (was teeproxy busy?)\n"
    lines = [
        header,
        f"samples: {total} (left out: {idle} of idle thread-pool threads waiting for work, "
        "which py-spy does not recognise as idle)",
        "",
        "where the samples are (innermost frame):",
    ]
    lines += [f"{100 * n / total:6.2f}%  {kind}" for kind, n in kinds.most_common()]
    lines += ["", f"top {top} frames by own (self) time:"]
    lines += [f"{100 * n / total:6.2f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", f"top {top} frames by inclusive time:"]
    lines += [f"{100 * n / total:6.2f}%  {frame}" for frame, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"
