"""Release inputs for the tests: an OCI image layout on disk and a compose file naming it.

:func:`write_layout` writes a valid OCI image layout (``oci-layout``, ``index.json``, the
manifest, config and one layer blob) whose content is ``payload``: a different payload is a
different image digest, as a changed source or lock file gives a different image. It is a
stand-in for the reproducible image build where a test is about what follows the digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

__all__ = ["compose_for", "write_layout"]


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return "sha256:" + digest


def write_layout(layout: Path, payload: bytes) -> str:
    """An OCI image layout with one image whose only layer holds ``payload``; its digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app/payload")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    layer = buf.getvalue()
    layer_digest = _blob(layout, layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        },
        sort_keys=True,
    ).encode()
    config_digest = _blob(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    digest = _blob(layout, manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(manifest),
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return digest


def compose_for(digest: str, name: str = "registry.invalid/teeproxy") -> str:
    """A docker-compose.yml running the image ``digest`` (pinned) and nothing else."""
    return (
        "services:\n"
        "  teeproxy:\n"
        f"    image: {name}@{digest}\n"
        "    ports:\n"
        '      - "443:8443"\n'
        "    volumes:\n"
        "      - /var/run/dstack.sock:/var/run/dstack.sock\n"
    )
