"""proxy.dataplane.allocator: freed read-sized blocks stay in glibc's heap for reuse.

Each case starts a fresh interpreter with the environment :func:`worker_environment`
gives (glibc reads it at the process's start) and reads glibc's own account of its heap
(``mallinfo2``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from proxy.dataplane import allocator

pytestmark = pytest.mark.skipif(
    not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc's allocator only"
)

MiB = 1024 * 1024

# With "big", first one 8 MiB block (no free memory at the heap's top can hold it; glibc's
# dynamic thresholds then rise to its size, so it is left out otherwise); then two rounds
# of 40 blocks of 256 KiB (a relayed body read by uvloop is one such block), all alive at
# once and then freed, as under 40 bulk transfers.
_SCRIPT = """
import ctypes, json, os, sys

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
base = libc.mallinfo2()
with_big = after_big = base
if sys.argv[1] == "big":
    big = b"y" * (8 * 1024 * 1024)
    with_big = libc.mallinfo2()
    del big
    after_big = libc.mallinfo2()
for _ in range(2):
    blocks = [b"x" * (256 * 1024) for _ in range(40)]
    during = libc.mallinfo2()
    del blocks
    after = libc.mallinfo2()
print(json.dumps({
    "mapped_during": during.hblkhd - base.hblkhd,
    "free_top_after": after.keepcost,
    "mapped_with_big": with_big.hblkhd - base.hblkhd,
    "mapped_after_big": after_big.hblkhd - base.hblkhd,
}))
"""


def _clean() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}


def _run(retain: int, *, big: bool = False) -> dict[str, Any]:
    environ = _clean()
    variables = allocator.worker_environment(retain, environ)
    assert bool(variables) == (retain > 0)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "big" if big else ""],
        env={**environ, **variables},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_glibc_defaults_give_freed_read_blocks_back_to_the_kernel() -> None:
    # The cost the module exists for: without it, the freed top of the heap is trimmed,
    # so the next reads fault their pages in again.
    result = _run(0)
    assert result["free_top_after"] < 2 * MiB


def test_configured_heap_keeps_freed_read_blocks_for_reuse() -> None:
    result = _run(64 * MiB)
    assert result["mapped_during"] == 0  # read-sized blocks come from the heap
    assert result["free_top_after"] >= 9 * MiB  # the 10 MiB freed stays for the next reads


def test_free_memory_kept_is_bounded_by_retain() -> None:
    result = _run(4 * MiB)
    assert result["free_top_after"] <= 4 * MiB + 256 * 1024


def test_blocks_over_the_mmap_threshold_are_still_returned_when_freed() -> None:
    result = _run(64 * MiB, big=True)
    assert result["mapped_with_big"] >= 8 * MiB
    assert result["mapped_after_big"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
    ],
)
def test_operator_glibc_settings_are_left_alone(name: str, value: str) -> None:
    assert allocator.worker_environment(64 * MiB, {**_clean(), name: value}) == {}


def test_other_glibc_tunables_do_not_stop_it() -> None:
    environ = {**_clean(), "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"}
    assert allocator.worker_environment(MiB, environ) == {
        "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(MiB),
    }


def test_the_environment_is_restored_after_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4096")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with allocator.in_environment({"MALLOC_TRIM_THRESHOLD_": "1", "MALLOC_MMAP_THRESHOLD_": "2"}):
        assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1"
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "2"
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "4096"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
