"""glibc's allocator in a worker: relayed bodies' buffers are reused, not faulted in again.

Every backend read of a relayed body is a new ``bytes`` object of up to 256 KiB (uvloop
reads that much at a time), freed as soon as it is written to the client. glibc's
``malloc`` serves such blocks from the top of its heap and, by default, gives the top back
to the kernel (``brk``) as soon as more than twice its mmap threshold (a few hundred KiB,
adjusted as it goes) lies free there; the next reads then fault the same pages in again,
each one zeroed by the kernel first. Measured under bench (c) (1 MiB responses over 50
connections, one worker): about 800 ``brk`` calls in 5 s (``strace -c``), page faults and
``clear_page`` about 15 % of the worker's CPU samples (``perf record -e cpu-clock``), and
1.62-1.66 ms of CPU per MiB relayed; with the settings below, 1.23 ms.

:func:`worker_environment` therefore fixes the mmap threshold at :data:`MMAP_THRESHOLD`
(blocks up to a read's size come from the heap; larger, rarer ones that the heap's free top
cannot hold are mapped, and returned to the kernel when freed, as before) and lets up to
``retain`` bytes lie free at the heap's top for reuse before it is trimmed
(``limits.retain_free_memory``). The price: after a burst of bulk transfers a worker may
hold up to that much free memory; nothing at rest.

They are glibc's own environment variables, given to each worker process as the
supervisor starts it (:func:`in_environment`): glibc reads them before the interpreter's
first allocation, and nothing is loaded for it (``ctypes`` for ``mallopt`` would be; see
the worker's import test). A new value applies to workers started after a reload. Only
glibc reads them; elsewhere nothing is set. An operator who tunes glibc himself
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, or ``glibc.malloc`` tunables in
``GLIBC_TUNABLES``) keeps his settings.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Final

__all__ = ["MMAP_THRESHOLD", "in_environment", "worker_environment"]

# Blocks larger than this, when the heap's free top cannot hold them, are mapped on their
# own (and unmapped when freed).
MMAP_THRESHOLD: Final = 1024 * 1024
_OPERATOR_SETTINGS: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # not glibc (musl, macOS)
        return False


def worker_environment(retain: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables that make a worker's glibc keep up to ``retain`` free bytes at its
    heap's top: none when ``retain`` is 0, the C library is not glibc, or ``environ``
    (default: this process's) tunes glibc's allocator already."""
    env = os.environ if environ is None else environ
    if retain <= 0 or not _glibc():
        return {}
    if any(name in env for name in _OPERATOR_SETTINGS) or "glibc.malloc." in env.get(
        "GLIBC_TUNABLES", ""
    ):
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(retain)}


@contextlib.contextmanager
def in_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in this process's environment for the duration (a child process
    started meanwhile inherits them); synchronous, around starting a worker only."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
