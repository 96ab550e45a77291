"""``teeproxy policy ...``: the operator CLI for the MeasurementPolicy contract.

See docs/GOVERNANCE.md.

``allow --from-manifest MANIFEST --release-key PEM`` verifies a build manifest's DSSE
signature (docs/REPRODUCIBLE.md) before anything else, then allows exactly the measurement
ids it predicts, labelled with target, image digest and commit; a manifest that does not
verify is refused and nothing is unlocked or sent.

Subcommands: ``create-keystore``, ``deploy``, ``allow``, ``revoke``, ``replace``, ``list``,
``status``, ``set-guardian``, ``transfer-ownership``, ``accept-ownership``; and for receipts
(docs/GOVERNANCE.md "Receipt signers"): ``register-signer https://HOST...`` (or
``--cluster-members``), ``unregister-signer ADDRESS``, ``signer ADDRESS``.

``register-signer`` never takes an address or a measurement id from the operator: it first
verifies the proxy's attestation exactly as ``teeproxy verify`` does (``proxy.cli.attest.attest``:
the RA-TLS certificate, then fresh evidence over the same connection, with the same trust
options), refuses unless that verdict is trusted, and registers the signing address and the
measurement id the verified attestation names. With no measurement option of its own
(``--allowlist``, ``--policy-rpc``, ``--any-measurement``) the measurement is judged by the
very contract it registers in; the contract also refuses a measurement that is not allowed.

For a set of replicas (several URLs, or ``--cluster-members``: the members' join records in
etcd, each naming the URL it is reached at) every replica is verified that way, and the
registration is **all or nothing**: one replica that cannot be verified, is not trusted or
attests no signer, and nothing is registered (exit 1; the report lists each replica). The
distinct (signer, measurement) pairs are then registered, one transaction each: once for a
fleet's shared key, whose members must all report the same address (``--shared``, implied
when the join records say so), one per replica with per-replica keys. A pair the contract
already holds is skipped. ``--dry-run`` previews every transaction.

Signing keys live only in an encrypted JSON keystore (Web3 Secret Storage, as geth and
eth-account write it). The password comes from an environment variable (default
``TEEPROXY_POLICY_PASSWORD``, see ``--password-env``) or an interactive prompt; there is no
option that takes a key or a password on the command line (it would land in shell history
and in ``/proc/<pid>/cmdline``).

Every transaction is first estimated (``eth_estimateGas``): a revert is reported with the
contract's custom error decoded by name (``NotOwner(0x...)``) and nothing is signed.
``--dry-run`` prints the unsigned transaction and stops. Otherwise the CLI signs, sends,
waits for the receipt and prints the transaction hash, the block and the contract's new
version. ``--embedded STATE_DIR`` targets the embedded development chain of a running
``teeproxy demo`` (it reads ``STATE_DIR/governance/embedded-chain.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certmgr.attest.verify import Reason
from certmgr.cluster.etcd import EtcdClient
from certmgr.cluster.keyrelease import JoinRecord
from certmgr.errors import EnvelopeError, EtcdError, PolicyError, ReleaseError
from certmgr.eth import eth_import_guard
from certmgr.keys import atomic_write
from certmgr.policy.model import parse_measurement_id
from proxy.cli.attest import add_attest_options, attest
from proxy.cli.inputs import ask_password
from proxy.cli.manifest import load_manifests
from proxy.config import load
from proxy.errors import ConfigError, UsageError

__all__ = ["add_parsers", "plan_registrations", "run"]

DEFAULT_PASSWORD_ENV = "TEEPROXY_POLICY_PASSWORD"  # noqa: S105 - a variable name
_MAX_KEYSTORE = 64 * 1024
_MAX_LABEL = 64  # MeasurementPolicy.MAX_LABEL_BYTES


@dataclass(frozen=True)
class Target:
    rpc: str
    address: str
    keystore: str
    password_env: str


def add_parsers(sub: Any) -> None:
    """Register ``teeproxy policy`` on the top-level subparsers."""
    p = sub.add_parser("policy", help="govern the on-chain measurement policy (operator)")
    p.add_argument("--rpc", help="Ethereum JSON-RPC URL (default: $TEEPROXY_POLICY_RPC)")
    p.add_argument("--address", help="policy contract (default: $TEEPROXY_POLICY_ADDRESS)")
    p.add_argument("--keystore", help="encrypted JSON keystore that signs transactions")
    p.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        help=f"variable holding the keystore password (default {DEFAULT_PASSWORD_ENV}); "
        "unset: prompt",
    )
    p.add_argument(
        "--embedded",
        metavar="STATE_DIR",
        help="target the embedded development chain of `teeproxy demo` using STATE_DIR",
    )
    p.add_argument("--dry-run", action="store_true", help="print the transaction, do not send")
    p.add_argument(
        "--timeout",
        dest="tx_timeout",
        type=float,
        default=120.0,
        help="RPC and transaction receipt wait (seconds)",
    )
    ps = p.add_subparsers(dest="policy_command", required=True)

    k = ps.add_parser("create-keystore", help="generate a key into a new encrypted keystore")
    k.add_argument("file")
    d = ps.add_parser("deploy", help="deploy a new policy contract")
    d.add_argument("--owner", help="initial owner (default: the keystore's address)")
    a = ps.add_parser(
        "allow", help="allow a measurement id, or the predicted ids of a signed build manifest"
    )
    a.add_argument("measurement_id", nargs="?")
    a.add_argument("--label", default="", help="short human label (<= 64 bytes)")
    a.add_argument(
        "--from-manifest",
        metavar="MANIFEST",
        help="allow exactly the measurement ids a build manifest predicts (its signature "
        "verified first; the label names target, image digest and commit)",
    )
    a.add_argument(
        "--release-key",
        action="append",
        metavar="PEM",
        help="release public key the manifest must be signed by (required with --from-manifest)",
    )
    a.add_argument("--target", action="append", help="only these targets of the manifest")
    r = ps.add_parser("revoke", help="revoke a measurement id (owner or guardian)")
    r.add_argument("measurement_id")
    rp = ps.add_parser("replace", help="revoke OLD and allow NEW in one transaction")
    rp.add_argument("old")
    rp.add_argument("new")
    rp.add_argument("--label", default="")
    ps.add_parser("list", help="list allowed measurement ids")
    st = ps.add_parser("status", help="owner, guardian, version; with an id: is it allowed")
    st.add_argument("measurement_id", nargs="?")
    g = ps.add_parser("set-guardian", help="set the revoke-only guardian (0x0 clears)")
    g.add_argument("guardian")
    t = ps.add_parser("transfer-ownership", help="start a two-step ownership transfer")
    t.add_argument("new_owner")
    ps.add_parser("accept-ownership", help="accept a pending transfer (as the new owner)")
    rs = ps.add_parser(
        "register-signer",
        help="verify a proxy's attestation, then register its receipt signing address for "
        "its measurement (owner)",
    )
    rs.add_argument("urls", nargs="*", metavar="URL", help="https://HOST[:PORT] of each proxy")
    rs.add_argument(
        "--cluster-members",
        action="store_true",
        help="every member of a cluster (its join records in etcd, at the URLs they name)",
    )
    rs.add_argument("--etcd", action="append", default=[], metavar="URL", help="etcd endpoint")
    rs.add_argument("--cluster", default="", metavar="NAME", help="the cluster's name")
    rs.add_argument(
        "--config", "-c", default="", help="or: the [cluster] settings of this teeproxy config"
    )
    rs.add_argument(
        "--shared",
        action="store_true",
        help="all replicas must attest one signing address (the fleet's shared key)",
    )

    add_attest_options(rs)  # the trust options of `teeproxy verify`; its --timeout connects
    us = ps.add_parser("unregister-signer", help="unregister a receipt signer (owner or guardian)")
    us.add_argument("signer")
    sg = ps.add_parser("signer", help="a receipt signer's measurement and whether it is allowed")
    sg.add_argument("signer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with eth_import_guard():  # web3 and eth-account raise the recursion limit on import
        import eth_account  # noqa: F401, PLC0415 - eth stack: slow import
        import web3  # noqa: F401, PLC0415 - web3: slow import
    try:
        return _run(args)
    except UsageError as e:
        print(f"teeproxy policy: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.policy_command == "create-keystore":
        return _create_keystore(Path(args.file), args.password_env)
    target = _target(args)
    if args.policy_command in ("list", "status", "signer"):
        if args.policy_command == "signer":
            _address(args.signer)
        return asyncio.run(_read(args, target))
    if not target.keystore:
        raise UsageError("--keystore is required to sign a transaction")
    if args.policy_command == "allow":
        # The manifest's signature first: nothing is unlocked or sent for one that fails.
        args.allow_list = _allow_list(args)
    if args.policy_command == "register-signer":
        # The attestation first: no password is asked for a proxy that does not verify.
        args.registrations = _attested_set(args, target)
    # Bad arguments fail before the password is asked for.
    for name in ("measurement_id", "old", "new"):
        if getattr(args, name, None):
            _mid(getattr(args, name))
    if args.policy_command == "unregister-signer":
        _address(args.signer)
    for name in ("guardian", "new_owner", "owner"):
        value = getattr(args, name, None)
        if value and value not in ("0", "0x0", "none"):
            _address(value)
    key = _unlock(Path(target.keystore), target.password_env)
    if args.policy_command == "allow":
        for mid, label in args.allow_list:
            args.measurement_id, args.label = mid, label
            if len(args.allow_list) > 1:
                print(f"allow {mid} ({label})", flush=True)
            rc = asyncio.run(_transact(args, target, key))
            if rc != 0:
                return rc
        return 0
    return asyncio.run(_transact(args, target, key))


def manifest_label(target: str, image_digest: str, commit: str) -> str:
    """The on-chain label of a manifest's id: target, image digest and commit, shortened to
    the contract's 64-byte limit (12 hex digits of each name them unambiguously enough for a
    person; the manifest holds the full values)."""
    label = f"{target} img:{image_digest.removeprefix('sha256:')[:12]} git:{commit[:12]}"
    return label.encode()[:_MAX_LABEL].decode("ascii", "ignore")


def _allow_list(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(measurement id, label) pairs to allow: the one given, or a verified manifest's."""
    if not args.from_manifest:
        if not args.measurement_id:
            raise UsageError("give a measurement id or --from-manifest MANIFEST")
        if args.release_key or args.target:
            raise UsageError("--release-key and --target go with --from-manifest")
        return [(args.measurement_id, args.label)]
    if args.measurement_id:
        raise UsageError("give a measurement id or --from-manifest, not both")
    try:
        [m] = load_manifests([args.from_manifest], args.release_key or [])
    except ReleaseError as e:
        raise UsageError(f"manifest refused, nothing sent: {e}") from e
    wanted = set(args.target or ())
    unknown = wanted - {p.target for p in m.predictions}
    if unknown:
        raise UsageError(f"the manifest predicts no target {', '.join(sorted(unknown))}")
    out = [
        (p.measurement_id, args.label or manifest_label(p.target, m.image_digest, m.commit))
        for p in m.predictions
        if not wanted or p.target in wanted
    ]
    print(
        f"manifest {args.from_manifest}: signature OK (key {m.key_id[:16]}), image "
        f"{m.image_digest}, commit {m.commit}",
        flush=True,
    )
    return out


def _target(args: argparse.Namespace) -> Target:
    rpc = args.rpc or os.environ.get("TEEPROXY_POLICY_RPC", "")
    address = args.address or os.environ.get("TEEPROXY_POLICY_ADDRESS", "")
    keystore = args.keystore or ""
    if args.embedded:
        info_path = Path(args.embedded) / "governance" / "embedded-chain.json"
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {info_path} (is `teeproxy demo` running?): {e}") from e
        rpc = rpc or str(info["rpc"])
        address = address or str(info["contract"])
        keystore = keystore or str(info["keystore"])
    if not rpc:
        raise UsageError("no RPC endpoint: pass --rpc URL (or --embedded STATE_DIR)")
    if not address and args.policy_command != "deploy":
        raise UsageError("no contract: pass --address 0x... (or --embedded STATE_DIR)")
    return Target(rpc, address, keystore, args.password_env)


# -- keystore -----------------------------------------------------------------------------------


def _create_keystore(path: Path, env: str) -> int:
    from eth_account import Account  # noqa: PLC0415 - eth stack: slow import

    if path.exists():
        raise UsageError(f"{path} exists: refusing to overwrite a keystore")
    password = ask_password(env, "keystore", confirm=True)
    if len(password) < 8:
        raise UsageError("use a password of at least 8 characters")
    acct = Account.create()

    atomic_write(path, json.dumps(Account.encrypt(acct.key, password)).encode(), 0o600)
    print(f"keystore {path}: address {acct.address}")
    return 0


def _unlock(path: Path, env: str) -> Any:
    """Decrypt the keystore into a LocalAccount (in memory only)."""
    from eth_account import Account  # noqa: PLC0415 - eth stack: slow import

    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEYSTORE + 1)
        if len(data) > _MAX_KEYSTORE:
            raise UsageError(f"{path} is too large for a keystore")
        keyfile = json.loads(data)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read keystore {path}: {e}") from e
    password = ask_password(env, "keystore")
    try:
        key = Account.decrypt(keyfile, password)
    except ValueError as e:
        raise UsageError(f"cannot decrypt keystore {path}: {e}") from e
    return Account.from_key(key)


# -- reads -------------------------------------------------------------------------------------


def _mid(text: str) -> bytes:
    try:
        return parse_measurement_id(text)
    except PolicyError as e:
        raise UsageError(str(e)) from e


async def _read(args: argparse.Namespace, target: Target) -> int:
    from web3.exceptions import Web3Exception  # noqa: PLC0415 - web3: slow import

    from certmgr.policy.artifacts import ABI  # noqa: PLC0415 - eth stack: slow import
    from certmgr.policy.rpc import make_web3  # noqa: PLC0415 - web3: slow import

    w3 = make_web3(target.rpc, args.tx_timeout)
    try:
        c = w3.eth.contract(address=w3.to_checksum_address(target.address), abi=ABI)
        block = await w3.eth.block_number
        if args.policy_command == "signer":
            return await _read_signer(c, _address(args.signer), block)
        version, ids, labels = await c.functions.snapshot().call(block_identifier=block)
        if args.policy_command == "list":
            print(f"policy {target.address} version {version} at block {block}:")
            for mid, label in zip(ids, labels, strict=True):
                print(f"  0x{bytes(mid).hex()}  {label}")
            if not ids:
                print("  (no measurement allowed)")
            return 0
        owner = await c.functions.owner().call(block_identifier=block)
        pending = await c.functions.pendingOwner().call(block_identifier=block)
        guardian = await c.functions.guardian().call(block_identifier=block)
        print(f"contract:      {target.address} (chain {await w3.eth.chain_id}, block {block})")
        print(f"version:       {version}")
        print(f"measurements:  {len(ids)}")
        print(f"owner:         {owner}")
        print(f"pending owner: {pending if int(pending, 16) else '-'}")
        print(f"guardian:      {guardian if int(guardian, 16) else '-'}")
        if args.measurement_id:
            mid = _mid(args.measurement_id)
            allowed, label = await c.functions.measurement(mid).call(block_identifier=block)
            state = f"ALLOWED ({label})" if allowed else "NOT ALLOWED"
            print(f"0x{mid.hex()}: {state}")
            return 0 if allowed else 3
        return 0
    except (Web3Exception, OSError, ValueError) as e:
        raise UsageError(f"{target.rpc}: {type(e).__name__}: {e}") from e
    finally:
        await w3.provider.disconnect()


async def _read_signer(c: Any, signer: str, block: int) -> int:
    """``signer ADDRESS``: exit 0 when its receipts verify on chain now, 3 when they do not."""
    mid = bytes(await c.functions.signerMeasurement(signer).call(block_identifier=block))
    if mid == bytes(32):
        print(f"signer {signer}: NOT REGISTERED (block {block})")
        return 3
    allowed, label = await c.functions.measurement(mid).call(block_identifier=block)
    state = f"ALLOWED ({label})" if allowed else "NOT ALLOWED: its receipts do not verify"
    print(f"signer {signer}: registered for 0x{mid.hex()} (block {block})")
    print(f"measurement 0x{mid.hex()}: {state}")
    return 0 if allowed else 3


# -- attestation (register-signer) -------------------------------------------------------------


def _attested_signer(args: argparse.Namespace, target: Target) -> tuple[bytes, bytes]:
    """Verify ``args.url`` like ``teeproxy verify``; its (signing address, measurement id).

    Raises :class:`UsageError` unless the verdict (certificate and fresh evidence) is trusted
    and names a signing address. Without a measurement option of its own, the measurement is
    judged by the target contract (one endpoint: the one we are about to send to).
    """

    if not (args.allowlist or args.policy_rpc or args.any_measurement):
        args.policy_rpc = [target.rpc]
        args.policy_address = target.address
        args.policy_quorum = 1
    elif args.policy_rpc and not args.policy_address:
        args.policy_address = target.address  # a quorum of endpoints reading this contract
    try:
        result = attest(args)
    except UsageError as e:
        raise UsageError(f"cannot verify the attestation of {args.url}: {e}") from e
    report = result.report
    if not result.trusted:
        failures = list(report.get("failures", []))
        evidence = report.get("evidence")
        if isinstance(evidence, dict):
            failures += [{**f, "reason": "evidence " + f["reason"]} for f in evidence["failures"]]
        lines = "".join(f"\n  - {f['reason']}: {f['message']}" for f in failures)
        hint = ""
        not_allowed = Reason.MEASUREMENT.value
        if any(f["reason"] == not_allowed for f in failures) and "measurement_id" in report:
            hint = f"\n  (allow it first: teeproxy policy allow {report['measurement_id']})"
        raise UsageError(
            f"the attestation of {args.url} is NOT TRUSTED; nothing registered:{lines}{hint}"
        )
    signer, mid = result.signing_address, result.measurement_id
    if signer is None or mid is None:
        raise UsageError(
            f"{args.url} attests no receipt signing address (are [receipts] enabled on the "
            "proxy?); nothing registered"
        )
    simulated = " (SIMULATED attestation: development only)" if report.get("simulated") else ""
    out = sys.stderr if args.dry_run else sys.stdout  # a dry run prints only JSON on stdout
    print(f"attested {args.url}: TRUSTED{simulated}", file=out)
    print(f"  measurement:     0x{mid.hex()}", file=out)
    print(f"  signing address: {_address('0x' + signer.hex())}", file=out, flush=True)
    return signer, mid


@dataclass(frozen=True)
class Replica:
    """One replica to verify: a label for the report and the URL it is reached at."""

    label: str
    url: str
    shared: bool = False  # its join record says it signs with the fleet's key
    problem: str = ""  # why it cannot be verified at all (no URL advertised)


def _cluster_replicas(args: argparse.Namespace) -> list[Replica]:
    """The members' join records under ``/teeproxy/NAME/members/`` (etcd is untrusted: the
    records only say where to look; the attestation verified there is what counts)."""

    endpoints, name = list(args.etcd), args.cluster
    if args.config:
        try:
            c = load(args.config).cluster
        except ConfigError as e:
            raise UsageError(f"{args.config}: {e}") from e
        endpoints, name = endpoints or list(c.etcd_endpoints), name or c.name
    if not endpoints or not name:
        raise UsageError("--cluster-members needs --etcd URL and --cluster NAME (or -c CONFIG)")

    async def read() -> list[tuple[bytes, bytes]]:
        client = EtcdClient(tuple(endpoints), timeout=args.timeout)
        try:
            kvs, _ = await client.get_prefix(f"/teeproxy/{name}/members/".encode())
            return [(kv.key, kv.value) for kv in kvs]
        finally:
            await client.close()

    try:
        kvs = asyncio.run(read())
    except EtcdError as e:
        raise UsageError(f"cannot read the members of cluster {name!r} from etcd: {e}") from e
    out: list[Replica] = []
    for key, value in kvs:
        label = key.decode(errors="replace").rsplit("/", 1)[-1][:64]
        try:
            rec = JoinRecord.parse(value)
        except EnvelopeError as e:
            out.append(Replica(label, "", problem=f"unreadable join record: {e}"))
            continue
        if rec.member_id != label:
            out.append(Replica(label, "", problem=f"join record names {rec.member_id!r}"))
            continue
        problem = "" if rec.url else "advertises no URL (set [cluster] advertise_url)"
        out.append(Replica(label, rec.url, rec.receipt_signer == "shared", problem))
    if not out:
        raise UsageError(f"cluster {name!r} has no members in etcd; nothing registered")
    return out


def _attested_set(args: argparse.Namespace, target: Target) -> list[tuple[bytes, bytes]]:
    """Verify every replica (URLs and/or ``--cluster-members``); the distinct (signing
    address, measurement id) pairs to register. All or nothing: raises
    :class:`UsageError` listing the replicas that failed, and registers none."""
    replicas = [Replica(u, u) for u in args.urls]
    if args.cluster_members:
        replicas += _cluster_replicas(args)
    if not replicas:
        raise UsageError("register-signer: give one or more https://HOST URLs or --cluster-members")
    if len(replicas) == 1 and not replicas[0].problem:
        args.url = replicas[0].url
        return [_attested_signer(args, target)]
    good: dict[str, tuple[bytes, bytes]] = {}
    failed: list[str] = []
    out = sys.stderr if args.dry_run else sys.stdout
    for r in replicas:
        if r.problem:
            failed.append(f"{r.label}: {r.problem}")
            continue
        one = argparse.Namespace(**vars(args))
        one.url = r.url
        try:
            good[r.label] = _attested_signer(one, target)
        except UsageError as e:
            failed.append(f"{r.label}: {e}")
    shared = args.shared or any(r.shared for r in replicas)
    pairs = plan_registrations(good, failed, len(replicas), shared=shared)
    print(
        f"{len(replicas)} replicas verified: {len(pairs)} signer(s) to register"
        + (" (shared key)" if shared else ""),
        file=out,
        flush=True,
    )
    return pairs


def plan_registrations(
    good: dict[str, tuple[bytes, bytes]], failed: list[str], total: int, *, shared: bool
) -> list[tuple[bytes, bytes]]:
    """The distinct (signer, measurement id) pairs to register for a set of replicas
    (``good``: label -> attested pair; ``failed``: the replicas that were not), or a
    :class:`UsageError` naming every problem: all or nothing (pure)."""
    failed = list(failed)
    addresses = {signer for signer, _ in good.values()}
    if shared and len(addresses) > 1:
        listing = ", ".join(f"{k} 0x{v[0].hex()}" for k, v in sorted(good.items()))
        failed.append(
            f"the replicas share one signing key but attest {len(addresses)} addresses "
            f"({listing}): a replacement in progress? retry when `teeproxy cluster status` "
            "shows one"
        )
    by_signer: dict[bytes, set[bytes]] = {}
    for signer, mid in good.values():
        by_signer.setdefault(signer, set()).add(mid)
    for signer, mids in sorted(by_signer.items()):
        if len(mids) > 1:
            failed.append(
                f"0x{signer.hex()} is attested for {len(mids)} measurements "
                f"({', '.join('0x' + m.hex() for m in sorted(mids))}); a signer is registered "
                "for one: run the replicas of one build per shared key"
            )
    if failed:
        lines = "".join(f"\n  - {f}" for f in failed)
        raise UsageError(
            f"{total - len(good)} of {total} replicas not verified, or the set is not "
            f"consistent; nothing registered:{lines}"
        )
    return sorted((signer, next(iter(mids))) for signer, mids in by_signer.items())


# -- transactions ------------------------------------------------------------------------------


def _call_for(args: argparse.Namespace, c: Any, sender: str) -> tuple[str, Any]:
    cmd = args.policy_command
    zero = "0x" + "00" * 20
    if cmd == "allow":
        return "allow", c.functions.allow(_mid(args.measurement_id), args.label)
    if cmd == "revoke":
        return "revoke", c.functions.revoke(_mid(args.measurement_id))
    if cmd == "replace":
        return "replace", c.functions.replace(_mid(args.old), _mid(args.new), args.label)
    if cmd == "set-guardian":
        guardian = zero if args.guardian in ("0", "0x0", "none") else args.guardian
        return "setGuardian", c.functions.setGuardian(_address(guardian))
    if cmd == "transfer-ownership":
        return "transferOwnership", c.functions.transferOwnership(_address(args.new_owner))
    if cmd == "accept-ownership":
        return "acceptOwnership", c.functions.acceptOwnership()
    if cmd == "unregister-signer":
        return "unregisterSigner", c.functions.unregisterSigner(_address(args.signer))
    raise UsageError(f"unknown command {cmd} for {sender}")


def _address(text: str) -> str:
    from eth_utils.address import is_hex_address, to_checksum_address  # noqa: PLC0415 - eth stack: slow import

    if not is_hex_address(text):
        raise UsageError(f"not an address: {text!r}")
    return str(to_checksum_address(text))


def _revert_text(e: Exception) -> str:
    from certmgr.policy.contract import decode_revert  # noqa: PLC0415 - eth stack: slow import

    data = getattr(e, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return decode_revert(bytes.fromhex(data[2:]))
        except ValueError:
            pass
    return str(e)


async def _transact(args: argparse.Namespace, target: Target, acct: Any) -> int:
    from web3.exceptions import ContractLogicError, Web3Exception  # noqa: PLC0415 - web3: slow import

    from certmgr.policy.artifacts import ABI, BYTECODE  # noqa: PLC0415 - eth stack: slow import
    from certmgr.policy.rpc import make_web3  # noqa: PLC0415 - web3: slow import

    w3 = make_web3(target.rpc, args.tx_timeout)
    try:
        chain_id = await w3.eth.chain_id
        sender = acct.address
        if args.policy_command == "deploy":
            owner = _address(args.owner) if args.owner else sender
            name = "deploy"
            fn = w3.eth.contract(abi=ABI, bytecode=BYTECODE).constructor(owner)
        elif args.policy_command == "register-signer":
            c = w3.eth.contract(address=w3.to_checksum_address(target.address), abi=ABI)
            return await _register_signers(args, target, w3, c, acct=acct, chain_id=chain_id)
        else:
            c = w3.eth.contract(address=w3.to_checksum_address(target.address), abi=ABI)
            name, fn = _call_for(args, c, sender)
        try:
            gas = await fn.estimate_gas({"from": sender})
        except ContractLogicError as e:
            print(f"teeproxy policy: {name} would revert: {_revert_text(e)}", file=sys.stderr)
            return 1
        nonce = await w3.eth.get_transaction_count(sender, "pending")
        tx = await _build(w3, fn, sender, chain_id=chain_id, gas=gas, nonce=nonce)
        if args.dry_run:
            print(json.dumps(_shown(name, tx), indent=2, sort_keys=True))
            return 0
        return await _send(args, target, w3, acct=acct, name=name, tx=tx)
    except TimeoutError as e:
        raise UsageError(f"no receipt within {args.tx_timeout:g} s") from e
    except (Web3Exception, OSError, ValueError) as e:
        raise UsageError(f"{target.rpc}: {type(e).__name__}: {e}") from e
    finally:
        await w3.provider.disconnect()


async def _build(w3: Any, fn: Any, sender: str, *, chain_id: int, gas: int, nonce: int) -> Any:
    latest = await w3.eth.get_block("latest")
    base = int(latest.get("baseFeePerGas", 0) or 0)
    tip = int(await w3.eth.max_priority_fee)
    return await fn.build_transaction(
        {
            "from": sender,
            "chainId": chain_id,
            "nonce": nonce,
            "gas": gas * 6 // 5,  # 20 % headroom over the estimate
            "maxPriorityFeePerGas": tip,
            "maxFeePerGas": 2 * base + tip,
        }
    )


def _shown(name: str, tx: Any) -> dict[str, Any]:
    shown = {k: (v if isinstance(v, int | str) else str(v)) for k, v in tx.items()}
    return {"function": name, "transaction": shown}


async def _register_signers(
    args: argparse.Namespace, target: Target, w3: Any, c: Any, *, acct: Any, chain_id: int
) -> int:
    """registerSigner for each attested (signer, measurement): all checked and estimated
    before the first is sent (a refusal registers nothing); one already in place skipped."""
    from web3.exceptions import ContractLogicError  # noqa: PLC0415 - web3: slow import

    sender = acct.address
    todo: list[tuple[str, bytes, Any, int]] = []
    for raw_signer, mid in args.registrations:
        signer = _address("0x" + raw_signer.hex())
        if not await c.functions.isAllowed(mid).call():
            raise UsageError(
                f"measurement 0x{mid.hex()} is not allowed by {target.address}: "
                f"allow it first (`teeproxy policy allow 0x{mid.hex()}`); nothing registered"
            )
        if bytes(await c.functions.signerMeasurement(signer).call()) == mid:
            print(f"signer {signer}: already registered for 0x{mid.hex()}", file=sys.stderr)
            continue
        fn = c.functions.registerSigner(signer, mid)
        try:
            gas = await fn.estimate_gas({"from": sender})
        except ContractLogicError as e:
            print(
                f"teeproxy policy: registerSigner({signer}) would revert: {_revert_text(e)}; "
                "nothing registered",
                file=sys.stderr,
            )
            return 1
        todo.append((signer, mid, fn, gas))
    nonce = await w3.eth.get_transaction_count(sender, "pending")
    txs = [
        (signer, mid, await _build(w3, fn, sender, chain_id=chain_id, gas=gas, nonce=nonce + i))
        for i, (signer, mid, fn, gas) in enumerate(todo)
    ]
    if args.dry_run:
        shown = [_shown("registerSigner", tx) for _, _, tx in txs]
        print(json.dumps(shown[0] if len(shown) == 1 else shown, indent=2, sort_keys=True))
        return 0
    for signer, mid, tx in txs:
        rc = await _send(args, target, w3, acct=acct, name="registerSigner", tx=tx)
        print(f"signer:      {signer}")
        print(f"measurement: 0x{mid.hex()}", flush=True)
        if rc:
            return rc
    if not txs:
        print("every attested signer is registered already: nothing sent")
    return 0


async def _send(
    args: argparse.Namespace, target: Target, w3: Any, *, acct: Any, name: str, tx: Any
) -> int:
    """Sign, send, wait; print the hash, block and the contract's version (1: reverted)."""
    from web3.exceptions import ContractLogicError  # noqa: PLC0415 - web3: slow import

    from certmgr.policy.artifacts import ABI  # noqa: PLC0415 - eth stack: slow import

    sender = acct.address
    signed = acct.sign_transaction(tx)
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    print(f"sent {name}: 0x{bytes(tx_hash).hex()}", flush=True)
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=args.tx_timeout)
    if receipt["status"] != 1:
        # Reverted after a successful estimate (someone changed the state in between):
        # replay the call at the block to get the custom error.
        reason = "reverted"
        try:
            await w3.eth.call(
                {"from": sender, "to": tx.get("to"), "data": tx["data"]},
                receipt["blockNumber"] - 1,
            )
        except ContractLogicError as e:
            reason = _revert_text(e)
        print(f"teeproxy policy: {name} reverted on chain: {reason}", file=sys.stderr)
        return 1
    address = receipt.get("contractAddress") or target.address
    c = w3.eth.contract(address=w3.to_checksum_address(address), abi=ABI)
    version = await c.functions.version().call(block_identifier=receipt["blockNumber"])
    print(f"transaction: 0x{bytes(tx_hash).hex()}")
    print(f"block:       {receipt['blockNumber']}")
    if args.policy_command == "deploy":
        print(f"contract:    {address}")
    print(f"version:     {version}")
    return 0


def demo_banner(cfg: Any, measurement_id: bytes | None = None) -> str:
    """The governance part of the ``teeproxy demo`` banner ("" when governance is off).

    ``measurement_id``: the id the running proxy governs itself by (the simulated quote's).
    """
    g = cfg.governance
    if g.mode == "off" or not g.embedded_chain:
        return ""
    from certmgr.policy.devchain import DEV_KEYSTORE_PASSWORD  # noqa: PLC0415 - py-evm: slow import
    from proxy.control.governance import DEV_MEASUREMENT_ID  # noqa: PLC0415 - prometheus_client

    state = cfg.state_dir
    mid = "0x" + (measurement_id or DEV_MEASUREMENT_ID).hex()
    what = (
        "the simulated quote's measurement, the id `teeproxy verify` reports"
        if measurement_id is not None and measurement_id != DEV_MEASUREMENT_ID
        else "a fixed development id"
    )
    env = f"{DEFAULT_PASSWORD_ENV}={DEV_KEYSTORE_PASSWORD}"
    bound = 2 * g.refresh_period
    signer = ""
    if cfg.receipts.enabled and cfg.attestation.provider != "none":
        signer = f"""Its receipt signing address is registered for that id, so its receipts verify
on chain (MeasurementPolicy.verifyReceipt) until the id is revoked:
  teeproxy policy --embedded {state} signer $(cat {state}/signing/address)
"""
    return f"""
Governance ({g.mode}): an in-process EVM (development only, NOT a real chain) runs the
MeasurementPolicy contract; this demo's measurement id ({what}) is allowed:
  teeproxy policy --embedded {state} list
{signer}Revoke it; within {bound:g} s the proxy answers 503 and then stops listening:
  {env} teeproxy policy --embedded {state} revoke {mid}
Allow it again:
  {env} teeproxy policy --embedded {state} allow {mid} --label demo
"""
