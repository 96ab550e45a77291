"""An asyncio etcd v3 client over etcd's gRPC-JSON gateway (``POST /v3/...``), with aiohttp.

etcd is outside the TEE and untrusted (docs/CLUSTER.md): this client only moves bytes and
bounds them. Every answer is size-capped before it is decoded (``max_response``), every
field is type-checked, keys and values are base64 on the wire (the gateway's encoding of
protobuf ``bytes``) and int64 fields are JSON strings.

Why the gateway and not a gRPC client: aetcd (maintained) talks to one endpoint per client
(no fail-over when that etcd member stops), has no LEASE target in its transaction
compares, ships no type information, and brings grpcio's own event-loop integration next
to uvloop; etcetra pins grpcio 1.62 and protobuf 4.25 and has had no release since 2024.
The gateway is part of etcd itself (etcd 3.4 serves it on every client URL), needs no
dependency beyond aiohttp, and lets the caps apply to the raw bytes.

Endpoints are tried in order from the last one that answered; a connection error, a
timeout or an "unavailable" answer (no leader, member stopping) moves to the next. A watch
(:meth:`EtcdClient.watch`) resumes from the revision after the last event it delivered,
on whichever endpoint answers.

I/O module: every method awaits the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from certmgr.errors import EtcdError
from certmgr.log import cluster_log as log

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "KeyValue",
    "Put",
    "Range",
    "TxnResult",
    "WatchEvent",
    "prefix_end",
]

DEFAULT_MAX_RESPONSE = 4 * 1024 * 1024
_UNAVAILABLE = 14  # gRPC UNAVAILABLE: no leader, member stopping
_RETRYABLE_CODES = frozenset({_UNAVAILABLE, 4})  # and DEADLINE_EXCEEDED


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise EtcdError(f"etcd answer: {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EtcdError(f"etcd answer: {what} is not base64") from e


def _int(value: object, what: str) -> int:
    """An int64 field: a JSON string of digits (or absent, meaning 0)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise EtcdError(f"etcd answer: {what} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 0 < len(value) <= 20 and value.lstrip("-").isdigit():
        return int(value)
    raise EtcdError(f"etcd answer: {what} is not an integer")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix`` (etcd's convention)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, d: object) -> KeyValue:
        if not isinstance(d, dict):
            raise EtcdError("etcd answer: a key-value is not an object")
        return cls(
            key=_unb64(d.get("key"), "key"),
            value=_unb64(d.get("value"), "value"),
            create_revision=_int(d.get("create_revision"), "create_revision"),
            mod_revision=_int(d.get("mod_revision"), "mod_revision"),
            version=_int(d.get("version"), "version"),
            lease=_int(d.get("lease"), "lease"),
        )


@dataclass(frozen=True, slots=True)
class Compare:
    """One transaction guard: ``target`` of ``key`` compared with ``value``.

    target: "VALUE" (bytes), "VERSION", "CREATE", "MOD" (revisions) or "LEASE" (lease id);
    result: "EQUAL", "NOT_EQUAL", "GREATER", "LESS".
    """

    key: bytes
    target: str
    value: int | bytes
    result: str = "EQUAL"

    def to_json(self) -> dict[str, Any]:
        field = {
            "VALUE": "value",
            "VERSION": "version",
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "LEASE": "lease",
        }[self.target]
        v = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: v}


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key)}
        if self.prefix:
            body["range_end"] = _b64(prefix_end(self.key))
        return {"request_delete_range": body}


@dataclass(frozen=True, slots=True)
class Range:
    key: bytes
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key)}
        if self.prefix:
            body["range_end"] = _b64(prefix_end(self.key))
        return {"request_range": body}


Op = Put | Delete | Range


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]  # the key-values of each Range op, in order


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "PUT" or "DELETE"
    kv: KeyValue


def _kvs(resp: Mapping[str, Any]) -> tuple[KeyValue, ...]:
    raw = resp.get("kvs") or []
    if not isinstance(raw, list):
        raise EtcdError("etcd answer: kvs is not a list")
    return tuple(KeyValue.from_json(k) for k in raw)


def _revision(resp: Mapping[str, Any]) -> int:
    header = resp.get("header") or {}
    if not isinstance(header, dict):
        raise EtcdError("etcd answer: header is not an object")
    return _int(header.get("revision"), "revision")


class EtcdClient:
    """etcd v3 through the JSON gateway of any of ``endpoints`` (``http://host:port``)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        max_response: int = DEFAULT_MAX_RESPONSE,
    ) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoints")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self.max_response = max_response
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16),
                # The gateway answers JSON; no cookies, no proxies from the environment.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self.max_response:
            raise EtcdError(f"etcd answer larger than {self.max_response} bytes")
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > self.max_response:
                raise EtcdError(f"etcd answer larger than {self.max_response} bytes")
        return bytes(buf)

    def _decode(self, raw: bytes, status: int) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise EtcdError(f"etcd answer (HTTP {status}) is not JSON") from e
        if not isinstance(doc, dict):
            raise EtcdError("etcd answer is not an object")
        return doc

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers."""
        errors: list[str] = []
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._current + i) % n
            url = f"{self.endpoints[idx]}/v3/{path}"
            try:
                async with self._http().post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout)
                ) as resp:
                    raw = await self._read_capped(resp)
                    status = resp.status
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                errors.append(f"{self.endpoints[idx]}: {type(e).__name__}: {e}")
                continue
            doc = self._decode(raw, status)
            if status != 200 or "error" in doc:
                code = doc.get("code")
                msg = str(doc.get("message") or doc.get("error") or f"HTTP {status}")[:200]
                if isinstance(code, int) and code in _RETRYABLE_CODES:
                    errors.append(f"{self.endpoints[idx]}: {msg}")
                    continue
                raise EtcdError(f"etcd {path}: {msg}", code if isinstance(code, int) else None)
            if idx != self._current:
                log.info("etcd: now using %s", self.endpoints[idx])
                self._current = idx
            return doc
        raise EtcdError(f"no etcd endpoint answered {path}: " + "; ".join(errors))

    # -- key-value ------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        kvs = _kvs(await self.call("kv/range", {"key": _b64(key)}))
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: bytes, *, limit: int = 10000) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (at most ``limit``) and the store revision read at."""
        resp = await self.call(
            "kv/range",
            {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "limit": str(limit)},
        )
        return list(_kvs(resp)), _revision(resp)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        body = Put(key, value, lease).to_json()["request_put"]
        return _revision(await self.call("kv/put", body))

    async def delete(self, key: bytes, *, prefix: bool = False) -> None:
        await self.call("kv/deleterange", Delete(key, prefix).to_json()["request_delete_range"])

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """All ``compare`` hold: ``success`` runs, else ``failure``; atomically."""
        resp = await self.call(
            "kv/txn",
            {
                "compare": [c.to_json() for c in compare],
                "success": [op.to_json() for op in success],
                "failure": [op.to_json() for op in failure],
            },
        )
        responses = resp.get("responses") or []
        if not isinstance(responses, list):
            raise EtcdError("etcd answer: responses is not a list")
        ranges = tuple(
            _kvs(r["response_range"])
            for r in responses
            if isinstance(r, dict) and isinstance(r.get("response_range"), dict)
        )
        return TxnResult(bool(resp.get("succeeded", False)), _revision(resp), ranges)

    # -- leases ---------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        resp = await self.call("lease/grant", {"TTL": str(ttl)})
        lease = _int(resp.get("ID"), "ID")
        if lease == 0:
            raise EtcdError("etcd granted no lease")
        return lease

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; its remaining TTL in seconds (0: it has expired)."""
        resp = await self.call("lease/keepalive", {"ID": str(lease)})
        result = resp.get("result")
        if not isinstance(result, dict):
            raise EtcdError("etcd keepalive answer has no result")
        return _int(result.get("TTL"), "TTL")

    async def revoke(self, lease: int) -> None:
        await self.call("lease/revoke", {"ID": str(lease)})

    # -- cluster --------------------------------------------------------------------------

    async def members(self) -> list[dict[str, Any]]:
        resp = await self.call("cluster/member/list", {})
        raw = resp.get("members") or []
        return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []

    async def endpoint_status(self, endpoint: str) -> dict[str, Any] | None:
        """``maintenance/status`` of one endpoint, or None when it does not answer."""
        try:
            async with self._http().post(
                f"{endpoint.rstrip('/')}/v3/maintenance/status",
                json={},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await self._read_capped(resp)
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        doc = self._decode(raw, status)
        return doc if status == 200 else None

    # -- watch ----------------------------------------------------------------------------

    async def watch(
        self, key: bytes, *, prefix: bool = False, start_revision: int = 0
    ) -> AsyncIterator[WatchEvent]:
        """Events on ``key`` (or every key under it) from ``start_revision`` (0: from now).

        Reconnects on any failure, to the next endpoint, from the revision after the last
        event delivered; pauses ``timeout`` between rounds of failures. Runs until cancelled.
        """
        next_rev = start_revision
        failures = 0
        while True:
            endpoint = self.endpoints[self._current]
            create: dict[str, Any] = {"key": _b64(key)}
            if prefix:
                create["range_end"] = _b64(prefix_end(key))
            if next_rev:
                create["start_revision"] = str(next_rev)
            try:
                async with self._http().post(
                    f"{endpoint}/v3/watch",
                    json={"create_request": create},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                ) as resp:
                    if resp.status != 200:
                        raise EtcdError(f"watch answered HTTP {resp.status}")
                    async for msg in self._lines(resp):
                        failures = 0
                        result = msg.get("result")
                        if not isinstance(result, dict):
                            raise EtcdError("watch message has no result")
                        compacted = _int(result.get("compact_revision"), "compact_revision")
                        if compacted:
                            # Our revision was compacted away: resume from the oldest kept.
                            next_rev = compacted
                            raise EtcdError(f"watch compacted at {compacted}")
                        if result.get("canceled"):
                            raise EtcdError("watch canceled by etcd")
                        events = result.get("events") or []
                        if not isinstance(events, list):
                            raise EtcdError("watch events is not a list")
                        for ev in events:
                            if not isinstance(ev, dict):
                                raise EtcdError("watch event is not an object")
                            kv = KeyValue.from_json(ev.get("kv"))
                            kind = "DELETE" if ev.get("type") == "DELETE" else "PUT"
                            next_rev = kv.mod_revision + 1
                            yield WatchEvent(kind, kv)
                    raise EtcdError("watch stream ended")
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                failures += 1
                log.info("etcd watch on %s interrupted: %s", endpoint, e)
                self._current = (self._current + 1) % len(self.endpoints)
                if failures % len(self.endpoints) == 0:
                    await asyncio.sleep(min(self.timeout, 1.0))

    async def _lines(self, resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        """The gateway's stream: one JSON object per line, each capped at ``max_response``."""
        buf = bytearray()
        async for chunk in resp.content.iter_any():
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                if line.strip():
                    yield self._decode(line, 200)
            if len(buf) > self.max_response:
                raise EtcdError(f"watch message larger than {self.max_response} bytes")
