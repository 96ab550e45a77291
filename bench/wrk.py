"""Running wrk and parsing its report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE_UNITS_MIB = {
    "B": 1 / 1024**2,
    "KB": 1 / 1024,
    "MB": 1.0,
    "GB": 1024.0,
    "TB": 1024.0**2,
}


class WrkError(RuntimeError):
    pass


@dataclass
class WrkResult:
    url: str
    requests: int
    seconds: float
    requests_per_s: float
    transfer_mib_s: float  # wrk prints binary units: its "MB" is MiB
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int]
    non_2xx: int
    cpu_s: float = 0.0  # CPU consumed by the proxy (master + workers) during the run
    raw: str = ""

    @property
    def error_count(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.requests if self.requests else float("nan")

    @property
    def cpu_utilisation(self) -> float:
        """Proxy CPU time / wall time (1.0 = one core busy)."""
        return self.cpu_s / self.seconds if self.seconds else float("nan")


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse(output: str, url: str) -> WrkResult:
    m_req = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    m_tr = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", output, re.M)
    m_tot = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", output)
    if not (m_req and m_tr and m_tot):
        raise WrkError(f"cannot parse wrk output:\n{output}")
    lat: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M):
        lat[pct] = _ms(value, unit)
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m_err = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if m_err:
        errors = dict(zip(errors, (int(x) for x in m_err.groups()), strict=True))
    m_non = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        url=url,
        requests=int(m_tot.group(1)),
        seconds=_ms(m_tot.group(2), m_tot.group(3)) / 1000,
        requests_per_s=float(m_req.group(1)),
        transfer_mib_s=float(m_tr.group(1)) * _SIZE_UNITS_MIB[m_tr.group(2)],
        p50_ms=lat.get("50", float("nan")),
        p99_ms=lat.get("99", float("nan")),
        socket_errors=errors,
        non_2xx=int(m_non.group(1)) if m_non else 0,
        raw=output,
    )


def run(
    url: str,
    *,
    duration: float,
    threads: int = 2,
    connections: int = 50,
    headers: tuple[str, ...] = (),
    wrk: str = "wrk",
    script: str | None = None,
) -> WrkResult:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    if script is not None:
        cmd += ["-s", script]
    cmd.append(url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise WrkError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return parse(proc.stdout, url)


def post_script(body: str, content_type: str = "application/json") -> str:
    """A wrk Lua script that makes every request (to the URL's path) a POST with body."""
    if "]==]" in body:
        raise ValueError("body contains the Lua long-string terminator")
    return (
        f'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )
