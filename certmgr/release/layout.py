"""Reading an OCI image layout's image digest and hashing release inputs (reads files).

The OCI Image Layout Specification (``image-layout.md``): ``DIR/oci-layout`` holds
``{"imageLayoutVersion": "1.0.0"}`` and ``DIR/index.json`` is an image index whose
``manifests`` name the image manifests by descriptor (``mediaType``, ``digest``, ``size``).
A release layout holds exactly one image: its manifest digest is the image digest that a
``name@sha256:...`` reference pulls.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from certmgr.errors import ReleaseError

__all__ = ["MAX_INDEX", "image_digest", "sha256_file"]

MAX_INDEX = 64 * 1024
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _read_capped(path: Path, cap: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise ReleaseError(f"cannot read {path}: {e}") from e
    if len(data) > cap:
        raise ReleaseError(f"{path} is larger than {cap} bytes")
    return data


def image_digest(layout: Path) -> str:
    """The one image manifest digest (``sha256:HEX``) of the OCI layout in ``layout``."""
    marker = _read_capped(layout / "oci-layout", 1024)
    try:
        version = json.loads(marker).get("imageLayoutVersion")
    except (ValueError, AttributeError) as e:
        raise ReleaseError(f"{layout}/oci-layout is not an OCI layout marker") from e
    if version != "1.0.0":
        raise ReleaseError(f"{layout}: OCI layout version {version!r} is not 1.0.0")
    try:
        index = json.loads(_read_capped(layout / "index.json", MAX_INDEX))
    except (ValueError, RecursionError) as e:
        raise ReleaseError(f"{layout}/index.json is not JSON: {e}") from e
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise ReleaseError(f"{layout}/index.json: expected exactly one image manifest")
    desc = manifests[0]
    if not isinstance(desc, dict) or desc.get("mediaType") not in _MANIFEST_TYPES:
        raise ReleaseError(f"{layout}/index.json: the descriptor is not an image manifest")
    digest = desc.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ReleaseError(f"{layout}/index.json: malformed digest")
    blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    if sha256_file(blob) != digest.removeprefix("sha256:"):
        raise ReleaseError(f"{layout}: the manifest blob does not hash to {digest}")
    return digest


def sha256_file(path: Path, cap: int = 1 << 30) -> str:
    """Hex SHA-256 of a file (at most ``cap`` bytes)."""
    h = hashlib.sha256()
    total = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
                if total > cap:
                    raise ReleaseError(f"{path} is larger than {cap} bytes")
                h.update(chunk)
    except OSError as e:
        raise ReleaseError(f"cannot read {path}: {e}") from e
    return h.hexdigest()
