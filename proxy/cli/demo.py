"""``teeproxy demo``: the proxy in front of a built-in demo model, on embedded defaults.

A newcomer's first run: a local development CA, the simulated TEE (INSECURE, announced),
signed receipts and, unless ``--governance off``, an in-process EVM with the policy
contract, so every client command can be tried on one machine. The banner says how.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from proxy.cli.attest import demo_attestation_text
from proxy.cli.demo_backend import DemoBackendConfig, start_demo_backend
from proxy.cli.policy import demo_banner
from proxy.config import Config, loads
from proxy.errors import ConfigError
from proxy.log import setup_logging
from proxy.runtime import install_uvloop, with_metrics_dir
from proxy.tasks import spawn
from proxy.tmpdirs import remove_private_tempdir

__all__ = ["add_parser", "cmd_demo", "demo_governance_text", "runnable", "teeproxy_command"]


def _demo_state_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "teeproxy" / "demo"


def _toml_str(value: str) -> str:
    """A TOML basic string for any path or argument (quotes and backslashes escaped).

    JSON's escapes are TOML's; ensure_ascii=False avoids surrogate-pair escapes TOML refuses.
    """
    return json.dumps(value, ensure_ascii=False)


def cmd_demo(args: argparse.Namespace) -> int:
    state = Path(args.state_dir) if args.state_dir else _demo_state_dir()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = state / "demo-backend.sock"
    text = (
        f"state_dir = {_toml_str(str(state))}\n"
        f"[server]\nlisten = [{_toml_str(args.listen)}]\nworkers = {args.workers}\n"
        "drain_grace = 5.0\n"
        f"[backend]\nurl = {_toml_str(f'unix:{sock}')}\n"
        f"[admin]\nlisten = {_toml_str(args.admin)}\n"
        # Simulated TEE quotes (INSECURE, announced) so `teeproxy verify` works.
        "[attestation]\nprovider = 'simulated'\n"
    )
    if args.governance != "off":  # an in-process EVM with the policy contract
        text += (
            f"[governance]\nmode = {_toml_str(args.governance)}\nself_measurement = 'auto'\n"
            f"embedded_chain = true\nembedded_chain_listen = {_toml_str(args.chain_listen)}\n"
            "refresh_period = 2.0\nmax_staleness = 30.0\nrpc_timeout = 2.0\n"
        )
    try:
        cfg = loads(text, source="<demo>")
    except ConfigError as e:
        print(f"teeproxy demo: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level)
    metrics_dir = with_metrics_dir()
    try:
        install_uvloop()
        return asyncio.run(_demo(cfg, sock, args.tokens_per_second))
    except ConfigError as e:
        print(f"teeproxy demo: {e}", file=sys.stderr)
        return 2
    finally:
        remove_private_tempdir(metrics_dir)


async def _demo(cfg: Config, sock: Path, rate: float) -> int:
    # After PROMETHEUS_MULTIPROC_DIR is set (proxy.cli.main's docstring says why).
    from proxy.control.supervisor import Supervisor  # noqa: PLC0415 - prometheus_client

    runner, _url = await start_demo_backend(
        DemoBackendConfig(tokens_per_second=rate), unix_path=str(sock)
    )
    sup = Supervisor(cfg)
    task = spawn(sup.run(), "supervisor")
    while not sup.ready and not task.done():  # noqa: ASYNC110 - polls a flag set by run()
        await asyncio.sleep(0.05)
    if sup.ready:
        governor = sup.governor
        _print_demo_banner(cfg, sup.ports[0], governor.measurement_id if governor else None)
    try:
        return await task
    finally:
        await runner.cleanup()


def demo_governance_text(cfg: Config, measurement_id: bytes | None) -> str:
    return demo_banner(cfg, measurement_id)


def teeproxy_command() -> str:
    """How to run ``teeproxy`` from a shell: the bare name when that is this installation,
    else the full path of its script (``scripts/demo.sh`` installs into a venv that is not
    on PATH, and a banner of commands that fail with "command not found" helps nobody)."""
    here = Path(sys.executable).parent / "teeproxy"
    found = shutil.which("teeproxy")
    if found is not None and (not here.exists() or Path(found).resolve() == here.resolve()):
        return "teeproxy"
    return (
        shlex.quote(str(here)) if here.exists() else f"{shlex.quote(sys.executable)} -m proxy.cli"
    )


def runnable(text: str, command: str) -> str:
    """The banner with every command runnable: in the indented command lines, the word
    ``teeproxy`` that starts a command (at the start of the line, or after ``ENV=value``
    prefixes) becomes ``command``; prose is left alone."""
    if command == "teeproxy":
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith(" "):
            continue
        words = line.split(" ")
        for j, word in enumerate(words):
            if word == "teeproxy" and all("=" in w or not w for w in words[:j]):
                words[j] = command
                lines[i] = " ".join(words)
                break
    return "\n".join(lines)


def _print_demo_banner(cfg: Config, port: int, measurement_id: bytes | None = None) -> None:
    root = Path(cfg.state_dir) / "dev-ca" / "root.pem"
    url = f"https://localhost:{port}"
    banner = runnable(
        f"""
teeproxy demo is running: {url}
  backend: built-in OpenAI-compatible demo model (streams tokens)
  TLS:     certificate from the local development CA (INSECURE, development only)
  admin:   http://{cfg.admin.listen}/ready and /metrics

Trust the development CA for one command:
  curl --cacert {root} {url}/v1/models
Stream a chat completion:
  curl -N --cacert {root} {url}/v1/chat/completions \\
    -H 'Content-Type: application/json' \\
    -d '{{"model":"teeproxy-demo","stream":true,"messages":[{{"role":"user","content":"hello"}}]}}'
Python clients: SSL_CERT_FILE={root} (or pass the file as the CA bundle).
{demo_governance_text(cfg, measurement_id)}{demo_attestation_text(cfg, port)}
Press Ctrl-C to stop.
""",
        teeproxy_command(),
    )
    print(banner, flush=True)


def add_parser(sub: Any) -> None:
    m = sub.add_parser("demo", help="run the proxy in front of a built-in demo model")
    m.add_argument("--listen", default="127.0.0.1:8443", help="TLS listen address")
    m.add_argument("--admin", default="127.0.0.1:9443", help="admin listen address")
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--state-dir", help="default: $XDG_DATA_HOME/teeproxy/demo")
    m.add_argument("--tokens-per-second", type=float, default=20.0)
    m.add_argument("--governance", choices=("enforce", "monitor", "off"), default="enforce")
    m.add_argument("--chain-listen", default="127.0.0.1:0", help="embedded chain JSON-RPC")
    m.set_defaults(func=cmd_demo)
