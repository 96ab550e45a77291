"""``teeproxy`` command line: serve, check-config, demo, print-default-config, version.

Modules that import prometheus_client are imported only after the command has set
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client picks its storage when first imported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__
from proxy.config import Config, ConfigError, default_toml, load, loads

__all__ = ["main"]

log = logging.getLogger("teeproxy.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _with_metrics_dir() -> Path:
    """Create a private directory for multiprocess metrics and point the env at it."""
    path = Path(tempfile.mkdtemp(prefix="teeproxy-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def _serve(cfg: Config, config_path: str | None) -> int:
    metrics_dir = _with_metrics_dir()
    try:
        from proxy.server import Supervisor, install_uvloop  # noqa: PLC0415

        install_uvloop()
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        return asyncio.run(Supervisor(cfg, config_path).run())
    except ConfigError as e:
        print(f"teeproxy: config error: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config) if args.config else loads("")
    except ConfigError as e:
        print(f"teeproxy: config error: {e}", file=sys.stderr)
        return 2
    _setup_logging(cfg.logging.level)
    return _serve(cfg, args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.file)
    except ConfigError as e:
        print(f"{args.file}: invalid: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({len(cfg.server.listen)} listener(s), backend {cfg.backend.url})")
    return 0


def cmd_print_default_config(_args: argparse.Namespace) -> int:
    sys.stdout.write(default_toml())
    return 0


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
        # issue 4: simulated TEE quotes (INSECURE, announced) so `teeproxy verify` works.
        "[attestation]\nprovider = 'simulated'\n"
    )
    if args.governance != "off":  # issue 5: an in-process EVM with the policy contract
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
    _setup_logging(cfg.logging.level)
    metrics_dir = _with_metrics_dir()
    try:
        from proxy.server import install_uvloop  # noqa: PLC0415

        install_uvloop()
        return asyncio.run(_demo(cfg, sock, args.tokens_per_second))
    except ConfigError as e:
        print(f"teeproxy demo: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _demo(cfg: Config, sock: Path, rate: float) -> int:
    from proxy.demo_backend import DemoBackendConfig, start_demo_backend  # noqa: PLC0415
    from proxy.server import Supervisor  # noqa: PLC0415

    runner, _url = await start_demo_backend(
        DemoBackendConfig(tokens_per_second=rate), unix_path=str(sock)
    )
    sup = Supervisor(cfg)
    from proxy.tasks import spawn  # noqa: PLC0415

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
    from proxy.cli_policy import demo_banner  # noqa: PLC0415 - issue 5

    return demo_banner(cfg, measurement_id)


def _print_demo_banner(cfg: Config, port: int, measurement_id: bytes | None = None) -> None:
    from proxy.cli_attest import demo_attestation_text  # noqa: PLC0415 - issue 4

    root = Path(cfg.state_dir) / "dev-ca" / "root.pem"
    url = f"https://localhost:{port}"
    print(
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
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="teeproxy", description="TLS-terminating reverse proxy for LLM inference in a TEE"
    )
    p.add_argument("--version", action="version", version=f"teeproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the proxy with a TOML config")
    s.add_argument("--config", "-c", help="TOML config file (default: embedded defaults)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    d = sub.add_parser("print-default-config", help="print the embedded default config")
    d.set_defaults(func=cmd_print_default_config)

    m = sub.add_parser("demo", help="run the proxy in front of a built-in demo model")
    m.add_argument("--listen", default="127.0.0.1:8443", help="TLS listen address")
    m.add_argument("--admin", default="127.0.0.1:9443", help="admin listen address")
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--state-dir", help="default: $XDG_DATA_HOME/teeproxy/demo")
    m.add_argument("--tokens-per-second", type=float, default=20.0)
    m.add_argument("--governance", choices=("enforce", "monitor", "off"), default="enforce")
    m.add_argument("--chain-listen", default="127.0.0.1:0", help="embedded chain JSON-RPC")
    m.set_defaults(func=cmd_demo)

    from proxy.cli_attest import add_parsers as add_attest_parsers  # noqa: PLC0415

    add_attest_parsers(sub)

    from proxy.cli_acme import add_caa_parser  # noqa: PLC0415 - issue 3

    add_caa_parser(sub)

    from proxy.cli_policy import add_parsers as add_policy_parsers  # noqa: PLC0415 - issue 5

    add_policy_parsers(sub)

    from proxy.cli_receipt import add_parsers as add_receipt_parsers  # noqa: PLC0415 - issue 6

    add_receipt_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
