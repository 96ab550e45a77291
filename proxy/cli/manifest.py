"""``teeproxy release ...`` and ``teeproxy verify-build``: the signed build manifest.

- ``release keygen KEY --public-out PUB``: a new ECDSA P-256 release key, written only
  encrypted (PKCS #8, password from ``$TEEPROXY_RELEASE_PASSWORD`` or ``--password-env``, else
  a prompt; never an option: it would land in shell history and /proc/PID/cmdline).
- ``release manifest --image DIR --prediction P.json ... --sign-key KEY``: the in-toto
  Statement (image digest, lock file SHA-256, commit, SOURCE_DATE_EPOCH, the predicted
  measurement ids) in a DSSE envelope, written next to the image as
  ``DIR/teeproxy-manifest.dsse.json``. Every dstack and simulated prediction is first
  re-derived from its recorded inputs against this image: a prediction for another image
  is refused before anything is signed.
- ``release show MANIFEST --release-key PUB``: verify and print.
- ``verify-build MANIFEST --source DIR --release-key PUB``: verify the signature, rebuild
  the image from the source (``certmgr.release.image.build_image``) at the manifest's
  SOURCE_DATE_EPOCH, and compare the digest, lock SHA-256, commit and every re-derived
  measurement id (``--image DIR`` compares a layout already built instead).

Exit codes: 0 verified (or done), 1 a check failed, 2 usage or input error. A manifest is
never read without the release public key the caller names.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certmgr.errors import CertmgrError, ImageBuildError, ReleaseError
from certmgr.keys import atomic_write
from certmgr.release.image import build_image
from certmgr.release.layout import image_digest, sha256_file
from certmgr.release.manifest import (
    MAX_ENVELOPE,
    MIN_PASSWORD,
    BuildManifest,
    build_statement,
    decrypt_release_key,
    encrypt_release_key,
    generate_release_key,
    key_id,
    load_public_key,
    public_pem,
    sign_envelope,
    verify_manifest,
)
from certmgr.release.predict import recompute
from certmgr.release.snp_launch import DEFAULT_GUEST_FEATURES, SnpLaunch, launch_digest
from proxy.cli.inputs import ask_password, read_capped
from proxy.errors import UsageError

__all__ = ["MANIFEST_NAME", "add_parsers", "load_manifests"]

DEFAULT_PASSWORD_ENV = "TEEPROXY_RELEASE_PASSWORD"  # noqa: S105 - a variable name
MANIFEST_NAME = "teeproxy-manifest.dsse.json"
_MAX_PREDICTION_FILE = 1024 * 1024
_MAX_KEY = 16 * 1024


def load_manifests(paths: Sequence[str], key_paths: Sequence[str]) -> list[BuildManifest]:
    """Each manifest verified under the trusted release keys (``ReleaseError`` otherwise)."""
    if not key_paths:
        raise UsageError("--release-key PEM is required: a manifest is never trusted unsigned")
    keys = [load_public_key(read_capped(p, _MAX_KEY)) for p in key_paths]
    out = []
    for path in paths:
        try:
            out.append(verify_manifest(read_capped(path, MAX_ENVELOPE), keys))
        except ReleaseError as e:
            raise ReleaseError(f"{path}: {e}") from e
    return out


# -- release keygen / manifest / show ---------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    key_path, pub_path = Path(args.file), Path(args.public_out)
    for p in (key_path, pub_path):
        if p.exists():
            raise UsageError(f"{p} exists: refusing to overwrite")
    password = ask_password(args.password_env, "release key", confirm=True)
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"use a password of at least {MIN_PASSWORD} characters")
    key = generate_release_key()
    atomic_write(key_path, encrypt_release_key(key, password), 0o600)
    atomic_write(pub_path, public_pem(key.public_key()), 0o644)
    print(f"release key {key_path} (encrypted), public key {pub_path}")
    print(f"key id: {key_id(key.public_key())}")
    return 0


def _git(source: Path, *argv: str) -> str:
    try:
        out = subprocess.run(  # noqa: S603 - fixed git arguments, no shell
            ["git", "-C", str(source), *argv],  # noqa: S607 - git from PATH, as a developer runs it
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise UsageError(f"git {' '.join(argv)} in {source}: {e}") from e
    return out.stdout.strip()


def _predictions(paths: Sequence[str]) -> list[dict[str, Any]]:
    preds: list[dict[str, Any]] = []
    for path in paths:
        try:
            doc = json.loads(read_capped(path, _MAX_PREDICTION_FILE))
        except (UnicodeDecodeError, ValueError) as e:
            raise UsageError(f"{path}: not JSON: {e}") from e
        items = doc.get("predictions") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise UsageError(f"{path}: no predictions (use `teeproxy measure predict ... --json`)")
        preds += [p for p in items if isinstance(p, dict)]
    if not preds:
        raise UsageError("give at least one --prediction FILE")
    return preds


def cmd_manifest(args: argparse.Namespace) -> int:
    image_dir = Path(args.image)
    digest = image_digest(image_dir)
    if args.build_json:
        lock_sha256, commit, sde = _from_build_json(args.build_json, digest)
    else:
        source = Path(args.source)
        lock = Path(args.lock) if args.lock else source / "requirements.lock"
        lock_sha256 = sha256_file(lock)
        commit = args.commit or _git(source, "rev-parse", "HEAD")
        sde_text = args.source_date_epoch or os.environ.get("SOURCE_DATE_EPOCH")
        if not sde_text:
            sde_text = _git(source, "log", "-1", "--format=%ct")
        try:
            sde = int(sde_text)
        except ValueError as e:
            raise UsageError(f"SOURCE_DATE_EPOCH {sde_text!r} is not an integer") from e
    preds = _predictions(args.prediction)
    for p in preds:
        target = str(p.get("target"))
        if target == "sev-snp":
            continue  # independent of the image: its inputs are the launch files
        again = recompute(target, p.get("inputs", {}), digest)
        if "0x" + again.measurement_id.hex() != p.get("measurement_id"):
            raise ReleaseError(f"{target}: the prediction does not re-derive for image {digest}")
    body = build_statement(
        image_name=args.image_name,
        image_digest=digest,
        lock_sha256=lock_sha256,
        commit=commit,
        source_date_epoch=sde,
        predictions=preds,
    )
    key = decrypt_release_key(
        read_capped(args.sign_key, _MAX_KEY), ask_password(args.password_env, "release key")
    )
    out = Path(args.output) if args.output else image_dir / MANIFEST_NAME
    atomic_write(out, sign_envelope(body, key), 0o644)
    kid = key_id(key.public_key())
    print(f"manifest {out}: image {digest}, {len(preds)} prediction(s), key {kid}")
    return 0


def _from_build_json(path: str, digest: str) -> tuple[str, str, int]:
    """(lock SHA-256, commit, SOURCE_DATE_EPOCH) from ``teeproxy build-image --json``'s
    output for this very image; a build of a dirty tree or outside git is refused (its
    commit would not name the source)."""
    try:
        doc = json.loads(read_capped(path, _MAX_PREDICTION_FILE))
    except (UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("image_digest") != digest:
        raise UsageError(f"{path} is not the build of the image {digest}")
    if doc.get("dirty") or not isinstance(doc.get("commit"), str):
        raise UsageError(f"{path}: built from a dirty tree or outside git: no commit names it")
    sde = doc.get("source_date_epoch")
    if type(sde) is not int:
        raise UsageError(f"{path}: no source_date_epoch")
    return str(doc.get("lock_sha256")), str(doc["commit"]), sde


def _describe(m: BuildManifest) -> list[str]:
    lines = [
        f"image:              {m.image_name}@{m.image_digest}",
        f"commit:             {m.commit}",
        f"lock sha256:        {m.lock_sha256}",
        f"SOURCE_DATE_EPOCH:  {m.source_date_epoch}",
        f"signed by key id:   {m.key_id}",
    ]
    lines += [f"  {p.target:<16} {p.measurement_id}" for p in m.predictions]
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    [m] = load_manifests([args.manifest], args.release_key)
    if args.json:
        print(json.dumps({**_manifest_json(m), "statement": m.statement}, indent=2))
    else:
        print("manifest: signature OK")
        print("\n".join(_describe(m)))
    return 0


def _manifest_json(m: BuildManifest) -> dict[str, Any]:
    return {
        "image": f"{m.image_name}@{m.image_digest}",
        "image_digest": m.image_digest,
        "commit": m.commit,
        "lock_sha256": m.lock_sha256,
        "source_date_epoch": m.source_date_epoch,
        "key_id": m.key_id,
        "measurement_ids": m.measurement_ids(),
    }


# -- verify-build -----------------------------------------------------------------------------


def _rebuild(args: argparse.Namespace, m: BuildManifest, out: Path) -> dict[str, Any]:
    """Build the image again from ``--source`` (or read ``--image``, a layout already built)."""
    if args.image:
        return {"digest": image_digest(Path(args.image)), "how": f"read from {args.image}"}
    work = Path(args.work_dir) if args.work_dir else None
    try:
        build = build_image(
            Path(args.source), out, source_date_epoch=m.source_date_epoch, work_dir=work
        )
    except ImageBuildError as e:
        raise UsageError(f"the rebuild failed: {e}") from e
    return {
        "digest": build.digest,
        "lock_sha256": build.lock_sha256,
        "commit": build.commit,
        "source_date_epoch": build.source_date_epoch,
        "how": f"rebuilt from {args.source}" + (f" into {args.output}" if args.output else ""),
    }


def _snp_check(args: argparse.Namespace, inputs: dict[str, Any]) -> tuple[str, str]:
    if not args.snp_ovmf:
        return "NOT CHECKED", "launch files not given (--snp-ovmf, --snp-kernel, ...)"
    launch = SnpLaunch(
        ovmf=Path(args.snp_ovmf),
        vcpus=int(inputs.get("vcpus", 0)),
        vcpu_type=str(inputs.get("vcpu_type", "")),
        kernel=Path(args.snp_kernel) if args.snp_kernel else None,
        initrd=Path(args.snp_initrd) if args.snp_initrd else None,
        cmdline=str(inputs.get("cmdline", "")),
        guest_features=int(str(inputs.get("guest_features", hex(DEFAULT_GUEST_FEATURES))), 0),
        vmm=str(inputs.get("vmm", "QEMU")),
    )
    described = launch.describe()
    for k in ("ovmf_sha256", "kernel_sha256", "initrd_sha256"):
        if described.get(k) != inputs.get(k):
            return "MISMATCH", f"{k}: the file given is not the one the manifest records"
    if launch_digest(launch).hex() != inputs.get("launch_digest"):
        return "MISMATCH", "the launch digest recomputed from these files differs"
    return "OK", "launch digest recomputed from the files"


def cmd_verify_build(args: argparse.Namespace) -> int:
    [m] = load_manifests([args.manifest], args.release_key)
    report: dict[str, Any] = {"manifest": _manifest_json(m), "signature": "OK", "checks": []}
    checks: list[dict[str, str]] = report["checks"]
    with tempfile.TemporaryDirectory(prefix="teeproxy-verify-build-") as tmp:
        built = _rebuild(args, m, Path(args.output) if args.output else Path(tmp) / "image")
    report["rebuilt"] = built
    same = built["digest"] == m.image_digest
    checks.append(
        {
            "check": "image digest",
            "status": "OK" if same else "MISMATCH",
            "detail": f"manifest {m.image_digest}, rebuilt {built['digest']}",
        }
    )
    if "commit" in built and built["commit"] is None:
        checks.append(
            {
                "check": "commit",
                "status": "UNKNOWN",
                "detail": "the source is no git checkout (the digest still compares)",
            }
        )
    for field in ("lock_sha256", "commit", "source_date_epoch"):
        value = built.get(field)
        if value is not None:
            ok = value == getattr(m, field)
            checks.append(
                {
                    "check": field,
                    "status": "OK" if ok else "MISMATCH",
                    "detail": f"manifest {getattr(m, field)}, rebuilt {value}",
                }
            )
    for p in m.predictions:
        if p.target in (args.skip_target or ()):
            checks.append({"check": p.target, "status": "SKIPPED", "detail": "--skip-target"})
            continue
        if p.target == "sev-snp":
            status, detail = _snp_check(args, dict(p.inputs))
        else:
            try:
                again = recompute(p.target, p.inputs, built["digest"])
            except ReleaseError as e:
                status, detail = "MISMATCH", str(e)
            else:
                mid = "0x" + again.measurement_id.hex()
                status = "OK" if mid == p.measurement_id else "MISMATCH"
                detail = f"manifest {p.measurement_id}, re-derived {mid}"
        checks.append({"check": p.target, "status": status, "detail": detail})
    bad = [c for c in checks if c["status"] in ("MISMATCH", "NOT CHECKED")]
    report["verified"] = not bad
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("manifest signature: OK")
        print("\n".join(_describe(m)))
        print(f"rebuilt: {built['how']}")
        for c in checks:
            print(f"  {c['status']:<12} {c['check']}: {c['detail']}")
        print("BUILD VERIFIED" if not bad else "BUILD NOT VERIFIED")
    return 0 if not bad else 1


# -- parsers ----------------------------------------------------------------------------------


def _run(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            rc: int = func(args)
        except (UsageError, CertmgrError) as e:
            print(f"teeproxy {args.command}: {e}", file=sys.stderr)
            return 2
        return rc

    return run


def add_parsers(sub: Any) -> None:
    """Register ``teeproxy release`` and ``teeproxy verify-build``."""
    r = sub.add_parser("release", help="release key and signed build manifest")
    r.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        help=f"variable holding the release key password (default {DEFAULT_PASSWORD_ENV}); "
        "unset: prompt",
    )
    rs = r.add_subparsers(dest="release_command", required=True)
    k = rs.add_parser("keygen", help="generate a release key (written encrypted only)")
    k.add_argument("file", help="the encrypted private key (PKCS #8 PEM)")
    k.add_argument("--public-out", required=True, metavar="PEM", help="the public key")
    k.set_defaults(func=_run(cmd_keygen))

    m = rs.add_parser("manifest", help="sign the build manifest of an image and its predictions")
    m.add_argument("--image", required=True, metavar="DIR", help="the OCI image layout")
    m.add_argument("--image-name", default="teeproxy", help="the subject's name")
    m.add_argument("--prediction", action="append", required=True, metavar="FILE")
    m.add_argument(
        "--build-json",
        metavar="FILE",
        help="`teeproxy build-image --json` output of this image: lock SHA-256, commit and "
        "SOURCE_DATE_EPOCH from it (else --lock, --commit, --source-date-epoch)",
    )
    m.add_argument("--source", default=".", metavar="DIR", help="the source tree (git)")
    m.add_argument("--lock", metavar="FILE", help="default SOURCE/requirements.lock")
    m.add_argument("--commit", metavar="HEX", help="default: git rev-parse HEAD in SOURCE")
    m.add_argument("--source-date-epoch", metavar="N", help="default $SOURCE_DATE_EPOCH")
    m.add_argument("--sign-key", required=True, metavar="KEY", help="encrypted release key")
    m.add_argument("--output", metavar="FILE", help=f"default DIR/{MANIFEST_NAME}")
    m.set_defaults(func=_run(cmd_manifest))

    s = rs.add_parser("show", help="verify a manifest's signature and print it")
    s.add_argument("manifest")
    s.add_argument("--release-key", action="append", required=True, metavar="PEM")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_run(cmd_show))

    v = sub.add_parser(
        "verify-build", help="verify a build manifest: signature, rebuild, measurement ids"
    )
    v.add_argument("manifest")
    v.add_argument("--source", required=True, metavar="DIR", help="the source tree to rebuild")
    v.add_argument("--release-key", action="append", required=True, metavar="PEM")
    v.add_argument("--image", metavar="DIR", help="compare this OCI layout instead of rebuilding")
    v.add_argument("--output", metavar="DIR", help="keep the rebuilt image layout here")
    v.add_argument("--work-dir", metavar="DIR", help="the image builder's work directory")
    v.add_argument("--snp-ovmf", metavar="FILE", help="SEV-SNP: recompute from these files")
    v.add_argument("--snp-kernel", metavar="FILE")
    v.add_argument("--snp-initrd", metavar="FILE")
    v.add_argument("--skip-target", action="append", metavar="TARGET")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_run(cmd_verify_build))
