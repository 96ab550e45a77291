"""``teeproxy measure``: the measurement id of a quote, or the one a release will have.

- ``measure quote FILE [--json]`` (also ``measure FILE``, the older spelling): the id of a
  quote, report or attestation document (``proxy.cli.attest.cmd_measure``).
- ``measure predict dstack|simulated|snp ... [--json]``: the registers and the measurement
  id predicted from release inputs (``certmgr.release``; docs/REPRODUCIBLE.md). ``--json``
  prints ``{"predictions": [...], ...}``, the form ``teeproxy release manifest
  --prediction`` reads.

Exit codes: 0 done, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certmgr.errors import ReleaseError
from certmgr.release.dstack_compose import (
    MAX_APP_COMPOSE,
    AppComposeOptions,
    DstackRuntime,
    app_compose_json,
    check_image_references,
    compose_hash,
    key_provider_payload,
)
from certmgr.release.layout import image_digest
from certmgr.release.predict import (
    Prediction,
    TdxOsMeasurement,
    parse_hex,
    predict_dstack,
    predict_simulated,
)
from certmgr.release.snp_launch import DEFAULT_GUEST_FEATURES, SnpLaunch, predict_launch
from proxy.cli.attest import cmd_measure
from proxy.cli.inputs import read_capped
from proxy.errors import UsageError

__all__ = ["add_parsers", "legacy_argv"]

_SUBCOMMANDS = ("quote", "predict", "-h", "--help")
_MAX_INPUT_FILE = 1024 * 1024


def legacy_argv(argv: Sequence[str]) -> list[str]:
    """``measure FILE`` (before ``measure`` had subcommands) is ``measure quote FILE``."""
    out = list(argv)
    if len(out) > 1 and out[0] == "measure" and out[1] not in _SUBCOMMANDS:
        out.insert(1, "quote")
    return out


def _hex(text: str | None, what: str, size: int | None = None) -> bytes | None:
    return None if text is None else parse_hex(text, what, size)


def _digest(args: argparse.Namespace) -> str | None:
    if args.image and args.image_digest:
        raise UsageError("give --image DIR or --image-digest, not both")
    if args.image:
        return image_digest(Path(args.image))
    if args.image_digest:
        return str(args.image_digest)
    return None


def _app_compose(args: argparse.Namespace) -> tuple[bytes, str | None]:
    """The exact app-compose.json bytes, and the image digest they were checked against."""
    digest = _digest(args)
    if args.app_compose:
        if args.compose:
            raise UsageError("give --compose FILE or --app-compose FILE, not both")
        data = read_capped(args.app_compose, MAX_APP_COMPOSE)
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise UsageError(f"{args.app_compose}: not JSON: {e}") from e
        text = doc.get("docker_compose_file") if isinstance(doc, dict) else None
        if not isinstance(text, str):
            raise UsageError(f"{args.app_compose}: no docker_compose_file")
    elif args.compose:
        try:
            text = read_capped(args.compose, MAX_APP_COMPOSE).decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{args.compose}: not UTF-8") from e
        pre = (
            read_capped(args.pre_launch_script, _MAX_INPUT_FILE).decode("utf-8")
            if args.pre_launch_script
            else ""
        )
        options = AppComposeOptions(
            name=args.name,
            kms_enabled=args.kms,
            gateway_enabled=args.gateway,
            local_key_provider_enabled=args.local_key_provider,
            key_provider_id=args.key_provider_id,
            public_logs=args.public_logs,
            public_sysinfo=args.public_sysinfo,
            allowed_envs=tuple(args.allowed_env or ()),
            no_instance_id=args.no_instance_id,
            secure_time=args.secure_time,
            pre_launch_script=pre,
            swap_size=args.swap_size,
        )
        data = app_compose_json(text, options)
    else:
        raise UsageError("give --compose docker-compose.yml (or --app-compose app-compose.json)")
    if digest is None:
        raise UsageError("give the image: --image OCI_LAYOUT_DIR or --image-digest sha256:...")
    check_image_references(text, digest)
    if args.write_app_compose:
        Path(args.write_app_compose).write_bytes(data)
    return data, digest


def _os(args: argparse.Namespace) -> TdxOsMeasurement:
    if args.os_measurement:
        try:
            doc = json.loads(read_capped(args.os_measurement, _MAX_INPUT_FILE))
        except (UnicodeDecodeError, ValueError) as e:
            raise UsageError(f"{args.os_measurement}: not JSON: {e}") from e
        return TdxOsMeasurement.from_json(doc)
    values = {"mrtd": args.mrtd, "rtmr0": args.rtmr0, "rtmr1": args.rtmr1, "rtmr2": args.rtmr2}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise UsageError(
            "give the dstack OS image's measurement: --os-measurement FILE or "
            f"--mrtd/--rtmr0/--rtmr1/--rtmr2 (missing: {', '.join(missing)})"
        )
    return TdxOsMeasurement.from_json(values)


def _key_provider(text: str) -> bytes:
    name, _, key = text.partition(":")
    return key_provider_payload(name, key.lower())


def _app_events(items: Sequence[str]) -> tuple[tuple[str, bytes], ...]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--app-event {item!r}: expected NAME=HEX")
        payload = _hex(value, f"--app-event {name}")
        out.append((name, payload or b""))
    return tuple(out)


def _runtime(args: argparse.Namespace, no_instance_id: bool) -> DstackRuntime:
    instance = _hex(args.instance_id, "--instance-id", 20) or b""
    if no_instance_id and instance:
        raise UsageError("the compose sets no_instance_id: dstack measures an empty instance-id")
    if not no_instance_id and not instance:
        raise UsageError(
            "--instance-id HEX is required: dstack derives it per instance from a random seed "
            "(or set no_instance_id in the compose to make RTMR3 predictable)"
        )
    return DstackRuntime(
        key_provider=_key_provider(args.key_provider),
        instance_id=instance,
        app_id=_hex(args.app_id, "--app-id", 20),
        storage_fs=args.storage_fs,
        gpu_policy_hash=_hex(args.gpu_policy_hash, "--gpu-policy-hash"),
        mr_kms=_hex(args.mr_kms, "--mr-kms"),
        os_image_hash=_hex(args.os_image_hash, "--os-image-hash", 32),
        app_events=_app_events(args.app_event or ()),
    )


def _print(preds: list[Prediction], extra: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({**extra, "predictions": [p.to_json() for p in preds]}, indent=2))
        return
    for key, value in extra.items():
        if isinstance(value, str) and key != "app_compose":
            print(f"{key + ':':<16} {value}")
    for p in preds:
        print(f"target:          {p.target} ({p.measurement.tee.value})")
        print(f"measurement id:  0x{p.measurement_id.hex()}")
        for name, value in p.measurement.registers().items():
            print(f"  {name:<13} {value}")
        events = p.inputs.get("runtime_events")
        if isinstance(events, list):
            print("  RTMR3 events:")
            for e in events:
                print(f"    {e['event']:<17} {e['payload'] or '-'}")


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        preds, extra = _predict(args)
    except (UsageError, ReleaseError) as e:
        print(f"teeproxy measure predict: {e}", file=sys.stderr)
        return 2
    _print(preds, extra, args.json)
    return 0


def _predict(args: argparse.Namespace) -> tuple[list[Prediction], dict[str, Any]]:
    if args.predict_target == "snp":
        launch = SnpLaunch(
            ovmf=Path(args.ovmf),
            vcpus=args.vcpus,
            vcpu_type=args.vcpu_type,
            kernel=Path(args.kernel) if args.kernel else None,
            initrd=Path(args.initrd) if args.initrd else None,
            cmdline=args.append or "",
            guest_features=args.guest_features,
            vmm=args.vmm_type,
        )
        host = _hex(args.host_data, "--host-data", 32) or bytes(32)
        return [predict_launch(launch, host_data=host)], {}
    data, digest = _app_compose(args)
    compose = compose_hash(data)
    recorded = {"app_compose": data.decode("utf-8"), "image_digest": digest}
    extra = {"image_digest": digest or "", "compose_hash": compose.hex()}
    if args.predict_target == "simulated":
        return [predict_simulated(compose, inputs=recorded)], extra
    no_instance_id = bool(json.loads(data).get("no_instance_id", False))
    pred = predict_dstack(
        _os(args),
        compose,
        _runtime(args, no_instance_id),
        mr_config_id=not args.no_mr_config_id,
        inputs=recorded,
    )
    return [pred], extra


def _compose_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the app (dstack app-compose.json, as vmm-cli.py compose writes it)")
    g.add_argument("--compose", metavar="FILE", help="docker-compose.yml (images by digest)")
    g.add_argument("--app-compose", metavar="FILE", help="an app-compose.json, hashed as is")
    g.add_argument("--image", metavar="DIR", help="the OCI image layout the compose must name")
    g.add_argument("--image-digest", metavar="sha256:HEX", help="...or the image digest")
    g.add_argument("--name", default="teeproxy", help="app name (default teeproxy)")
    g.add_argument("--kms", action="store_true", help="kms_enabled")
    g.add_argument("--gateway", action="store_true", help="gateway_enabled")
    g.add_argument("--local-key-provider", action="store_true")
    g.add_argument("--key-provider-id", default="", metavar="HEX")
    g.add_argument("--public-logs", action="store_true")
    g.add_argument("--public-sysinfo", action="store_true")
    g.add_argument("--allowed-env", action="append", metavar="NAME")
    g.add_argument("--no-instance-id", action="store_true", help="no_instance_id (predictable)")
    g.add_argument("--secure-time", action="store_true")
    g.add_argument("--pre-launch-script", metavar="FILE")
    g.add_argument("--swap-size", type=int, default=0, metavar="BYTES")
    g.add_argument("--write-app-compose", metavar="FILE", help="write the app-compose.json")
    p.add_argument("--json", action="store_true", help="print JSON (for release manifest)")


def add_parsers(sub: Any) -> None:
    """Register ``teeproxy measure`` (quote, predict)."""
    m = sub.add_parser(
        "measure", help="the measurement id of a quote, or a release's predicted one"
    )
    ms = m.add_subparsers(dest="measure_command", required=True)
    q = ms.add_parser("quote", help="print the measurement id (bytes32) of a quote")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="also print the registers")
    q.set_defaults(func=cmd_measure)

    p = ms.add_parser("predict", help="predict the registers and measurement id of a release")
    ps = p.add_subparsers(dest="predict_target", required=True)

    d = ps.add_parser("dstack", help="Intel TDX under dstack: compose hash, RTMR3, MRCONFIGID")
    _compose_options(d)
    o = d.add_argument_group("the dstack OS image (its published MRTD and RTMR0-2)")
    o.add_argument("--os-measurement", metavar="FILE", help='{"mrtd","rtmr0","rtmr1","rtmr2"}')
    for reg in ("mrtd", "rtmr0", "rtmr1", "rtmr2"):
        o.add_argument(f"--{reg}", metavar="HEX")
    r = d.add_argument_group("the deployment (RTMR3 inputs not fixed by the source)")
    r.add_argument(
        "--key-provider",
        required=True,
        metavar="none|kms:HEX|local-sgx:HEX",
        help="the key-provider event (name and key id)",
    )
    r.add_argument("--instance-id", metavar="HEX", help="20 bytes (absent with no_instance_id)")
    r.add_argument("--app-id", metavar="HEX", help="20 bytes (default: compose hash[:20])")
    r.add_argument("--storage-fs", choices=("zfs", "ext4"), default="zfs")
    r.add_argument("--os-image-hash", metavar="HEX", help="measured when a KMS gives the keys")
    r.add_argument("--mr-kms", metavar="HEX", help="the KMS's aggregated MR (newer dstack)")
    r.add_argument("--gpu-policy-hash", metavar="HEX")
    r.add_argument("--app-event", action="append", metavar="NAME=HEX", help="after system-ready")
    r.add_argument("--no-mr-config-id", action="store_true", help="the VMM sets no MRCONFIGID")
    d.set_defaults(func=cmd_predict)

    s = ps.add_parser(
        "simulated",
        help="teeproxy's simulated TD with simulated_mr_config_id = the compose's dstack "
        "MRCONFIGID (development only)",
    )
    _compose_options(s)
    s.set_defaults(func=cmd_predict)

    n = ps.add_parser("snp", help="AMD SEV-SNP launch measurement (sev-snp-measure)")
    n.add_argument("--ovmf", required=True, metavar="FILE")
    n.add_argument("--kernel", metavar="FILE")
    n.add_argument("--initrd", metavar="FILE")
    n.add_argument("--append", metavar="CMDLINE", help="kernel command line")
    n.add_argument("--vcpus", type=int, required=True)
    n.add_argument("--vcpu-type", required=True, help="QEMU CPU model, e.g. EPYC-v4")
    n.add_argument("--vmm-type", default="QEMU", choices=("QEMU", "ec2", "gce"))
    n.add_argument("--guest-features", type=lambda x: int(x, 0), default=DEFAULT_GUEST_FEATURES)
    n.add_argument("--host-data", metavar="HEX", help="HOST_DATA (32 bytes; default zero)")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_predict)
