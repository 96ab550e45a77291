"""What the release image is: its base, its user, its command; and the pin-list formats (pure).

These constants are the single description of the image that ``teeproxy build-image`` makes;
the Dockerfile describes the same image for container engines, and
``tests/unit/certmgr/release/test_spec.py`` parses the Dockerfile and fails when the two
disagree (user, entry point, command, port, environment, Python version, Debian release).

This module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from certmgr.errors import ImageBuildError

__all__ = [
    "APP_GID",
    "APP_HOME",
    "APP_UID",
    "APP_USER",
    "ARCHITECTURE",
    "BASE_ROOTS",
    "CMD",
    "DEBIAN_SUITE",
    "DEFAULT_MIRROR",
    "DEFAULT_SECURITY_MIRROR",
    "ENTRYPOINT",
    "ENV",
    "EXPOSED_PORTS",
    "PYTHON_VERSION",
    "STOP_SIGNAL",
    "USER_COMMANDS",
    "VENV",
    "WHEEL_PLATFORMS",
    "WORKDIR",
    "PackagePin",
    "diff_pins",
    "parse_dpkg_status",
    "parse_pins",
]

DEBIAN_SUITE = "bookworm"
ARCHITECTURE = "amd64"
# Debian bookworm's python3 is CPython 3.11, the version requirements.lock is compiled for.
PYTHON_VERSION = "3.11"
# The lock's wheels are chosen for these platforms, most preferred first: glibc 2.36 is
# bookworm's, so every manylinux wheel up to manylinux_2_36 runs on the base (PEP 600; the
# legacy aliases of PEP 599/571/513 are the same glibc versions, 2.17, 2.12, 2.5).
WHEEL_PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What the base is installed for: the interpreter, and useradd/groupadd for the app user.
# release/base-packages.txt pins these and everything they pull in.
BASE_ROOTS = ("python3", "passwd")

VENV = "/opt/teeproxy"
APP_USER = "teeproxy"
APP_UID = 10001
APP_GID = 10001
APP_HOME = "/var/lib/teeproxy"
# Run in the base root file system, exactly as the Dockerfile's RUN step creates the user.
USER_COMMANDS = (
    ("groupadd", "--system", "--gid", str(APP_GID), APP_USER),
    (
        "useradd", "--system", "--uid", str(APP_UID), "--gid", APP_USER,
        "--home-dir", APP_HOME, "--create-home", "--shell", "/usr/sbin/nologin", APP_USER,
    ),
)  # fmt: skip
# Docker's default PATH (the python base image's, without its /usr/local Python) after the venv.
ENV: Mapping[str, str] = {
    "LANG": "C.UTF-8",
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
USER = f"{APP_UID}:{APP_GID}"
WORKDIR = APP_HOME
EXPOSED_PORTS = ("8443/tcp",)
STOP_SIGNAL = "SIGTERM"
ENTRYPOINT = ("teeproxy",)
CMD = ("serve",)

# Debian policy 5.6.1 (package names) and 5.6.12 (versions).
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION = re.compile(r"(?:[0-9]+:)?[0-9A-Za-z.+~-]+")
MAX_PIN_FILE = 1 << 20
MAX_STATUS_FILE = 64 << 20


@dataclass(frozen=True, order=True)
class PackagePin:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}={self.version}"


def parse_pins(text: str) -> tuple[PackagePin, ...]:
    """``NAME=VERSION`` lines (``#`` comments, blank lines) -> pins sorted by name."""
    if len(text) > MAX_PIN_FILE:
        raise ImageBuildError("pins", f"pin list larger than {MAX_PIN_FILE} bytes")
    pins: dict[str, PackagePin] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("=")
        if not sep or not _NAME.fullmatch(name) or not _VERSION.fullmatch(version):
            raise ImageBuildError("pins", f"line {n}: expected NAME=VERSION, got {raw!r}")
        if name in pins:
            raise ImageBuildError("pins", f"line {n}: {name} pinned twice")
        pins[name] = PackagePin(name, version)
    if not pins:
        raise ImageBuildError("pins", "the pin list names no package")
    return tuple(sorted(pins.values()))


def parse_dpkg_status(data: bytes) -> tuple[PackagePin, ...]:
    """The installed packages of a dpkg ``status`` file (deb822 paragraphs), sorted."""
    if len(data) > MAX_STATUS_FILE:
        raise ImageBuildError("pins", f"dpkg status larger than {MAX_STATUS_FILE} bytes")
    out: list[PackagePin] = []
    for para in data.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines of multi-line fields
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" not in fields:
            continue
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        out.append(PackagePin(fields["Package"], fields.get("Version", "")))
    return tuple(sorted(out))


def diff_pins(pinned: tuple[PackagePin, ...], installed: tuple[PackagePin, ...]) -> list[str]:
    """What differs between the pin list and an installed set, one line per package."""
    want = {p.name: p.version for p in pinned}
    have = {p.name: p.version for p in installed}
    lines: list[str] = []
    for name in sorted(want.keys() | have.keys()):
        w, h = want.get(name), have.get(name)
        if w == h:
            continue
        if h is None:
            lines.append(f"{name}: pinned {w}, not installed")
        elif w is None:
            lines.append(f"{name}: installed {h}, not pinned")
        else:
            lines.append(f"{name}: pinned {w}, installed {h}")
    return lines


def python_full_version(pins: tuple[PackagePin, ...]) -> str:
    """The upstream version of the base's interpreter (``3.11.2`` for ``3.11.2-6+deb12u9``)."""
    for p in pins:
        if p.name == f"python{PYTHON_VERSION}":
            return p.version.split(":")[-1].split("-")[0].split("+")[0]
    raise ImageBuildError("pins", f"the pin list has no python{PYTHON_VERSION}")
