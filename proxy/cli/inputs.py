"""What the commands read from the operator: files (capped before anything decodes them)
and passwords (from an environment variable, or a prompt on a terminal)."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from proxy.errors import UsageError

__all__ = ["ask_password", "read_capped"]


def read_capped(path: str | Path, cap: int) -> bytes:
    """The whole file, refused when larger than ``cap`` bytes (never more in memory)."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    if len(data) > cap:
        raise UsageError(f"{path} is larger than {cap} bytes")
    return data


def ask_password(env: str, what: str, *, confirm: bool = False) -> str:
    """``$env``, else asked on the terminal (twice with ``confirm``); no terminal: refused."""
    value = os.environ.get(env)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"no password: set {env} or run in a terminal to be prompted")
    first = getpass.getpass(f"{what} password: ")
    if confirm and getpass.getpass("again: ") != first:
        raise UsageError("passwords differ")
    return first
