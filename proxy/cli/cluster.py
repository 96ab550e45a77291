"""``teeproxy cluster status``: one replica's view of its cluster, from its admin listener.

Members and the measurement each one's evidence verified to, the policy verdict on it now,
whether it holds the current key, the key epoch, the renewer and the fleet's certificate
version, and the receipt signer (the fleet's shared address, with the one it replaced, or
each member's own). It reads ``GET /cluster`` of the replica's admin listener (loopback or a unix
socket, never etcd directly: only a replica inside a TEE can verify its peers' evidence and
read what is sealed in etcd). ``--json`` prints the document as it came.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import aiohttp

from proxy.config import load, parse_listen
from proxy.errors import ConfigError

__all__ = ["add_parsers", "format_status"]

_MAX_BODY = 1024 * 1024


def format_status(doc: dict[str, Any]) -> str:
    """The human form of a ``/cluster`` document (pure)."""
    lines = [
        f"cluster:      {doc.get('cluster')}",
        f"this member:  {doc.get('member_id')} ({doc.get('measurement_id')})",
        f"key epoch:    {doc.get('key_epoch')} (held here: {doc.get('has_key')}, "
        f"rotations here: {doc.get('rotations')})",
        f"renewer:      {doc.get('renewer') or '-'}",
        f"certificate:  version {doc.get('certificate_version')}",
        f"etcd:         {doc.get('etcd_endpoint')}",
        *_signer_lines(doc.get("receipt_signer")),
        "members:",
    ]
    members = doc.get("members")
    for mid, m in sorted(members.items()) if isinstance(members, dict) else []:
        if not isinstance(m, dict):
            continue
        verdict = m.get("verdict")
        key = "has key" if m.get("has_key") else "no key"
        lines.append(f"  {mid:<20} {m.get('measurement_id')}  {verdict}, {key}")
        if m.get("signing_address"):
            lines.append(f"  {'':<20} receipt signer {m['signing_address']}")
        for reason in m.get("reasons") or []:
            lines.append(f"  {'':<20} - {reason}")
        if m.get("policy"):
            lines.append(f"  {'':<20} policy: {m['policy']}")
    return "\n".join(lines) + "\n"


def _signer_lines(signer: object) -> list[str]:
    if not isinstance(signer, dict):
        return []
    mode = signer.get("mode")
    if mode != "shared":
        return [
            f"receipts:     {mode}, signer {signer.get('address') or '-'} (each member its own)"
        ]
    lines = [
        f"receipts:     shared signer {signer.get('address') or '- (not installed)'} "
        f"(version {signer.get('version')}, sealed under epoch {signer.get('epoch')})"
    ]
    if signer.get("previous"):
        lines.append(
            f"              replaced {signer['previous']}: unregister it on chain "
            f"(teeproxy policy unregister-signer {signer['previous']})"
        )
    return lines


async def _fetch(admin: str) -> dict[str, Any]:
    addr = parse_listen(admin, "--admin") if not admin.startswith("/") else None
    connector: aiohttp.BaseConnector | None = None
    if addr is None:
        connector = aiohttp.UnixConnector(path=admin)
        url = "http://localhost/cluster"
    else:
        url = f"http://{addr.host}:{addr.port}/cluster"
    async with (
        aiohttp.ClientSession(connector=connector) as s,
        s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        raw = await r.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise ValueError("answer too large")
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("answer is not an object")
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - only this command runs an event loop

    admin = args.admin
    if not admin:
        try:
            admin = load(args.config).admin.listen if args.config else ""
        except ConfigError as e:
            print(f"teeproxy: config error: {e}", file=sys.stderr)
            return 2
    if not admin:
        print("teeproxy cluster status: give --admin HOST:PORT or -c CONFIG", file=sys.stderr)
        return 2
    try:
        doc = asyncio.run(_fetch(admin))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, ConfigError) as e:
        print(f"teeproxy cluster status: {admin}: {e}", file=sys.stderr)
        return 1
    if not doc.get("enabled"):
        print("cluster mode is off on this replica", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.json else format_status(doc))
    return 0


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("cluster", help="cluster mode: status of the replicas")
    csub = c.add_subparsers(dest="cluster_command", required=True)
    s = csub.add_parser("status", help="members, measurements, verdicts, key epoch, renewer")
    s.add_argument("--admin", default="", help="the replica's admin listener (HOST:PORT)")
    s.add_argument("--config", "-c", default="", help="or: read admin.listen from this config")
    s.add_argument("--json", action="store_true", help="print the JSON document")
    s.set_defaults(func=cmd_status)
