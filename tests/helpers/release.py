"""Release inputs for the tests: a git checkout of this tree, an OCI image layout on disk and
a compose file naming it.

:func:`checkout` copies what the image is built from into a new git repository with one
commit dated :data:`SDE`, so that every build of it has the same commit and timestamp.

:func:`write_layout` writes a valid OCI image layout (``oci-layout``, ``index.json``, the
manifest, config and one layer blob) whose content is ``payload``: a different payload is a
different image digest, as a changed source or lock file gives a different image. It is a
stand-in for the reproducible image build where a test is about what follows the digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from certmgr.release.image import ImageBuild

__all__ = [
    "SDE",
    "SOURCE_PARTS",
    "ReleaseBuild",
    "checkout",
    "compose_for",
    "copy_source",
    "write_layout",
]

REPO = Path(__file__).resolve().parents[2]
SDE = 1_700_000_000  # SOURCE_DATE_EPOCH of every test build (the checkout's commit time)
# What build_image reads from a source tree.
SOURCE_PARTS = ("pyproject.toml", "README.md", "requirements.lock", "release", "proxy", "certmgr")


@dataclass(frozen=True)
class ReleaseBuild:
    """A build of a checkout: ``source`` (a git repository, one commit: ``commit``),
    ``build`` (its layout in ``build.output``), ``work`` (the builder's work directory, which
    keeps the verified base root file system for builds that reuse it)."""

    source: Path
    commit: str
    build: ImageBuild
    work: Path


def copy_source(dest: Path) -> Path:
    """The parts of this tree the image is built from, copied to ``dest`` (no git)."""
    dest.mkdir()
    for part in SOURCE_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def checkout(dest: Path) -> str:
    """:func:`copy_source` as a git repository with one commit at :data:`SDE`; its hash."""
    copy_source(dest)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_AUTHOR_DATE": f"@{SDE} +0000",
        "GIT_COMMITTER_DATE": f"@{SDE} +0000",
        "PATH": "/usr/bin:/bin",
        "HOME": str(dest),
    }
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run(["git", "-C", str(dest), *argv], check=True, env=env, timeout=60)
    out = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


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
