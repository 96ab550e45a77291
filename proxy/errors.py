"""The proxy's exception hierarchy.

Few exceptions, each caught somewhere. Each also inherits the closest stdlib type so that
generic handlers (``except TimeoutError``) keep working, and carries its context as
attributes rather than only in the message.
"""

from __future__ import annotations


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
