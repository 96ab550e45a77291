"""Child-process management and /proc accounting for the benchmark.

Every process is started in its own session (so its process-group id equals its PID),
and stopped by that PID: SIGTERM, a grace period, then SIGKILL to the group and to
any descendant still alive. No process is ever looked up by name.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on host (bind to 0 and release; racy but fine on a quiet box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard if privileged) to at least wanted; return soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft, hard = wanted, wanted
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(wanted, hard))
    if target == resource.RLIM_INFINITY:
        target = wanted
    if target != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/PID/task/*/children."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(x) for x in (task / "children").read_text().split())
    return out


def tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        if cur in seen or not Path(f"/proc/{cur}").exists():
            continue
        seen.append(cur)
        todo.extend(children(cur))
    return seen


@dataclass
class Memory:
    rss_kib: int
    pss_kib: int
    processes: int


def _status_kib(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def memory(pid: int) -> Memory:
    """Sum of VmRSS and of Pss over pid and its descendants."""
    pids = tree(pid)
    return Memory(
        rss_kib=sum(_status_kib(p, "VmRSS") for p in pids),
        pss_kib=sum(_pss_kib(p) for p in pids),
        processes=len(pids),
    )


@dataclass
class ProcessMemory:
    pid: int
    role: str
    rss_kib: int
    pss_kib: int


def _role(pid: int, top: int) -> str:
    """What a process of a proxy's tree is: its parent's view (master/supervisor, worker)."""
    cmd = ""
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    if cmd.startswith("nginx:"):
        return cmd.removeprefix("nginx:").strip().split()[0]  # "master" / "worker"
    if pid == top:
        return "supervisor"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "worker"


def per_process_memory(pid: int) -> list[ProcessMemory]:
    """VmRSS and Pss of pid and each descendant, with its role."""
    return [
        ProcessMemory(p, _role(p, pid), _status_kib(p, "VmRSS"), _pss_kib(p)) for p in tree(pid)
    ]


def _cpu_split_ticks(pid: int) -> tuple[int, int]:
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]), int(fields[12])  # utime, stime (fields 14, 15)
    return 0, 0


def _cpu_ticks(pid: int) -> int:
    return sum(_cpu_split_ticks(pid))


def cpu_split_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds consumed so far by pid and its live descendants."""
    ticks = [_cpu_split_ticks(p) for p in tree(pid)]
    return sum(u for u, _ in ticks) / CLK_TCK, sum(k for _, k in ticks) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User+system CPU time consumed so far by pid and its live descendants."""
    return sum(_cpu_ticks(p) for p in tree(pid)) / CLK_TCK


def own_process_cpu_seconds(pid: int) -> float:
    """User+system CPU time of pid alone (not its children)."""
    return _cpu_ticks(pid) / CLK_TCK


class Proc:
    """A started child process with its log file."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else self._log,
                stderr=self._log,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process by PID, wait, then SIGKILL its group and leftovers."""
        if self.popen.poll() is None:
            family = tree(self.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5)
            # Descendants (workers) should have exited with their parent; make sure.
            deadline = time.monotonic() + 3
            leftovers = [p for p in family if p != self.pid and Path(f"/proc/{p}").exists()]
            while leftovers and time.monotonic() < deadline:
                time.sleep(0.05)
                leftovers = [p for p in leftovers if Path(f"/proc/{p}").exists()]
            for p in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode


def machine_busy_seconds() -> float:
    """CPU-seconds all CPUs spent busy since boot (user+nice+system+irq+softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU-seconds used by this process and its waited-for descendants."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def idle_fraction(seconds: float) -> float:
    """Fraction of total CPU capacity that was idle over the next `seconds`."""
    ncpu = len(os.sched_getaffinity(0)) or 1
    busy0, t0 = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    busy = machine_busy_seconds() - busy0
    return max(0.0, 1.0 - busy / ((time.monotonic() - t0) * ncpu))
