"""``teeproxy build-image``: the release image rebuilds bit for bit, and it runs.

Two full builds (mmdebstrap base included) of one git checkout of this source tree: the
run's shared ``release_build`` (in process), and one through the CLI from a copy of the
checkout in another directory with another umask, TMPDIR and working directory; every blob
must be byte-identical. Then, on the first build's base (already verified against the pin
list), a changed source file and a changed lock must change only the app and only the deps
layer. The layout is read by skopeo and umoci (independent OCI implementations), unpacked,
and the image's own Python runs ``teeproxy --help`` as the image's user under chroot.

Needs root (mmdebstrap --mode=root, chroot), mmdebstrap, skopeo, umoci (scripts/test.sh
installs them) and deb.debian.org and PyPI. About 3 minutes on 2 cores (with the shared
build, which tests/integration/test_verify_build.py and test_release_e2e.py reuse).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from certmgr.errors import ImageBuildError
from certmgr.release import spec
from certmgr.release.image import (
    BASE_PINS,
    LOCK,
    BaseRootfs,
    ImageBuild,
    build_base,
    build_image,
)
from tests.helpers.release import SDE, ReleaseBuild, copy_source

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Builds:
    first: ImageBuild
    first_work: Path
    second: Path
    second_json: dict[str, object]


def _blobs(layout: Path) -> dict[str, str]:
    out = {}
    for p in sorted(layout.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(layout))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _base_of(build: Builds) -> BaseRootfs:
    data = (REPO / BASE_PINS).read_bytes()
    return BaseRootfs(
        build.first_work / "base-rootfs.tar",
        spec.parse_pins(data.decode()),
        SDE,
        hashlib.sha256(data).hexdigest(),
    )


@pytest.fixture(scope="module")
def builds(release_build: ReleaseBuild, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    # The second build: a copy of the same checkout (same commit) in another directory,
    # with another umask, TMPDIR and cwd; through the CLI.
    root = tmp_path_factory.mktemp("b")
    src2 = root / "elsewhere"
    shutil.copytree(release_build.source, src2, symlinks=True)
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    cwd = root / "cwd"
    cwd.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "build-image", "--source", str(src2),
         "--output", "out", "--json"],
        check=False, cwd=cwd, env=env, umask=0o077, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return Builds(release_build.build, release_build.work, cwd / "out", json.loads(proc.stdout))


def test_two_full_builds_are_byte_identical(builds: Builds) -> None:
    first, second = _blobs(builds.first.output), _blobs(builds.second)
    assert len(first) == 7  # index.json, oci-layout, manifest, config, three layers
    assert first == second
    assert builds.second_json["image_digest"] == builds.first.digest
    assert builds.first.digest.startswith("sha256:")
    assert [x["name"] for x in builds.second_json["layers"]] == [  # type: ignore[attr-defined]
        "base",
        "python-deps",
        "app",
    ]
    lock = hashlib.sha256((REPO / LOCK).read_bytes()).hexdigest()
    assert builds.first.lock_sha256 == builds.second_json["lock_sha256"] == lock
    assert builds.second_json["source_date_epoch"] == SDE
    assert builds.second_json["commit"] == builds.first.commit  # the checkout's, both times
    assert builds.second_json["dirty"] is False and builds.first.dirty is False


def test_layout_validates_and_the_image_runs(builds: Builds, tmp_path: Path) -> None:
    layout = builds.first.output
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{layout}"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["Digest"] == builds.first.digest
    assert info["Layers"] == [x.digest for x in builds.first.layers]
    cfg = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci:{layout}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["teeproxy"] and cfg["Cmd"] == ["serve"]
    assert cfg["WorkingDir"] == "/var/lib/teeproxy"
    assert cfg["ExposedPorts"] == {"8443/tcp": {}}
    # skopeo copy reads and checks every blob against its digest.
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}", f"dir:{tmp_path / 'copy'}"],
                   check=True)  # fmt: skip
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:0.1.0", str(bundle)], check=True,
                   capture_output=True)  # fmt: skip
    rootfs = bundle / "rootfs"
    assert (rootfs / "usr/bin/python3").exists()
    script = (rootfs / "opt/teeproxy/bin/teeproxy").read_text()
    assert script.startswith("#!/opt/teeproxy/bin/python\n")
    assert "from proxy.cli.main import main" in script
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "teeproxy:x:10001:10001::/var/lib/teeproxy:/usr/sbin/nologin" in passwd
    home = (rootfs / "var/lib/teeproxy").stat()
    assert (home.st_uid, home.st_gid, home.st_mode & 0o777) == (10001, 10001, 0o700)
    assert not list(rootfs.rglob("*.pyc"))
    assert not (rootfs / "etc/hostname").exists() and not (rootfs / "etc/resolv.conf").exists()
    assert not list((rootfs / "var/lib/apt/lists").glob("*Packages*"))
    # The image's own interpreter and packages, as the image's user.
    env = ["/usr/bin/env", "-i", f"PATH={spec.ENV['PATH']}", "PYTHONDONTWRITEBYTECODE=1"]
    run = subprocess.run(
        ["chroot", "--userspec=10001:10001", str(rootfs), *env, "teeproxy", "--help"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "build-image" in run.stdout and "serve" in run.stdout
    run = subprocess.run(
        ["chroot", "--userspec=10001:10001", str(rootfs), *env, "python3", "-c",
         "import sys, cryptography, aiohttp, uvloop, web3; "
         "print(sys.prefix, sys.version_info[:2])"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "/opt/teeproxy (3, 11)"


def _rebuild(
    builds: Builds, src: Path, tmp_path: Path
) -> tuple[ImageBuild, dict[str, str], dict[str, str]]:
    """Build ``src`` on the shared build's base: the build and the layer digests by name,
    of the shared build and of this one."""
    changed = build_image(src, tmp_path / "out", source_date_epoch=SDE,
                          work_dir=tmp_path / "work", base=_base_of(builds))  # fmt: skip
    before = {x.name: x.digest for x in builds.first.layers}
    after = {x.name: x.digest for x in changed.layers}
    return changed, before, after


def test_changed_source_changes_only_the_app_layer(builds: Builds, tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    main = src / "proxy" / "cli" / "main.py"
    main.write_text(main.read_text() + "\n# changed\n")
    changed, before, after = _rebuild(builds, src, tmp_path)
    assert after["base"] == before["base"]
    assert after["python-deps"] == before["python-deps"]
    assert after["app"] != before["app"]
    assert changed.digest != builds.first.digest


def test_changed_lock_changes_only_the_deps_layer(builds: Builds, tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    lock = src / LOCK
    # Drop one locked package (nvidia-ml-py: nothing imports it at start-up).
    lines, out, skipping = lock.read_text().splitlines(), [], False
    for line in lines:
        if line.startswith("nvidia-ml-py=="):
            skipping = True
        elif skipping and not line.startswith(" "):
            skipping = False
        if not skipping:
            out.append(line)
    assert len(out) < len(lines)
    lock.write_text("\n".join(out) + "\n")
    changed, before, after = _rebuild(builds, src, tmp_path)
    assert after["base"] == before["base"]
    assert after["app"] == before["app"]
    assert after["python-deps"] != before["python-deps"]
    assert changed.lock_sha256 != builds.first.lock_sha256
    assert changed.digest != builds.first.digest
    assert not any(w.startswith("nvidia_ml_py") for w in changed.wheels)


def test_a_pinned_version_gone_from_the_mirror_fails_clearly(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    pins = src / BASE_PINS
    text = pins.read_text()
    libc = next(ln for ln in text.splitlines() if ln.startswith("libc6="))
    pins.write_text(text.replace(libc, "libc6=2.36-0+gone1"))
    with pytest.raises(ImageBuildError) as e:
        build_base(src, tmp_path / "work", source_date_epoch=SDE)
    assert e.value.step == "base"
    assert "libc6" in str(e.value)
    assert "no longer on" in str(e.value) and "snapshot.debian.org" in str(e.value)
