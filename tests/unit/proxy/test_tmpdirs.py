"""proxy.tmpdirs: a directory whose owner is gone is removed; a live owner's is not.

Owners are real child processes holding the real lock (``flock``), killed with SIGKILL as
the OOM killer would: no clean-up code of theirs runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import tmpdirs

_OWNER = r"""
import sys, time
from proxy.tmpdirs import private_tempdir
print(private_tempdir(sys.argv[1]), flush=True)
time.sleep(60)
"""


@pytest.fixture
def tmp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    yield tmp_path


def _owner(prefix: str) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, prefix],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_a_killed_owners_directory_is_removed_and_a_live_ones_kept(tmp_base: Path) -> None:
    dead, dead_dir = _owner("teeproxy-x-")
    live, live_dir = _owner("teeproxy-x-")
    try:
        _kill(dead)
        assert dead_dir.is_dir() and (dead_dir / tmpdirs.LOCK_NAME).is_file()
        mine = tmpdirs.private_tempdir("teeproxy-x-")
        assert not dead_dir.exists()  # swept: nobody held its lock
        assert live_dir.is_dir()  # its owner runs
        assert mine.is_dir() and mine.parent == tmp_base
        assert oct(mine.stat().st_mode & 0o777) == "0o700"
        # The new one is locked by this process: a sweep elsewhere keeps it.
        assert tmpdirs.sweep_stale("teeproxy-x-") == []
        tmpdirs.remove_private_tempdir(mine)
        assert not mine.exists()
    finally:
        _kill(live)
    assert tmpdirs.sweep_stale("teeproxy-x-") == [live_dir]


def test_what_is_not_ours_to_judge_is_left_alone(tmp_base: Path) -> None:
    unlocked = tmp_base / "teeproxy-x-nolock"  # no lock file: made by something else
    unlocked.mkdir()
    other_prefix, other_dir = _owner("teeproxy-y-")
    target = tmp_base / "elsewhere"
    target.mkdir()
    (target / tmpdirs.LOCK_NAME).write_text("")
    link = tmp_base / "teeproxy-x-link"
    link.symlink_to(target)  # a link, even to an unlocked directory with a lock file
    try:
        _kill(other_prefix)
        assert tmpdirs.sweep_stale("teeproxy-x-") == []
        assert unlocked.is_dir() and target.is_dir() and link.is_symlink()
        assert other_dir.is_dir()  # another prefix's: not this sweep's
    finally:
        if other_prefix.poll() is None:
            _kill(other_prefix)
