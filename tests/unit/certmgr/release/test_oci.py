"""Deterministic layers and the OCI layout: same input, same bytes, whatever the host does."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from certmgr.errors import ImageBuildError
from certmgr.release.oci import BlobStore, Entry, LayerBuilder, iso_time, write_layout

SDE = 1_700_000_000


def _tree(root: Path, umask: int, reverse: bool) -> None:
    old = os.umask(umask)
    try:
        names = ["b/x.py", "a/long/" + "n" * 120 + ".txt", "a/run.sh", "c"]
        for name in reversed(names) if reverse else names:
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(name.encode())
            if name.endswith(".sh"):
                p.chmod(0o777 & ~umask)
        (root / "link").symlink_to("c")
    finally:
        os.umask(old)


def _layer(root: Path) -> bytes:
    b = LayerBuilder(SDE)
    b.add_tree(root, "opt/app")
    out = io.BytesIO()
    b.write(out)
    return out.getvalue()


def test_layer_bytes_do_not_depend_on_umask_order_or_clock(tmp_path: Path) -> None:
    _tree(tmp_path / "one", 0o022, reverse=False)
    _tree(tmp_path / "two", 0o077, reverse=True)
    os.utime(tmp_path / "two" / "c", (SDE + 10_000, SDE + 10_000))
    first, second = _layer(tmp_path / "one"), _layer(tmp_path / "two")
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "opt" and names[1] == "opt/app"
    assert names.index("opt/app/a") < names.index("opt/app/a/run.sh")
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime <= SDE
        assert set(m.pax_headers) <= {"path"}  # no atime, ctime or xattrs
    modes = {m.name: m.mode for m in members}
    assert modes["opt/app/a/run.sh"] == 0o755
    assert modes["opt/app/b/x.py"] == 0o644
    assert modes["opt/app/b"] == 0o755


def test_hard_links_follow_their_target_in_write_order(tmp_path: Path) -> None:
    data = tmp_path / "blob"
    data.write_bytes(b"perl")
    b = LayerBuilder(SDE)
    # As GNU tar wrote them: the file first as it walked, the link to it later.
    b.add(Entry("usr/bin/perl5.36", tarfile.REGTYPE, 0o755, source=data, size=4))
    b.add(Entry("usr/bin/perl", tarfile.LNKTYPE, 0o755, linkname="usr/bin/perl5.36"))
    out = io.BytesIO()
    b.write(out)
    (tmp_path / "layer.tar").write_bytes(out.getvalue())
    with tarfile.open(tmp_path / "layer.tar") as tar:
        perl, versioned = tar.getmember("usr/bin/perl"), tar.getmember("usr/bin/perl5.36")
        assert perl.isreg() and versioned.islnk() and versioned.linkname == "usr/bin/perl"
    # GNU tar, an independent reader, extracts both names with the content.
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "layer.tar"), "-C", str(dest)], check=True)
    assert (dest / "usr/bin/perl5.36").read_bytes() == b"perl"
    assert os.stat(dest / "usr/bin/perl").st_ino == os.stat(dest / "usr/bin/perl5.36").st_ino


def test_paths_may_not_escape_the_root() -> None:
    with pytest.raises(ImageBuildError):
        LayerBuilder(SDE).add_file("../etc/passwd", b"")


def test_layout_points_at_its_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    b = LayerBuilder(SDE)
    b.add_file("etc/motd", b"hi\n")
    layer = store.put_layer(b, "app", "test")
    manifest, config = write_layout(
        store, [layer], {"os": "linux", "architecture": "amd64", "config": {}},
        source_date_epoch=SDE, ref_name="0.1.0", annotations={},
    )  # fmt: skip
    index = json.loads((tmp_path / "index.json").read_bytes())
    assert index["manifests"][0]["digest"] == manifest.digest
    blob = tmp_path / "blobs" / "sha256"
    m = json.loads((blob / manifest.digest.split(":")[1]).read_bytes())
    assert m["config"]["digest"] == config.digest
    assert m["layers"][0]["digest"] == layer.digest
    cfg = json.loads((blob / config.digest.split(":")[1]).read_bytes())
    assert cfg["created"] == iso_time(SDE) == "2023-11-14T22:13:20Z"
    assert cfg["rootfs"]["diff_ids"] == [layer.digest]
    for path in blob.iterdir():
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == "sha256:" + path.name
