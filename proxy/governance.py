"""Continuous enforcement of the on-chain measurement policy (issue 5, docs/GOVERNANCE.md).

Owns the ``[governance]`` section's rules and the two halves of enforcement:

- :class:`Governor` runs in the supervisor (control plane). It reads the policy every
  ``refresh_period`` through :class:`certmgr.policy_rpc.PolicyReader` (k-of-n quorum), keeps
  the last snapshot a quorum agreed on, decides with :func:`certmgr.policy.decide` whether this
  build's measurement id may serve (fail closed after ``max_staleness``), and publishes the
  result as one small JSON file, ``STATE_DIR/governance/state.json`` (written atomically),
  plus metrics and the admin ``/ready`` details. In enforce mode the supervisor waits for an
  "allowed" verdict before it prepares or requests any certificate.
- :class:`WorkerGate` runs in each worker (data plane). It polls that file (a stat, every
  ``min(1 s, refresh_period / 4)``) and, when serving is no longer allowed, closes the
  listening sockets (no new connections), answers requests already in flight with 503 and the
  reason (or cuts a response that already started: a truncated body must not look complete),
  and answers 503 on kept-alive connections. A revocation therefore takes effect within one
  refresh period plus one poll, i.e. within two refresh periods. A file that stops being
  renewed (supervisor gone) is itself a reason to stop.

Monitor mode runs the Governor (logs, metrics, admin) and never blocks.

The decision of what to publish from a decision is the pure :func:`next_gate`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eth_utils.crypto import keccak

from certmgr.policy.model import (
    PolicyDecision,
    PolicySnapshot,
    VoteOutcome,
    decide,
    parse_measurement_id,
)
from proxy.config import Config, GovernanceConfig, parse_listen
from proxy.errors import ProxyError

if TYPE_CHECKING:
    from aiohttp import web

    from certmgr.policy.devchain import EmbeddedChain
    from certmgr.policy.rpc import PolicyReader

__all__ = [
    "DEV_MEASUREMENT_ID",
    "GateState",
    "GovernanceError",
    "Governor",
    "WorkerGate",
    "next_gate",
    "self_measurement_id",
    "start_governor",
]

log = logging.getLogger("teeproxy.policy")

# The demo's stand-in for a measurement id: a fixed hash of a sentence saying what it is. It
# is not derived from any TEE and proves nothing; "dev" in self_measurement selects it.
DEV_MEASUREMENT_ID = keccak(text="teeproxy development build: NOT a TEE measurement")

_STATE_FILE = "governance/state.json"
_MAX_STATE_FILE = 64 * 1024
_NOT_READ = "governance state not read yet"


class GovernanceError(ProxyError, RuntimeError):
    """Governance cannot run: no measurement id, no policy at start, embedded chain failure."""


# -- config ------------------------------------------------------------------------------------


def self_measurement_id(g: GovernanceConfig, cfg: Config | None = None) -> bytes:
    """This build's measurement id (32 bytes) as the [governance] section says to find it.

    "auto" asks the TEE for a fresh quote: blocking I/O, call it in a thread. With the full
    ``cfg`` it uses the provider ``[attestation]`` configures (so governance and the RA-TLS
    evidence always name the same measurement, the simulated one in the demo included);
    without it, the auto-detected hardware provider.
    """
    if g.self_measurement == "dev":
        log.warning("governance uses the development measurement id: NOT a TEE measurement")
        return DEV_MEASUREMENT_ID
    if g.self_measurement == "auto":
        try:
            mid = _attested_measurement_id(cfg)
        except (OSError, ValueError) as e:
            raise GovernanceError(f"cannot compute this TEE's measurement id: {e}") from e
        if len(mid) != 32:
            raise GovernanceError(f"attestation provider gave a {len(mid)}-byte id")
        return mid
    return parse_measurement_id(g.self_measurement)


def _attested_measurement_id(cfg: Config | None) -> bytes:
    from certmgr.attest.measurement import measurement_id  # noqa: PLC0415
    from certmgr.attest.providers.factory import self_measurement_id  # noqa: PLC0415

    if cfg is None:
        return self_measurement_id()
    from certmgr.attest.providers.base import self_measurement  # noqa: PLC0415
    from proxy.certs import default_sealer  # noqa: PLC0415
    from proxy.wellknown import attestation_provider  # noqa: PLC0415

    provider = attestation_provider(cfg, default_sealer(cfg))
    if provider is None:
        raise GovernanceError(
            "governance.self_measurement = 'auto' needs an attestation provider "
            "([attestation] provider is 'none'); or set the build's id (0x + 64 hex digits)"
        )
    return measurement_id(self_measurement(provider))


def _own_signer(cfg: Config) -> bytes | None:
    """The receipt signing address the embedded chain registers (blocking), or None.

    The same key :mod:`proxy.wellknown` binds in the attestation (prepared here first; it
    loads the same sealed key later). None when receipts are off or there is no provider;
    an unusable key is logged and left to stop start-up where the attestation is prepared.
    """
    if not cfg.receipts.enabled or cfg.attestation.provider == "none":
        return None
    from certmgr.errors import SigningKeyError  # noqa: PLC0415
    from certmgr.receipts.signing import prepare_signing_key  # noqa: PLC0415
    from proxy.certs import default_sealer  # noqa: PLC0415

    try:
        return prepare_signing_key(cfg.state_dir, default_sealer(cfg)).address
    except (SigningKeyError, OSError) as e:
        log.warning("embedded chain: receipt signer not registered: %s", e)
        return None


# -- what is published ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateState:
    """What the supervisor tells the workers (and the admin endpoint shows)."""

    mode: str
    serving: bool
    verdict: str
    reason: str
    measurement_id: str
    version: int | None = None
    block_number: int | None = None
    confirmed_at: float | None = None
    written_at: float = 0.0
    latched: bool = False  # stopped, and resume_when_allowed = false: stays stopped

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> GateState:
        if len(data) > _MAX_STATE_FILE:
            raise ValueError("governance state file too large")
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("governance state is not an object")
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        state = cls(**fields)
        if not isinstance(state.serving, bool) or not isinstance(state.reason, str):
            raise ValueError("governance state has wrong types")
        return state


def next_gate(
    g: GovernanceConfig,
    decision: PolicyDecision,
    previous: GateState | None,
    measurement_id: bytes,
    now: float,
) -> GateState:
    """The state to publish after ``decision`` (pure)."""
    allowed = decision.allowed
    latched = False
    if g.mode == "enforce" and previous is not None and not g.resume_when_allowed:
        # Once stopped after having served, stay stopped until a restart.
        latched = previous.latched or (previous.serving and not allowed)
    serving = True if g.mode == "monitor" else (allowed and not latched)
    reason = decision.reason
    if latched and allowed:
        reason = "stopped earlier; resume_when_allowed = false: restart to serve again"
    confirmed = decision.age
    return GateState(
        mode=g.mode,
        serving=serving,
        verdict=str(decision.verdict),
        reason=reason,
        measurement_id="0x" + measurement_id.hex(),
        version=decision.version,
        block_number=decision.block_number,
        confirmed_at=None if confirmed is None else now - confirmed,
        written_at=now,
        latched=latched,
    )


def state_path(cfg: Config) -> Path:
    return Path(cfg.state_dir) / _STATE_FILE


# -- supervisor side -------------------------------------------------------------------------


class Governor:
    """Reads the policy, decides, publishes. One per supervisor."""

    def __init__(self, cfg: Config, measurement_id: bytes | None = None) -> None:
        self.cfg = cfg
        self.g = cfg.governance
        self.measurement_id = (
            self_measurement_id(self.g, cfg) if measurement_id is None else measurement_id
        )
        self.snapshot: PolicySnapshot | None = None
        self.outcome: VoteOutcome | None = None
        self.state: GateState | None = None
        self.chain: EmbeddedChain | None = None
        self._reader: PolicyReader | None = None
        self._path = state_path(cfg)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from certmgr.policy.rpc import PolicyReader  # noqa: PLC0415

        urls: tuple[str, ...] = self.g.rpc_urls
        address = self.g.contract
        if self.g.embedded_chain:
            from certmgr.policy.devchain import EmbeddedChain  # noqa: PLC0415

            addr = parse_listen(self.g.embedded_chain_listen, "governance.embedded_chain_listen")
            signer = await asyncio.to_thread(_own_signer, self.cfg)  # issue 6: receipts
            self.chain = await EmbeddedChain.start(
                Path(self.cfg.state_dir) / "governance",
                host=addr.host,
                port=addr.port,
                allow=((self.measurement_id, "teeproxy dev build"),),
                signers=((signer, self.measurement_id),) if signer else (),
            )
            urls, address = (self.chain.url,), self.chain.address
        self._reader = PolicyReader(
            urls, address, self.g.quorum, timeout=self.g.rpc_timeout, chain_id=self.g.chain_id
        )
        log.info(
            "governance %s: measurement 0x%s, contract %s, %d endpoint(s), quorum %d",
            self.g.mode,
            self.measurement_id.hex(),
            address,
            len(urls),
            self.g.quorum,
        )

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self._reader is not None:
            await self._reader.close()
        if self.chain is not None:
            await self.chain.stop()

    async def refresh(self) -> GateState:
        """One round: read (quorum), keep the last good snapshot, decide, publish."""
        from proxy import metrics  # noqa: PLC0415

        if self._reader is None:
            raise RuntimeError("Governor.refresh() before start()")
        outcome, _results = await self._reader.read_once()
        self.outcome = outcome
        index = {u: str(i) for i, u in enumerate(self._reader.urls)}
        for url in outcome.dissenting:
            metrics.POLICY_ENDPOINT_FAULTS.labels(index.get(url, "?"), "dissent").inc()
        for url, _reason in outcome.failed:
            metrics.POLICY_ENDPOINT_FAULTS.labels(index.get(url, "?"), "error").inc()
        agreed = outcome.snapshot
        if (
            agreed is not None
            and self.snapshot is not None
            and agreed.block_number < self.snapshot.block_number
        ):
            # A quorum behind what we already saw: keep the newer state, do not refresh its
            # age (an old state replayed must not look fresh).
            log.warning(
                "policy quorum answered block %d, older than block %d already seen",
                agreed.block_number,
                self.snapshot.block_number,
            )
            agreed = None
        metrics.POLICY_READS.labels("agreed" if agreed else "no_quorum").inc()
        if agreed is not None:
            if self.snapshot is None or not agreed.same_state(self.snapshot):
                log.info(
                    "policy version %d at block %d: %d measurement(s) allowed",
                    agreed.version,
                    agreed.block_number,
                    len(agreed.entries),
                )
            self.snapshot = agreed
        now = time.time()
        decision = decide(
            self.snapshot, self.measurement_id, now, max_staleness=self.g.max_staleness
        )
        state = next_gate(self.g, decision, self.state, self.measurement_id, now)
        if self.state is None or (self.state.serving, self.state.verdict) != (
            state.serving,
            state.verdict,
        ):
            level = logging.INFO if decision.allowed else logging.WARNING
            log.log(
                level, "policy %s: %s (serving: %s)", state.verdict, state.reason, state.serving
            )
        self.state = state
        await self._publish(state)
        metrics.POLICY_SERVING.set(1 if state.serving else 0)
        metrics.POLICY_ALLOWED.set(1 if decision.allowed else 0)
        if self.snapshot is not None:
            metrics.POLICY_VERSION.set(self.snapshot.version)
            metrics.POLICY_BLOCK.set(self.snapshot.block_number)
            metrics.POLICY_CONFIRMED.set(self.snapshot.confirmed_at)
        return state

    async def _publish(self, state: GateState) -> None:
        from certmgr.keys import atomic_write  # noqa: PLC0415

        await asyncio.to_thread(atomic_write, self._path, state.to_json(), 0o600)

    async def wait_allowed(self) -> bool:
        """enforce at start: refresh until serving is allowed or ``startup_wait`` passes."""
        deadline = time.monotonic() + self.g.startup_wait
        while True:
            state = await self.refresh()
            if state.serving:
                return True
            if time.monotonic() >= deadline:
                return False
            pause = min(self.g.refresh_period, 1.0)
            log.warning("not serving yet: %s; next policy read in %.1f s", state.reason, pause)
            await asyncio.sleep(pause)

    async def run(self) -> None:
        """Refresh forever (a background task of the supervisor)."""
        while True:
            await asyncio.sleep(self.g.refresh_period)
            try:
                await self.refresh()
            except OSError as e:
                # The read itself never raises for endpoint failures; this is the state file.
                log.error("cannot publish the governance state: %s", e)

    def status(self) -> dict[str, Any]:
        """For the admin /ready body."""
        s = self.state
        body: dict[str, Any] = {
            "mode": self.g.mode,
            "measurement_id": "0x" + self.measurement_id.hex(),
        }
        if s is not None:
            body.update(serving=s.serving, verdict=s.verdict, reason=s.reason)
        if self.snapshot is not None:
            body.update(
                version=self.snapshot.version,
                block_number=self.snapshot.block_number,
                age_seconds=round(time.time() - self.snapshot.confirmed_at, 3),
                contract=self.snapshot.address,
                chain_id=self.snapshot.chain_id,
            )
        if self.outcome is not None:
            body["endpoints"] = {
                "agreeing": list(self.outcome.agreeing),
                "dissenting": list(self.outcome.dissenting),
                "failed": [{"url": u, "reason": r} for u, r in self.outcome.failed],
            }
        if self.chain is not None:
            body["embedded_chain"] = {"rpc": self.chain.url, "contract": self.chain.address}
        return body

    def may_request_certificates(self) -> bool:
        """enforce: certificates (ACME orders) only while this build may serve."""
        return self.g.mode != "enforce" or (self.state is not None and self.state.serving)

    def ready_problem(self) -> str | None:
        """Why /ready must say 503 (enforce mode, not serving), or None."""
        if self.g.mode != "enforce":
            return None
        if self.state is None:
            return "policy not read yet"
        return None if self.state.serving else f"policy: {self.state.reason}"


async def start_governor(cfg: Config) -> Governor | None:
    """Start governance for the supervisor (None when off).

    enforce: returns only once this build is allowed, or raises GovernanceError after
    ``startup_wait``. monitor: one read, whatever it says. Then refreshes in the background.
    """
    if cfg.governance.mode == "off":
        return None
    mid = await asyncio.to_thread(self_measurement_id, cfg.governance, cfg)
    gov = Governor(cfg, mid)
    try:
        await gov.start()
        if cfg.governance.mode == "enforce":
            if not await gov.wait_allowed():
                reason = gov.state.reason if gov.state else "no policy"
                raise GovernanceError(
                    f"not allowed to serve after {cfg.governance.startup_wait:g} s: {reason}"
                )
        else:
            await gov.refresh()
    except BaseException:
        await gov.close()
        raise
    from proxy.tasks import spawn  # noqa: PLC0415

    gov.task = spawn(gov.run(), "governance")
    return gov


# -- worker side -----------------------------------------------------------------------------

Handler = Callable[["web.BaseRequest"], Awaitable["web.StreamResponse"]]


class Listening(Protocol):
    """What the gate needs from a worker: close and reopen its TLS listeners."""

    def stop_listening(self) -> None: ...

    async def listen(self) -> None: ...


class WorkerGate:
    """Applies the published governance state in one worker."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.g = cfg.governance
        self.path = state_path(cfg)
        self.blocked: str | None = _NOT_READ
        self._inflight: dict[asyncio.Task[Any], web.BaseRequest] = {}
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_config(cls, cfg: Config) -> WorkerGate | None:
        return cls(cfg) if cfg.governance.mode == "enforce" else None

    @property
    def poll_interval(self) -> float:
        return min(1.0, self.g.refresh_period / 4)

    def read(self, now: float) -> str | None:
        """Blocked reason from the state file, or None when serving is allowed (blocking I/O)."""
        try:
            with self.path.open("rb") as f:
                data = f.read(_MAX_STATE_FILE + 1)
            state = GateState.from_json(data)
        except FileNotFoundError:
            return "no governance state published"
        except (OSError, ValueError, TypeError) as e:
            log.error("governance state %s unreadable: %s", self.path, e)
            return "governance state unreadable"
        # A state the supervisor stopped renewing is no state: fail closed.
        if now - state.written_at > self.g.max_staleness + 2 * self.g.refresh_period:
            return "governance state not renewed (supervisor stopped reading the policy)"
        return None if state.serving else state.reason

    def set_blocked(self, reason: str | None) -> bool:
        """Apply a new verdict; True when it changed. Cancels in-flight requests on a block."""
        if reason == self.blocked:
            return False
        was = self.blocked
        self.blocked = reason
        if reason is not None:
            log.warning("worker %d stops serving: %s", os.getpid(), reason)
            for task in list(self._inflight):
                self._cancelled.add(task)
                task.cancel()
        elif was is not _NOT_READ:
            log.info("worker %d serving again (policy allows this build)", os.getpid())
        return True

    def wrap(self, handler: Handler) -> Handler:
        """The forwarder's handler behind the gate."""

        async def gated(request: web.BaseRequest) -> web.StreamResponse:
            if self.blocked is not None:
                return self._deny(self.blocked)
            task = asyncio.current_task()
            if task is None:  # aiohttp always runs handlers in a task
                return await handler(request)
            self._inflight[task] = request
            try:
                return await handler(request)
            except asyncio.CancelledError:
                reason = self._reason()  # re-read: set_blocked() ran while we awaited
                if task not in self._cancelled or reason is None:
                    raise
                task.uncancel()
                writer = request.writer
                if getattr(writer, "output_size", 1) == 0:
                    return self._deny(reason)
                # The response already started: only a cut connection is honest.
                if request.transport is not None:
                    request.transport.abort()
                raise
            finally:
                self._inflight.pop(task, None)
                self._cancelled.discard(task)

        return gated

    def _reason(self) -> str | None:
        return self.blocked

    def _deny(self, reason: str) -> web.StreamResponse:
        from proxy import metrics  # noqa: PLC0415
        from proxy.forward import error_response  # noqa: PLC0415

        metrics.status_counter(503).inc()
        resp = error_response(503, "policy_denied", f"this server may not serve: {reason}")
        resp.headers["Retry-After"] = str(int(self.g.refresh_period) + 1)
        return resp

    async def initial(self) -> bool:
        """Read the state before the worker listens; True when it may listen."""
        self.set_blocked(await asyncio.to_thread(self.read, time.time()))
        return self.blocked is None

    def attach(self, worker: Listening) -> None:
        """Start polling for ``worker`` (a named background task, stopped by close())."""
        from proxy.tasks import spawn  # noqa: PLC0415

        self._task = spawn(self.run(worker), "governance-gate")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def run(self, worker: Listening) -> None:
        """Poll the state file and open / close the worker's listeners accordingly."""
        listening = self.blocked is None
        while True:
            await asyncio.sleep(self.poll_interval)
            reason = await asyncio.to_thread(self.read, time.time())
            self.set_blocked(reason)
            if reason is not None and listening:
                worker.stop_listening()
                listening = False
            elif reason is None and not listening:
                try:
                    await worker.listen()
                    listening = True
                except OSError as e:
                    log.error("cannot reopen the listeners: %s", e)
