"""``teeproxy``: the command line, and the entry point of every teeproxy process.

``serve``, ``check-config`` and ``print-default-config`` are here; the other commands live
in their own modules (``demo``, ``verify``, ``measure``, ``release``/``verify-build``,
``caa``, ``policy``, ``receipt``, ``cluster``, ``build-image``),
each adding its parsers. The CLI sits on top of the house and may import anything.

Modules that import prometheus_client (every control-plane and data-plane module, through
:mod:`proxy.metrics`) are imported only after the command has set
``PROMETHEUS_MULTIPROC_DIR``: prometheus_client picks its storage when first imported.
That is the reason for the function-local imports of :func:`serve_config`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__
from proxy.cli import acme as cli_acme
from proxy.cli import attest as cli_attest
from proxy.cli import cluster as cli_cluster
from proxy.cli import demo as cli_demo
from proxy.cli import manifest as cli_manifest
from proxy.cli import measure as cli_measure
from proxy.cli import policy as cli_policy
from proxy.cli import receipt as cli_receipt
from proxy.cli import release as cli_release
from proxy.config import Config, default_toml, load, loads
from proxy.errors import ConfigError
from proxy.log import setup_logging
from proxy.runtime import install_uvloop, with_metrics_dir
from proxy.tmpdirs import remove_private_tempdir

__all__ = ["build_parser", "main", "serve_config"]


def serve_config(cfg: Config, config_path: str | None) -> int:
    """Run the supervisor on ``cfg`` until it stops; its exit code."""
    metrics_dir = with_metrics_dir()
    try:
        # After PROMETHEUS_MULTIPROC_DIR is set (see the module docstring).
        from proxy.control.supervisor import Supervisor  # noqa: PLC0415 - prometheus_client

        install_uvloop()
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        return asyncio.run(Supervisor(cfg, config_path).run())
    except ConfigError as e:
        print(f"teeproxy: config error: {e}", file=sys.stderr)
        return 2
    finally:
        remove_private_tempdir(metrics_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config) if args.config else loads("")
    except ConfigError as e:
        print(f"teeproxy: config error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level)
    return serve_config(cfg, args.config)


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

    cli_demo.add_parser(sub)
    cli_attest.add_parsers(sub)
    cli_measure.add_parsers(sub)
    cli_manifest.add_parsers(sub)
    cli_acme.add_caa_parser(sub)
    cli_policy.add_parsers(sub)
    cli_receipt.add_parsers(sub)
    cli_cluster.add_parsers(sub)
    cli_release.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = cli_measure.legacy_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
