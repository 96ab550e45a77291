"""``build_image``: the release image as an OCI image layout, reproducibly (does I/O).

Three layers, each a deterministic tar (:mod:`certmgr.release.oci`), so the one that changes
is the one whose input changed:

1. ``base``: a Debian bookworm root file system made by mmdebstrap from the packages and
   versions in ``release/base-packages.txt`` (``--include=NAME=VERSION`` for every one;
   the installed dpkg database must equal the list), with ``SOURCE_DATE_EPOCH`` set, the
   app user created as the Dockerfile creates it, and what varies between runs removed
   (package lists and caches, logs, ``*-old`` backups, ``__pycache__``).
2. ``python-deps``: the virtual environment ``/opt/teeproxy`` over the base's
   ``/usr/bin/python3``, holding every wheel of ``requirements.lock``, downloaded with
   ``pip download --require-hashes --no-deps --only-binary=:all:`` for the image's platform
   (CPython 3.11, manylinux up to glibc 2.36).
3. ``app``: teeproxy's own wheel, built from the source tree's files with setuptools and
   ``SOURCE_DATE_EPOCH``.

Wheels are unpacked by pypa's ``installer`` rather than by pip: pip writes the build
machine's interpreter into entry-point scripts, ``installer`` writes the image's
(``#!/opt/teeproxy/bin/python``). No bytecode is compiled: ``.pyc`` files are not
byte-stable across CPython patch releases and marshal's reference flags (bpo-34093), and
the image runs with ``PYTHONDONTWRITEBYTECODE=1`` as a non-root user, so nothing is written
at run time either. The build tools (pip, setuptools, installer) come from
``release/build-requirements.lock`` into a fresh virtual environment of the build machine's
Python (any 3.11+: no interpreter output lands in the image), isolated from pip's
configuration files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from certmgr.errors import ImageBuildError
from certmgr.release import spec
from certmgr.release.oci import BlobStore, Entry, Layer, LayerBuilder, write_layout

__all__ = [
    "BASE_PINS",
    "BUILD_LOCK",
    "LOCK",
    "BaseRootfs",
    "ImageBuild",
    "build_base",
    "build_image",
    "resolve_base_pins",
    "source_commit",
]

log = logging.getLogger("teeproxy.release")

BASE_PINS = "release/base-packages.txt"
BUILD_LOCK = "release/build-requirements.lock"
LOCK = "requirements.lock"
# What goes into teeproxy's wheel: pyproject.toml's packages and the readme it names.
_APP_FILES = ("pyproject.toml", "README.md")
_APP_DIRS = ("proxy", "certmgr")
_SKIP_NAMES = frozenset({"__pycache__"})
_SITE = f"{spec.VENV}/lib/python{spec.PYTHON_VERSION}/site-packages"
_INTERPRETER = f"{spec.VENV}/bin/python"

# Removed from the base: run-time state and caches that differ between runs or hosts.
_BASE_DROP_PREFIXES = ("var/cache/", "var/log/", "var/lib/apt/lists/", "tmp/", "run/", "dev/")
_BASE_DROP_FILES = frozenset(
    {
        "etc/hostname",
        "etc/resolv.conf",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/subuid-",
        "etc/subgid-",
    }
)

_INSTALL_SCRIPT = """
import sys
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile
destdir, prefix, site, interpreter = sys.argv[1:5]
for path in sys.argv[5:]:
    with WheelFile.open(path) as source:
        scheme = {
            "purelib": site, "platlib": site, "scripts": prefix + "/bin", "data": prefix,
            "headers": prefix + "/include/site/python3.11/" + source.distribution,
        }
        dest = SchemeDictionaryDestination(
            scheme, interpreter=interpreter, script_kind="posix",
            bytecode_optimization_levels=(), destdir=destdir,
            # As pip does: a later wheel replaces a file an earlier one shipped (some ship
            # stray top-level files such as docs/Makefile). The order is fixed (sorted).
            overwrite_existing=True,
        )
        install(source, dest, {"INSTALLER": b"teeproxy-build-image\\n"})
"""

_BUILD_WHEEL_SCRIPT = """
import sys
from setuptools import build_meta
print(build_meta.build_wheel(sys.argv[1]))
"""


@dataclass(frozen=True)
class BaseRootfs:
    """mmdebstrap's output for one pin list and ``SOURCE_DATE_EPOCH``, verified against it."""

    tar: Path
    pins: tuple[spec.PackagePin, ...]
    source_date_epoch: int
    pins_sha256: str


@dataclass(frozen=True)
class ImageBuild:
    """What :func:`build_image` made. ``digest`` is the manifest's (what a registry and
    ``skopeo inspect`` call the image digest); ``layers`` are in image order."""

    digest: str
    config_digest: str
    layers: tuple[Layer, ...]
    lock_sha256: str
    base_pins_sha256: str
    build_lock_sha256: str
    source_date_epoch: int
    commit: str | None
    dirty: bool
    output: Path
    wheels: tuple[str, ...] = field(default=())
    app_wheel_sha256: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "image_digest": self.digest,
            "config_digest": self.config_digest,
            "layers": [
                {"name": x.name, "digest": x.digest, "size": x.size, "entries": x.entries}
                for x in self.layers
            ],
            "lock_sha256": self.lock_sha256,
            "base_pins_sha256": self.base_pins_sha256,
            "build_lock_sha256": self.build_lock_sha256,
            "app_wheel_sha256": self.app_wheel_sha256,
            "source_date_epoch": self.source_date_epoch,
            "commit": self.commit,
            "dirty": self.dirty,
            "output": str(self.output),
        }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(step: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None) -> str:
    log.info("%s: %s", step, " ".join(argv[:6]))
    try:
        proc = subprocess.run(  # noqa: S603 - fixed tool paths, no shell
            list(argv),
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            umask=0o022,
            check=False,
        )
    except OSError as e:
        raise ImageBuildError(step, f"cannot run {argv[0]}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise ImageBuildError(step, f"{argv[0]} exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def _clean_env(source_date_epoch: int, tmp: Path) -> dict[str, str]:
    """A fixed environment: no locale, timezone, umask or pip configuration of the caller's
    leaks in. Proxy and certificate settings pass (they change how, not what, is fetched)."""
    keep = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
            "PIP_CERT", "PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "SSL_CERT_FILE")  # fmt: skip
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "SOURCE_DATE_EPOCH": str(source_date_epoch),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            # pip's cache only saves downloads: every file is checked against the lock's hash.
            "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        }
    )
    return env


def source_commit(source: Path) -> tuple[str | None, int | None, bool]:
    """(commit, commit time, dirty) of a git checkout; (None, None, False) otherwise."""
    git = shutil.which("git")
    if git is None or not (source / ".git").exists():
        return None, None, False
    try:
        out = subprocess.run(  # noqa: S603
            [git, "-C", str(source), "log", "-1", "--format=%H %ct"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        status = subprocess.run(  # noqa: S603
            [git, "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        raise ImageBuildError("source", f"git failed on {source}: {e}") from e
    if len(out) != 2:
        return None, None, False
    return out[0], int(out[1]), bool(status.strip())


def _read_source(source: Path, rel: str, cap: int = 8 << 20) -> bytes:
    path = source / rel
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise ImageBuildError("source", f"{path}: {e.strerror or e}") from e
    if len(data) > cap:
        raise ImageBuildError("source", f"{path} is larger than {cap} bytes")
    return data


def _load_pins(source: Path) -> tuple[tuple[spec.PackagePin, ...], str]:
    data = _read_source(source, BASE_PINS)
    return spec.parse_pins(data.decode("utf-8")), hashlib.sha256(data).hexdigest()


def _mmdebstrap_argv(
    include: Sequence[str], out: Path, mirror: str, security_mirror: str
) -> list[str]:
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise ImageBuildError("base", "mmdebstrap is not installed (Debian package mmdebstrap)")
    argv = [
        exe,
        "--variant=essential",
        f"--architectures={spec.ARCHITECTURE}",
        "--include=" + ",".join(include),
        # Documentation is not part of the image (the copyright files are).
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        # mmdebstrap copies the host's resolv.conf and hostname in (see its manual,
        # SOURCE_DATE_EPOCH): a container runtime provides both.
        '--customize-hook=rm -f "$1"/etc/resolv.conf "$1"/etc/hostname',
    ]
    for cmd in spec.USER_COMMANDS:
        argv.append('--customize-hook=chroot "$1" ' + " ".join(cmd))
    argv.append(f'--customize-hook=chmod 0700 "$1"{spec.APP_HOME}')
    argv += [
        spec.DEBIAN_SUITE,
        str(out),
        f"deb {mirror} {spec.DEBIAN_SUITE} main",
        f"deb {mirror} {spec.DEBIAN_SUITE}-updates main",
        f"deb {security_mirror} {spec.DEBIAN_SUITE}-security main",
    ]
    return argv


def _dpkg_status(tar_path: Path) -> tuple[spec.PackagePin, ...]:
    with tarfile.open(tar_path) as tar:
        for name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
            try:
                member = tar.getmember(name)
            except KeyError:
                continue
            f = tar.extractfile(member)
            if f is None or member.size > spec.MAX_STATUS_FILE:
                break
            return spec.parse_dpkg_status(f.read())
    raise ImageBuildError("base", f"{tar_path} has no dpkg status file")


def build_base(
    source: Path,
    work_dir: Path,
    *,
    source_date_epoch: int,
    mirror: str = spec.DEFAULT_MIRROR,
    security_mirror: str = spec.DEFAULT_SECURITY_MIRROR,
) -> BaseRootfs:
    """Run mmdebstrap for the source tree's pin list; refuse a result that differs from it."""
    pins, pins_sha = _load_pins(source)
    tmp = work_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    out = work_dir / "base-rootfs.tar"
    argv = _mmdebstrap_argv([str(p) for p in pins], out, mirror, security_mirror)
    try:
        _run("base", argv, env=_clean_env(source_date_epoch, tmp))
    except ImageBuildError as e:
        if "was not found" in str(e) or "has no installation candidate" in str(e):
            raise ImageBuildError(
                "base",
                f"a pinned Debian package version is no longer on {mirror} (Debian keeps "
                f"only the current version of each package; rebuild an old release from "
                f"snapshot.debian.org, or refresh {BASE_PINS} with --update-base-pins):\n{e}",
            ) from e
        raise
    installed = _dpkg_status(out)
    diff = spec.diff_pins(pins, installed)
    if diff:
        raise ImageBuildError(
            "base", f"installed packages differ from {BASE_PINS}:\n" + "\n".join(diff)
        )
    return BaseRootfs(out, pins, source_date_epoch, pins_sha)


def resolve_base_pins(
    work_dir: Path,
    *,
    source_date_epoch: int,
    mirror: str = spec.DEFAULT_MIRROR,
    security_mirror: str = spec.DEFAULT_SECURITY_MIRROR,
) -> tuple[spec.PackagePin, ...]:
    """The packages and versions the mirror serves today for :data:`spec.BASE_ROOTS`."""
    tmp = work_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    out = work_dir / "resolve-rootfs.tar"
    argv = _mmdebstrap_argv(spec.BASE_ROOTS, out, mirror, security_mirror)
    _run("base", argv, env=_clean_env(source_date_epoch, tmp))
    try:
        return _dpkg_status(out)
    finally:
        out.unlink(missing_ok=True)


def _dropped_from_base(path: str, is_dir: bool) -> bool:
    """Byte code, backups, caches, logs and device nodes go; the directories holding the
    last three stay (empty), as a container runtime expects them."""
    if "__pycache__" in PurePosixPath(path).parts or path.endswith(".pyc"):
        return True
    if is_dir:
        return False
    if path in _BASE_DROP_FILES or any(path.startswith(p) for p in _BASE_DROP_PREFIXES):
        return True
    return path.endswith("-old") and path.startswith(("var/lib/dpkg/", "var/cache/"))


def base_layer(base: BaseRootfs) -> LayerBuilder:
    """The base tar's entries, filtered (directories are kept, their contents go)."""
    b = LayerBuilder(base.source_date_epoch)
    with tarfile.open(base.tar) as tar:
        for m in tar:
            path = LayerBuilder.normalise(m.name)
            if not path:
                continue
            if _dropped_from_base(path, m.isdir()):
                continue
            if m.pax_headers and any(k.startswith("SCHILY.xattr.") for k in m.pax_headers):
                raise ImageBuildError("base", f"{path} carries extended attributes")
            if m.isreg():
                entry = Entry(path, tarfile.REGTYPE, m.mode, m.uid, m.gid, int(m.mtime),
                              source=base.tar, offset=m.offset_data, size=m.size)  # fmt: skip
            elif m.isdir() or m.issym() or m.islnk() or m.ischr() or m.isblk() or m.isfifo():
                entry = Entry(path, m.type, m.mode, m.uid, m.gid, int(m.mtime), linkname=m.linkname,
                              devmajor=m.devmajor, devminor=m.devminor)  # fmt: skip
            else:
                raise ImageBuildError("base", f"unsupported tar member type for {path}")
            b.add(entry)
    return b


def _build_env(work: Path, env: Mapping[str, str], source: Path) -> Path:
    """A fresh virtual environment with the pinned build tools; its python."""
    venv = work / "buildenv"
    _run("tools", [sys.executable, "-m", "venv", str(venv)], env=env)
    py = venv / "bin" / "python"
    _run("tools", [str(py), "-m", "pip", "install", "--quiet", "--require-hashes",
                   "--no-deps", "-r", str(source / BUILD_LOCK)], env=env)  # fmt: skip
    return py


def _download_wheels(py: Path, lock: Path, dest: Path, env: Mapping[str, str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        "deps",
        [str(py), "-m", "pip", "download", "--quiet", "--require-hashes", "--no-deps",
         "--only-binary=:all:", *(f"--platform={p}" for p in spec.WHEEL_PLATFORMS),
         "--implementation=cp", f"--python-version={spec.PYTHON_VERSION}",
         f"--abi=cp{spec.PYTHON_VERSION.replace('.', '')}", "-r", str(lock), "-d", str(dest)],
        env=env,
    )  # fmt: skip
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ImageBuildError("deps", f"pip downloaded no wheel for {lock}")
    return wheels


def _install(py: Path, wheels: Sequence[Path], root: Path, env: Mapping[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _run("install", [str(py), "-c", _INSTALL_SCRIPT, str(root), spec.VENV, _SITE, _INTERPRETER,
                     *map(str, wheels)], env=env)  # fmt: skip


def _copy_app_source(source: Path, dest: Path) -> None:
    """The files teeproxy's wheel is made of, with fixed modes (the umask never shows)."""
    files: list[Path] = [source / f for f in _APP_FILES]
    for d in _APP_DIRS:
        for p in (source / d).rglob("*"):
            parts = p.relative_to(source).parts
            if p.is_file() and not _SKIP_NAMES.intersection(parts) and p.suffix != ".pyc":
                files.append(p)
    for p in sorted(files):
        target = dest / p.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_read_source(source, str(p.relative_to(source)), 64 << 20))
        target.chmod(0o644)


def _venv_skeleton(b: LayerBuilder, python_version: str) -> None:
    """What ``python3 -m venv /opt/teeproxy`` makes without pip (nothing installs at run time)."""
    b.add_dir(spec.VENV)
    b.add_dir(f"{spec.VENV}/bin")
    b.add_dir(f"{spec.VENV}/include")
    b.add_dir(f"{spec.VENV}/lib/python{spec.PYTHON_VERSION}/site-packages")
    b.add_symlink(f"{spec.VENV}/lib64", "lib")
    b.add_symlink(f"{spec.VENV}/bin/python", "/usr/bin/python3")
    b.add_symlink(f"{spec.VENV}/bin/python3", "python")
    b.add_symlink(f"{spec.VENV}/bin/python{spec.PYTHON_VERSION}", "python")
    cfg = (
        "home = /usr/bin\n"
        "include-system-site-packages = false\n"
        f"version = {python_version}\n"
        f"executable = /usr/bin/python{spec.PYTHON_VERSION}\n"
        f"command = /usr/bin/python3 -m venv {spec.VENV}\n"
    )
    b.add_file(f"{spec.VENV}/pyvenv.cfg", cfg.encode())


def _image_config(version: str, commit: str | None) -> dict[str, object]:
    labels = {
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.title": "teeproxy",
    }
    if commit:
        labels["org.opencontainers.image.revision"] = commit
    return {
        "architecture": spec.ARCHITECTURE,
        "os": "linux",
        "config": {
            "User": spec.USER,
            "Env": [f"{k}={v}" for k, v in sorted(spec.ENV.items())],
            "Entrypoint": list(spec.ENTRYPOINT),
            "Cmd": list(spec.CMD),
            "WorkingDir": spec.WORKDIR,
            "ExposedPorts": {p: {} for p in spec.EXPOSED_PORTS},
            "StopSignal": spec.STOP_SIGNAL,
            "Labels": labels,
        },
    }


def build_image(
    source: Path,
    output: Path,
    *,
    source_date_epoch: int | None = None,
    work_dir: Path | None = None,
    base: BaseRootfs | None = None,
    mirror: str = spec.DEFAULT_MIRROR,
    security_mirror: str = spec.DEFAULT_SECURITY_MIRROR,
) -> ImageBuild:
    """Build the image of ``source`` (a teeproxy source tree) into the OCI layout ``output``.

    ``source_date_epoch`` defaults to the commit time of the checkout's HEAD; outside a git
    checkout it is required. ``work_dir`` holds intermediate files (a temporary directory
    removed afterwards when not given). ``base`` reuses a :func:`build_base` result made
    for the same pins and epoch (tests share one; a release build leaves it ``None``).
    """
    source = source.resolve()
    commit, commit_time, dirty = source_commit(source)
    if source_date_epoch is None:
        if commit_time is None:
            raise ImageBuildError(
                "source", f"{source} is not a git checkout: give --source-date-epoch"
            )
        source_date_epoch = commit_time
    if source_date_epoch < 0:
        raise ImageBuildError("source", "SOURCE_DATE_EPOCH must not be negative")
    if dirty:
        log.warning("%s has uncommitted changes: the image is not labelled with %s", source, commit)
    pyproject = tomllib.loads(_read_source(source, "pyproject.toml").decode())
    version = str(pyproject.get("project", {}).get("version", "0"))
    lock_bytes = _read_source(source, LOCK)
    build_lock_sha = hashlib.sha256(_read_source(source, BUILD_LOCK)).hexdigest()
    pins, pins_sha = _load_pins(source)

    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="teeproxy-image-")) if work_dir is None else work_dir
    work = work.resolve()
    output = output.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        if base is None:
            base = build_base(source, work, source_date_epoch=source_date_epoch,
                              mirror=mirror, security_mirror=security_mirror)  # fmt: skip
        elif base.source_date_epoch != source_date_epoch or base.pins != pins:
            raise ImageBuildError("base", "the given base was built for other pins or epoch")
        tmp = work / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = _clean_env(source_date_epoch, tmp)
        py = _build_env(work, env, source)

        wheels = _download_wheels(py, source / LOCK, work / "wheels", env)
        deps_root = work / "deps-root"
        _install(py, wheels, deps_root, env)
        deps = LayerBuilder(source_date_epoch)
        _venv_skeleton(deps, spec.python_full_version(pins))
        deps.add_tree(deps_root / spec.VENV.lstrip("/"), spec.VENV)

        src_copy = work / "app-src"
        _copy_app_source(source, src_copy)
        dist = work / "dist"
        dist.mkdir()
        name = _run("app", [str(py), "-c", _BUILD_WHEEL_SCRIPT, str(dist)], env=env,
                    cwd=src_copy).strip().splitlines()[-1]  # fmt: skip
        app_wheel = dist / name
        app_root = work / "app-root"
        _install(py, [app_wheel], app_root, env)
        app = LayerBuilder(source_date_epoch)
        app.add_tree(app_root / spec.VENV.lstrip("/"), spec.VENV)

        output.mkdir(parents=True, exist_ok=True)
        if any(output.iterdir()):
            raise ImageBuildError("output", f"{output} is not empty")
        store = BlobStore(output)
        wheel_names = ", ".join(w.name for w in wheels)
        layers = (
            store.put_layer(base_layer(base), "base",
                            f"mmdebstrap {spec.DEBIAN_SUITE} {BASE_PINS} sha256:{pins_sha}"),
            store.put_layer(deps, "python-deps",
                            f"installer {LOCK} sha256:{hashlib.sha256(lock_bytes).hexdigest()}"),
            store.put_layer(app, "app", f"installer {app_wheel.name}"),
        )  # fmt: skip
        log.info("wheels: %s", wheel_names)
        manifest, config = write_layout(
            store,
            layers,
            _image_config(version, None if dirty else commit),
            source_date_epoch=source_date_epoch,
            ref_name=version,
            annotations={"org.opencontainers.image.version": version},
        )
        return ImageBuild(
            digest=manifest.digest,
            config_digest=config.digest,
            layers=layers,
            lock_sha256=hashlib.sha256(lock_bytes).hexdigest(),
            base_pins_sha256=pins_sha,
            build_lock_sha256=build_lock_sha,
            source_date_epoch=source_date_epoch,
            commit=commit,
            dirty=dirty,
            output=output,
            wheels=tuple(w.name for w in wheels),
            app_wheel_sha256=_sha256_file(app_wheel),
        )
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
