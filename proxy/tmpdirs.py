"""Private temporary directories that an owner killed outright does not leave for good.

The supervisor keeps its multiprocess metrics (``PROMETHEUS_MULTIPROC_DIR``) and the shared
receipt store's socket in directories of its own under the system's temporary directory
and removes them when it exits. Killed outright (SIGKILL, the OOM killer) it cannot, and
every restart would leave one more. So each such directory holds a lock file that its
owner keeps locked (``flock``) while it runs, and making a new directory first removes
every directory of the same prefix whose lock nobody holds any more.

A lock rather than a pid: the kernel releases it when its holder dies, whatever pid
namespace the holder ran in (two containers sharing ``/tmp`` see each other's live locks),
and a reused pid cannot keep garbage alive. The lock file is locked before it gets its
name, so a directory being made is never taken for an abandoned one. Directories without
a lock file (made by something else), symbolic links and directories of another user are
left alone.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import stat
import tempfile
from pathlib import Path

from proxy.log import server_log as log

__all__ = ["LOCK_NAME", "private_tempdir", "remove_private_tempdir", "sweep_stale"]

LOCK_NAME = ".owner.lock"

_held: dict[Path, int] = {}  # this process's directories and their locked descriptors


def private_tempdir(prefix: str) -> Path:
    """A new directory ``<tmp>/<prefix>XXXXXXXX`` (mode 0700) locked by this process, after
    removing those of the same prefix whose owners are gone."""
    sweep_stale(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path / (LOCK_NAME + ".new"), flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(path / (LOCK_NAME + ".new"), path / LOCK_NAME)
    except OSError:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    _held[path] = fd
    return path


def remove_private_tempdir(path: Path) -> None:
    """Remove a directory :func:`private_tempdir` made here, and let go of its lock."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)


def sweep_stale(prefix: str) -> list[Path]:
    """Remove this user's ``<tmp>/<prefix>*`` directories whose lock nobody holds; the
    ones removed."""
    removed: list[Path] = []
    uid = os.getuid()
    for name in glob.glob(glob.escape(os.path.join(tempfile.gettempdir(), prefix)) + "*"):
        d = Path(name)
        try:
            st = d.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or d in _held:
            continue
        try:
            fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock file: not one of ours to judge
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner runs
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log.info("removed %s, left by a process that did not exit cleanly", d)
        finally:
            os.close(fd)
    return removed
