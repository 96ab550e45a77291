"""``teeproxy build-image``: build the release image reproducibly as an OCI image layout.

Wraps :func:`certmgr.release.image.build_image` (docs/REPRODUCIBLE.md "Building the
image"). The manifest digest (``sha256:...``) is the last line printed; with ``--json`` the
whole result is one JSON object. ``--update-base-pins`` rewrites the source tree's
``release/base-packages.txt`` with what the Debian mirror serves today instead of building.

Exit codes: 0 built; 1 the build failed (the step and the reason are printed); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from certmgr.errors import ImageBuildError
from certmgr.release import spec
from certmgr.release.image import BASE_PINS, build_image, resolve_base_pins, source_commit

__all__ = ["add_parsers", "cmd_build_image"]


def _epoch(value: str) -> int:
    try:
        n = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError("must be a whole number of seconds") from e
    if n < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return n


def _update_pins(args: argparse.Namespace, source: Path) -> int:
    epoch = args.source_date_epoch
    if epoch is None:
        epoch = source_commit(source)[1] or int(time.time())
    with tempfile.TemporaryDirectory(prefix="teeproxy-pins-") as work:
        pins = resolve_base_pins(Path(work), source_date_epoch=epoch, mirror=args.mirror,
                                 security_mirror=args.security_mirror)  # fmt: skip
    path = source / BASE_PINS
    header = (
        [ln for ln in path.read_text().splitlines() if ln.startswith("#")] if path.exists() else []
    )
    path.write_text("\n".join([*header, *map(str, pins)]) + "\n")
    print(f"{path}: {len(pins)} packages pinned")
    return 0


def cmd_build_image(args: argparse.Namespace) -> int:
    source = Path(args.source)
    try:
        if args.update_base_pins:
            return _update_pins(args, source)
        if not args.output:
            print("teeproxy build-image: --output is required", file=sys.stderr)
            return 2
        result = build_image(
            source,
            Path(args.output),
            source_date_epoch=args.source_date_epoch,
            work_dir=Path(args.work_dir) if args.work_dir else None,
            mirror=args.mirror,
            security_mirror=args.security_mirror,
        )
    except ImageBuildError as e:
        print(f"teeproxy build-image: {e}", file=sys.stderr)
        return 1
    if args.json:
        out: dict[str, Any] = result.to_json()
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        for layer in result.layers:
            print(f"layer {layer.name}: {layer.digest} ({layer.size} bytes)")
        print(f"commit: {result.commit or '-'}{' (dirty)' if result.dirty else ''}")
        print(f"SOURCE_DATE_EPOCH: {result.source_date_epoch}")
        print(result.digest)
    return 0


def add_parsers(sub: Any) -> None:
    b = sub.add_parser(
        "build-image",
        help="build the release image reproducibly as an OCI image layout",
        description="Build the teeproxy image (Debian bookworm base from pinned packages, "
        "the hash-pinned lock, the source tree's wheel) into an OCI image layout without a "
        "container engine; print its manifest digest.",
    )
    b.add_argument("--output", "-o", help="OCI layout directory (new or empty); required")
    b.add_argument("--source", default=os.curdir, help="teeproxy source tree (default: .)")
    b.add_argument("--source-date-epoch", type=_epoch, default=None,
                   help="timestamp of every file and of the image (default: the commit time "
                   "of the source's git HEAD; required outside a git checkout)")  # fmt: skip
    b.add_argument("--work-dir", help="keep intermediate files here (default: a temporary dir)")
    b.add_argument("--mirror", default=spec.DEFAULT_MIRROR,
                   help="Debian mirror (snapshot.debian.org rebuilds an old release)")  # fmt: skip
    b.add_argument("--security-mirror", default=spec.DEFAULT_SECURITY_MIRROR,
                   help="Debian security mirror")  # fmt: skip
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--update-base-pins", action="store_true",
                   help=f"rewrite {BASE_PINS} from the mirror instead of building")  # fmt: skip
    b.set_defaults(func=cmd_build_image)
