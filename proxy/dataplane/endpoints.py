"""What the proxy answers itself instead of forwarding: one registry, one way to add.

Each part that serves a path of its own (the attestation evidence, the ACME evidence, the
receipt store, ACME HTTP-01 answers on the plain-HTTP listener) registers a handler here;
a listener asks :meth:`LocalEndpoints.find` before forwarding. A path is matched exactly or
by prefix; ``methods`` restricts a handler to those methods (others are forwarded, as if
the path were not registered). Pure lookup: no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

__all__ = ["Handler", "LocalEndpoints"]

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class _Route:
    path: str
    handler: Handler
    prefix: bool
    methods: frozenset[str] | None


class LocalEndpoints:
    """Handlers by exact path, then by longest prefix."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self) -> None:
        self._exact: dict[str, _Route] = {}
        self._prefixes: list[_Route] = []

    def add(
        self,
        path: str,
        handler: Handler,
        *,
        prefix: bool = False,
        methods: Iterable[str] | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"endpoint path must start with /: {path!r}")
        route = _Route(path, handler, prefix, frozenset(methods) if methods else None)
        taken = [r.path for r in self._prefixes] if prefix else list(self._exact)
        if path in taken:
            raise ValueError(f"endpoint {path} is registered twice")
        if prefix:
            self._prefixes.append(route)
            self._prefixes.sort(key=lambda r: len(r.path), reverse=True)
        else:
            self._exact[path] = route

    def find(self, method: str, path: str) -> Handler | None:
        """The handler for this request, or None (forward it)."""
        route = self._exact.get(path)
        if route is None:
            for r in self._prefixes:
                if path.startswith(r.path):
                    route = r
                    break
            else:
                return None
        if route.methods is not None and method not in route.methods:
            return None
        return route.handler

    def paths(self) -> list[str]:
        """Every registered path (prefixes end with ``*``), for logs and tests."""
        return sorted([*self._exact, *(r.path + "*" for r in self._prefixes)])
