"""Every exception the proxy raises on purpose, under one base.

Few exceptions, each caught somewhere. Each also inherits the closest builtin so that
generic handlers (``except TimeoutError``) keep working, and carries its context as
attributes rather than only in the message (h11's ``error_status_hint`` habit: the data
plane's errors name the HTTP status they answer with). The library's errors are
:class:`certmgr.errors.CertmgrError`.

    ProxyError
    ├── ConfigError (ValueError)         a config value is invalid; .field (dotted path)
    ├── BackendError (ConnectionError)   the backend broke the exchange       -> 502
    ├── BackendTimeout (TimeoutError)    a backend timeout; .phase, .seconds  -> 504
    ├── ClientRequestError (ValueError)  the client's request is bad; .status -> 400/408/413
    ├── FramingError (ValueError)        a message's framing is invalid or over a limit
    ├── GovernanceError (RuntimeError)   governance cannot run                -> exit 3
    └── UsageError (ValueError)          a command's input is unusable        -> exit 1/2
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendTimeout",
    "ClientRequestError",
    "ConfigError",
    "FramingError",
    "GovernanceError",
    "ProxyError",
    "UsageError",
]


class ProxyError(Exception):
    """Base of every error the proxy raises on purpose."""


class ConfigError(ProxyError, ValueError):
    """A configuration value is missing or invalid; ``field`` names it (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class BackendError(ProxyError, ConnectionError):
    """The backend could not be reached or broke the exchange (-> 502)."""


class BackendTimeout(ProxyError, TimeoutError):
    """The backend did not answer within a configured timeout (-> 504).

    ``phase`` is one of ``connect``, ``headers``, ``idle``, ``total``.
    """

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"backend {phase} timeout after {seconds:g} s")
        self.phase = phase
        self.seconds = seconds


class ClientRequestError(ProxyError, ValueError):
    """The client's request is malformed or over a limit; ``status`` is 400, 408 or 413."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FramingError(ProxyError, ValueError):
    """A message's framing is invalid or over a limit (:mod:`proxy.dataplane.framing`): the
    data plane answers 400 when the client sent it and 502 when the backend did."""


class GovernanceError(ProxyError, RuntimeError):
    """Governance cannot run: no measurement id, no policy at start, embedded chain failure."""


class UsageError(ProxyError, ValueError):
    """A ``teeproxy`` command's input (arguments, files, keystore, connection) is unusable;
    the command prints the message and exits non-zero (each command documents its codes)."""
