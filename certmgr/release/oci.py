"""Deterministic OCI image layers and layout (does I/O: it writes blobs).

What is written depends only on the entries given and ``source_date_epoch``, never on the
build machine: the umask, the user, the clock, the order a directory lists its files in.

- A layer is an uncompressed POSIX tar (media type ``application/vnd.oci.image.layer.v1.tar``):
  entries sorted by path component, parents before children, numeric owners with empty
  user/group names, modes masked to the permission and set-id bits, mtimes clamped to
  ``source_date_epoch``, no pax atime/ctime/xattr records (ustar where it fits, pax only for a
  long name). Hard links point at the first of their group in that order, so a link never
  precedes its target. Uncompressed on purpose: gzip output depends on the zlib build
  (zlib-ng, now the default in some distributions, compresses differently), so a compressed
  blob's digest would depend on the build host; an uncompressed layer's digest is its diff_id.
- The config, manifest and ``index.json`` are JSON with sorted keys and no whitespace.

Image layout: https://github.com/opencontainers/image-spec/blob/main/image-layout.md
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from certmgr.errors import ImageBuildError

__all__ = [
    "LAYER_MEDIA_TYPE",
    "Blob",
    "Entry",
    "Layer",
    "LayerBuilder",
    "iso_time",
    "write_layout",
]

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
_MODE_BITS = 0o7777
_CHUNK = 1 << 20


def iso_time(epoch: int) -> str:
    """RFC 3339 UTC time of ``epoch``, as OCI configs carry it."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sort_key(path: str) -> tuple[str, ...]:
    return PurePosixPath(path).parts


@dataclass(frozen=True)
class Entry:
    """One tar entry. ``source`` is the file whose bytes a regular file carries (or ``data``)."""

    path: str
    type: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    linkname: str = ""
    source: Path | None = None
    offset: int = 0
    data: bytes | None = None
    size: int = 0
    devmajor: int = 0
    devminor: int = 0


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class Layer:
    """A written layer blob; ``name`` says what it holds (base, python-deps, app)."""

    name: str
    digest: str
    size: int
    entries: int
    created_by: str


@dataclass
class LayerBuilder:
    """Collects entries (last one for a path wins) and writes them as one sorted tar."""

    source_date_epoch: int
    _entries: dict[str, Entry] = field(default_factory=dict)

    @staticmethod
    def normalise(path: str) -> str:
        p = PurePosixPath("/", path)
        parts = [x for x in p.parts[1:] if x not in ("", ".")]
        if ".." in parts:
            raise ImageBuildError("layer", f"path escapes the root: {path!r}")
        return "/".join(parts)

    def add(self, entry: Entry) -> None:
        path = self.normalise(entry.path)
        if not path:
            return  # the root directory itself is never an entry
        self._entries[path] = Entry(
            path=path,
            type=entry.type,
            mode=entry.mode & _MODE_BITS,
            uid=entry.uid,
            gid=entry.gid,
            mtime=min(entry.mtime, self.source_date_epoch),
            linkname=entry.linkname,
            source=entry.source,
            offset=entry.offset,
            data=entry.data,
            size=entry.size,
            devmajor=entry.devmajor,
            devminor=entry.devminor,
        )

    def add_dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.add(Entry(path, tarfile.DIRTYPE, mode, uid, gid, self.source_date_epoch))

    def add_file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0) -> None:
        self.add(Entry(path, tarfile.REGTYPE, mode, uid, uid, self.source_date_epoch, data=data))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry(path, tarfile.SYMTYPE, 0o777, mtime=self.source_date_epoch, linkname=target))

    def add_tree(self, root: Path, prefix: str) -> None:
        """Every file under ``root`` at ``prefix``, owned by root, modes fixed: directories and
        files with any execute bit 0755, other files 0644 (so the umask never shows)."""
        self.add_dir(prefix)
        for p in sorted(root.rglob("*")):
            rel = f"{prefix}/{p.relative_to(root).as_posix()}"
            if p.is_symlink():
                self.add_symlink(rel, str(p.readlink()))
            elif p.is_dir():
                self.add_dir(rel)
            elif p.is_file():
                mode = 0o755 if p.stat().st_mode & 0o111 else 0o644
                st = p.stat()
                self.add(
                    Entry(
                        rel,
                        tarfile.REGTYPE,
                        mode,
                        source=p,
                        size=st.st_size,
                        mtime=st.st_mtime_ns // 10**9,
                    )
                )
            else:
                raise ImageBuildError("layer", f"unsupported file type in {p}")

    def paths(self) -> list[str]:
        return sorted(self._entries, key=_sort_key)

    def entry(self, path: str) -> Entry | None:
        return self._entries.get(self.normalise(path))

    def remove(self, path: str) -> None:
        self._entries.pop(self.normalise(path), None)

    def _check_parents(self, order: Sequence[str]) -> None:
        for path in order:
            parent = str(PurePosixPath(path).parent)
            if parent != "." and parent not in self._entries:
                self.add_dir(parent)

    def _retarget_hardlinks(self) -> None:
        """Make the first path (in write order) of each hard-link group the regular file."""
        groups: dict[str, list[str]] = {}
        for path, e in self._entries.items():
            if e.type == tarfile.LNKTYPE:
                groups.setdefault(self.normalise(e.linkname), []).append(path)
        for target, links in groups.items():
            t = self._entries.get(target)
            if t is None or t.type != tarfile.REGTYPE:
                raise ImageBuildError("layer", f"hard link to a missing file: {target}")
            first = min([target, *links], key=_sort_key)
            if first != target:
                self._entries[first] = replace(t, path=first)
                self._entries[target] = replace(
                    t, type=tarfile.LNKTYPE, linkname=first, source=None, data=None, size=0
                )
            for link in links:
                if link != first:
                    self._entries[link] = replace(self._entries[link], linkname=first)

    def write(self, out: BinaryIO) -> int:
        """Write the tar to ``out``; the number of entries."""
        self._check_parents(list(self._entries))
        self._retarget_hardlinks()
        order = self.paths()
        written = 0
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for path in order:
                e = self._entries[path]
                info = tarfile.TarInfo(path)
                info.type = e.type
                info.mode = e.mode
                info.uid, info.gid = e.uid, e.gid
                info.uname = info.gname = ""
                info.mtime = e.mtime
                info.linkname = (
                    self.normalise(e.linkname) if e.type == tarfile.LNKTYPE else e.linkname
                )
                if e.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                    info.devmajor, info.devminor = e.devmajor, e.devminor
                tar.format = tarfile.USTAR_FORMAT if _fits_ustar(info) else tarfile.PAX_FORMAT
                if e.type == tarfile.REGTYPE:
                    if e.data is not None:
                        info.size = len(e.data)
                        tar.addfile(info, io.BytesIO(e.data))
                    else:
                        if e.source is None:
                            raise ImageBuildError("layer", f"no content for {path}")
                        info.size = e.size
                        with e.source.open("rb") as f:
                            f.seek(e.offset)
                            tar.addfile(info, f)
                else:
                    tar.addfile(info)
                written += 1
        return written


def _fits_ustar(info: tarfile.TarInfo) -> bool:
    try:
        info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError:
        return False
    return info.name.isascii() and info.linkname.isascii()


class _HashingWriter(io.RawIOBase):
    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._f.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)


class BlobStore:
    """``blobs/sha256/`` of a layout directory."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes) -> Blob:
        digest = hashlib.sha256(data).hexdigest()
        (self.dir / digest).write_bytes(data)
        return Blob("sha256:" + digest, len(data))

    def put_layer(self, builder: LayerBuilder, name: str, created_by: str) -> Layer:
        tmp = self.dir / f".{name}.tmp"
        with tmp.open("wb") as f:
            w = _HashingWriter(f)
            count = builder.write(w)  # type: ignore[arg-type]
        digest = w.hash.hexdigest()
        tmp.replace(self.dir / digest)
        return Layer(name, "sha256:" + digest, w.size, count, created_by)


def write_layout(
    store: BlobStore,
    layers: Iterable[Layer],
    config: Mapping[str, Any],
    *,
    source_date_epoch: int,
    ref_name: str,
    annotations: Mapping[str, str],
) -> tuple[Blob, Blob]:
    """Write the config, manifest, ``index.json`` and ``oci-layout``; (manifest, config) blobs."""
    layers = list(layers)
    created = iso_time(source_date_epoch)
    cfg = dict(config)
    cfg["created"] = created
    cfg["rootfs"] = {"type": "layers", "diff_ids": [layer.digest for layer in layers]}
    cfg["history"] = [{"created": created, "created_by": layer.created_by} for layer in layers]
    config_blob = store.put_bytes(_canonical(cfg))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
        "annotations": dict(annotations),
    }
    manifest_blob = store.put_bytes(_canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_blob.digest,
                "size": manifest_blob.size,
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        ],
    }
    (store.layout / "index.json").write_bytes(_canonical(index))
    (store.layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest_blob, config_blob
