"""Importing the Ethereum stack (web3, eth-account, eth-keys, eth-tester) safely.

py_ecc and py-evm raise ``sys.setrecursionlimit`` to 100000 when first imported. That is
process-wide: deep recursion anywhere (``json.loads`` of deeply nested input, say) then
overflows the C stack and kills the process with SIGSEGV instead of raising
RecursionError. Every certmgr module that imports that stack does it inside
:func:`eth_import_guard`, which puts the previous limit back; the code paths we use do not
recurse deeply (our contract makes no external calls).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["eth_import_guard"]


@contextlib.contextmanager
def eth_import_guard() -> Iterator[None]:
    """Import the Ethereum stack inside this; the recursion limit is restored afterwards."""
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
