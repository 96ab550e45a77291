"""Continuous enforcement of the on-chain measurement policy: the supervisor's half.

:class:`Governor` reads the policy every ``refresh_period`` through
:class:`certmgr.policy.rpc.PolicyReader` (k-of-n quorum), keeps the last snapshot a quorum
agreed on, decides with :func:`certmgr.policy.model.decide` whether this build's
measurement id may serve (fail closed after ``max_staleness``), and publishes the result
as the governance state file (:mod:`proxy.gatestate`), plus metrics and the admin
``/ready`` details. In enforce mode the supervisor waits for an "allowed" verdict before it
prepares or requests any certificate. Each worker obeys the published state through its
gate (:mod:`proxy.dataplane.gate`); docs/GOVERNANCE.md describes both halves.

Monitor mode runs the Governor (logs, metrics, admin) and never blocks. What to publish
after a decision is the pure :func:`next_gate`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.crypto import keccak

from certmgr.keys import atomic_write
from certmgr.policy.model import (
    PolicyDecision,
    PolicySnapshot,
    VoteOutcome,
    decide,
    parse_measurement_id,
)
from proxy import metrics
from proxy.config import Config, GovernanceConfig, parse_listen
from proxy.errors import GovernanceError
from proxy.gatestate import GateState, state_path
from proxy.log import policy_log as log
from proxy.runtime import Runtime
from proxy.tasks import spawn

if TYPE_CHECKING:
    from certmgr.policy.devchain import EmbeddedChain
    from certmgr.policy.rpc import PolicyReader

__all__ = [
    "DEV_MEASUREMENT_ID",
    "Governor",
    "governed_measurement_id",
    "next_gate",
    "start_governor",
]

# The demo's stand-in for a measurement id: a fixed hash of a sentence saying what it is. It
# is not derived from any TEE and proves nothing; "dev" in self_measurement selects it.
DEV_MEASUREMENT_ID = keccak(text="teeproxy development build: NOT a TEE measurement")


def governed_measurement_id(g: GovernanceConfig, runtime: Runtime) -> bytes:
    """This build's measurement id (32 bytes) as ``governance.self_measurement`` says.

    "auto" takes the runtime's, read from a fresh quote of the provider ``[attestation]``
    configures, so governance and the RA-TLS evidence always name the same measurement
    (the simulated one in the demo included).
    """
    if g.self_measurement == "dev":
        log.warning("governance uses the development measurement id: NOT a TEE measurement")
        return DEV_MEASUREMENT_ID
    if g.self_measurement == "auto":
        if runtime.measurement_id is None:
            raise GovernanceError(
                "cannot compute this TEE's measurement id: no attestation provider "
                "([attestation] provider is 'none' or no TEE interface was found); "
                "or set governance.self_measurement to the build's id (0x + 64 hex digits)"
            )
        return runtime.measurement_id
    return parse_measurement_id(g.self_measurement)


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


# -- supervisor side -------------------------------------------------------------------------


class Governor:
    """Reads the policy, decides, publishes. One per supervisor."""

    def __init__(self, cfg: Config, measurement_id: bytes, *, signer: bytes | None = None) -> None:
        """``signer``: the receipt signing address the embedded chain registers (None: none)."""
        self.cfg = cfg
        self.g = cfg.governance
        self.measurement_id = measurement_id
        self.signer = signer
        self.snapshot: PolicySnapshot | None = None
        self.outcome: VoteOutcome | None = None
        self.state: GateState | None = None
        self.chain: EmbeddedChain | None = None
        self._reader: PolicyReader | None = None
        self._path = state_path(cfg)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # web3 (the reader) and py-evm (the embedded chain) take about a second to import:
        # loaded, off the event loop, only when governance is on.
        rpc = await asyncio.to_thread(importlib.import_module, "certmgr.policy.rpc")
        urls: tuple[str, ...] = self.g.rpc_urls
        address = self.g.contract
        if self.g.embedded_chain:
            devchain = await asyncio.to_thread(importlib.import_module, "certmgr.policy.devchain")
            addr = parse_listen(self.g.embedded_chain_listen, "governance.embedded_chain_listen")
            signer = self.signer
            self.chain = await devchain.EmbeddedChain.start(
                Path(self.cfg.state_dir) / "governance",
                host=addr.host,
                port=addr.port,
                allow=((self.measurement_id, "teeproxy dev build"),),
                signers=((signer, self.measurement_id),) if signer else (),
            )
            urls, address = (self.chain.url,), self.chain.address
        self._reader = rpc.PolicyReader(
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


async def start_governor(cfg: Config, runtime: Runtime) -> Governor | None:
    """Start governance for the supervisor (None when off).

    enforce: returns only once this build is allowed, or raises GovernanceError after
    ``startup_wait``. monitor: one read, whatever it says. Then refreshes in the background.
    The embedded chain registers this process's receipt signer (the demo's receipts then
    verify on chain).
    """
    if cfg.governance.mode == "off":
        return None
    mid = governed_measurement_id(cfg.governance, runtime)
    signer = runtime.signing_key.address if runtime.signing_key is not None else None
    gov = Governor(cfg, mid, signer=signer)
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
    gov.task = spawn(gov.run(), "governance")
    return gov
