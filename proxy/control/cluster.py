"""Cluster mode in the supervisor: one identity shared by replicas, coordinated through etcd.

docs/CLUSTER.md is the operator's view; this is the mechanism. Everything under the etcd
prefix ``/teeproxy/<cluster.name>/``:

    members/<id>        join record (:class:`certmgr.cluster.keyrelease.JoinRecord`), bound
                        to this replica's lease: gone when the replica stops refreshing it
    epoch               {"epoch": N}: the current cluster-key epoch (plain; never decreases
                        for a replica: :class:`certmgr.cluster.envelope.Watermarks`)
    wrap/<N>/<id>       the keys of epoch N wrapped to member <id> with HPKE, signed by the
                        member that verified it (:class:`~certmgr.cluster.keyrelease.WrapRecord`)
    data/acme-account   sealed: the shared ACME account (directory, URI, key)
    data/cert           sealed: the fleet's certificate (chain, key, names)
    data/receipt-signer sealed: the fleet's receipt signing key, with
                        ``[cluster] shared_signing_key`` (:mod:`certmgr.cluster.signer`)
    receipts/<id>       sealed: a stored receipt, bound to a lease of the receipts TTL
    lock/renew          the renewer's member id, bound to its lease (the renew lock)

- **Key release**: a replica publishes its join record (fresh evidence binding an HPKE key
  and a signing key) and waits. Every member holding the key verifies each join record it
  has not yet wrapped to with :func:`certmgr.attest.verify.verify_evidence` (the clients'
  verifier) and the on-chain policy *now* (the supervisor's :class:`Governor` snapshot,
  failing closed when stale), and only then wraps. The first replica of an empty cluster
  (and never one that has seen an epoch before) creates epoch 1.
- **Revocation**: when a wrap of the current epoch names a measurement the policy no
  longer allows, a member that is itself allowed rotates: a new key, wrapped to every member
  that verifies now, every ``data/`` value re-sealed under it with its version raised, all
  in one transaction guarded by the epoch's mod_revision (one rotation wins). Certificates
  already loaded keep serving throughout, so no request fails.
- **Renewal**: :meth:`ClusterMember.before_order` (called by the ACME loop when a renewal is
  due) installs a newer fleet certificate if one exists, else takes ``lock/renew`` with a
  put-if-absent on this replica's lease. The certificate is published by
  :meth:`ClusterMember.after_order` in a transaction that compares the lock's lease *and*
  mod_revision: a renewer whose lease expired (or whose lock was taken over) cannot publish.
- **Swap**: a watch on the prefix (plus a full re-read every ``resync_interval``) installs a
  new ``data/cert`` version into the local sealed ACME store and reloads the workers.
- **Shared receipt signer** (``[cluster] shared_signing_key``): the first allowed member
  holding the key generates ``data/receipt-signer`` (a put-if-absent guarded by the epoch's
  mod_revision); each member installs it sealed in its state dir and hands it to the
  supervisor (:attr:`ClusterMember.on_signer`: the RA-TLS certificate is made again with its
  address and the workers reload). A revocation rotation *replaces* it in the same
  transaction that re-seals the other values: the revoked build held the old one.

Values from etcd are size-capped by the client, parsed strictly, authenticated, and their
versions checked against what this replica has seen (persisted sealed in the state dir).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.acme.storage import AcmeStore, verify_issued
from certmgr.attest.collateral import load_collateral
from certmgr.attest.evidence import build_evidence, encode_evidence_claims, parse_evidence_json
from certmgr.attest.measurement import Measurement, TeeType, measurement_id
from certmgr.attest.policycheck import CheckResult
from certmgr.attest.quote import parse_evidence
from certmgr.attest.ratls import report_data_for_claims
from certmgr.attest.verify import (
    Failure,
    Reason,
    Verdict,
    VerifyOptions,
    load_dev_key,
    verify_evidence,
)
from certmgr.cluster.envelope import ValueKey, Watermarks, peek
from certmgr.cluster.etcd import Compare, Delete, EtcdClient, KeyValue, Put, Range
from certmgr.cluster.keyrelease import (
    MAX_EPOCHS,
    JoinRecord,
    WrapRecord,
    join_nonce,
    spki_der,
    unwrap_keys,
    wrap_keys,
)
from certmgr.cluster.signer import (
    SIGNER_VALUE,
    SharedSigner,
    open_signer,
    replace_signer,
    seal_signer,
)
from certmgr.errors import (
    CertmgrError,
    ClusterError,
    EnvelopeError,
    EtcdError,
    IssuedCertError,
    QuoteError,
    QuoteProviderError,
    SealError,
    VerifyError,
)
from certmgr.keys import atomic_write, spki_sha256
from certmgr.policy.model import decide, parse_measurement_id
from certmgr.receipts.signing import SigningKey, store_shared_signing_key
from proxy import metrics
from proxy.config import Config
from proxy.control.attestation import collateral_source
from proxy.control.governance import Governor
from proxy.log import cluster_log as log
from proxy.runtime import Runtime, shares_signing_key
from proxy.tasks import spawn

__all__ = ["ClusterMember"]

_MAX_EPOCH_RECORD = 4096
_RECEIPT_BUCKET = 60.0  # receipts share one lease per minute of their expiry


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class ClusterMember:
    """This replica's part in the cluster (one per supervisor; see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        runtime: Runtime,
        governor: Governor,
        *,
        client: EtcdClient | None = None,
    ) -> None:
        c = cfg.cluster
        self.cfg = cfg
        self.c = c
        self.runtime = runtime
        self.governor = governor
        self.me = c.member_id
        self.name = c.name
        self.client = client or EtcdClient(
            c.etcd_endpoints, timeout=c.etcd_timeout, max_response=c.max_value_size + 64 * 1024
        )
        self.prefix = f"/teeproxy/{c.name}/".encode()
        # Key pairs live in this process's memory only: new at every start.
        self._hpke = ec.generate_private_key(ec.SECP256R1())
        self._sign = ec.generate_private_key(ec.SECP256R1())
        self._hpke_spki = spki_der(self._hpke.public_key())
        self._dev_keys: tuple[bytes, ...] = ()  # read in start(), off the event loop
        # A newcomer's Intel quote is verified with the collateral this proxy uses for its
        # own (attestation.collateral_pccs_url / collateral_file); an SEV-SNP report with
        # the certificate table its evidence carries.
        self._collateral = collateral_source(cfg)
        self.keys: dict[int, bytes] = {}
        self.epoch = 0
        self._epoch_mod = 0
        self._epoch_policy_version = 0
        self.lease = 0
        self._lock_rev = 0
        self.renewer: str | None = None
        self.refused: dict[str, str] = {}
        self.members: dict[str, dict[str, Any]] = {}
        self.rotations = 0
        self.cert_version = 0
        self._join: JoinRecord | None = None
        self._seen_path = Path(cfg.state_dir) / "cluster" / f"{c.name}.seen.sealed"
        self.watermarks = Watermarks()
        self._tick_lock = asyncio.Lock()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._receipt_lease: tuple[int, float] = (0, 0.0)
        self.reload: Callable[[], Coroutine[Any, Any, None]] | None = None
        # The fleet's receipt signer (shared_signing_key) and who to tell when it changes.
        self.shared_signer = shares_signing_key(cfg)
        self.signer: SharedSigner | None = None
        self.on_signer: Callable[[SigningKey], Coroutine[Any, Any, None]] | None = None
        self._signer_problem = ""
        self.url = ""
        self.acme_wakeup: asyncio.Event | None = None
        self._my_mid = runtime.measurement_id or b""

    # -- keys in etcd ---------------------------------------------------------------------

    def k(self, *parts: str) -> bytes:
        return self.prefix + "/".join(parts).encode()

    @property
    def has_key(self) -> bool:
        return self.epoch in self.keys

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Join: publish the join record, then bootstrap or wait for the key (``key_wait``)."""
        self.watermarks = await asyncio.to_thread(self._load_watermarks)
        self._dev_keys = await asyncio.to_thread(self._read_dev_keys)
        self._join = await asyncio.to_thread(self._make_join_record)
        await self._publish_membership()
        self._tasks.append(spawn(self._keepalive(), "cluster-keepalive"))
        t0 = time.monotonic()
        deadline = t0 + self.c.key_wait
        while True:
            try:
                await self._try_bootstrap()
                await self._load_key()
                if self.has_key and self.shared_signer:
                    await self.sync_signer(apply=False)
            except (EtcdError, EnvelopeError, ValueError) as e:
                log.warning("cluster: waiting for the key: %s", e)
            if self.has_key and (self.signer is not None or not self.shared_signer):
                break
            if time.monotonic() > deadline:
                what = "the fleet's receipt signer" if self.has_key else "the cluster key"
                raise ClusterError(
                    f"no member released {what} within {self.c.key_wait:g} s "
                    "(is this build's measurement allowed? see the members' logs)"
                )
            await asyncio.sleep(0.2)
        log.info(
            "cluster %s: member %s holds the cluster key (epoch %d) after %.2f s",
            self.name,
            self.me,
            self.epoch,
            time.monotonic() - t0,
        )
        metrics.CLUSTER_KEY_WAIT.set(time.monotonic() - t0)
        if not self.shared_signer and self.runtime.signing_address:
            metrics.CLUSTER_SIGNER.labels(self.runtime.signing_address).set(1)
        await self.sync_cert(reload=False)

    def run(self) -> None:
        """Start the background work: watch, resync, admit, rotate."""
        self._tasks.append(spawn(self._watch(), "cluster-watch"))
        self._tasks.append(spawn(self._loop(), "cluster-loop"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.lease:
            # Leaving on purpose: the membership and any lock go at once, not after the TTL.
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self.lease)
        await self.client.close()

    def _read_dev_keys(self) -> tuple[bytes, ...]:
        try:
            return tuple(load_dev_key(Path(p).read_bytes()) for p in self.c.trust_dev_keys)
        except (OSError, VerifyError) as e:
            raise ClusterError(f"cluster.trust_dev_keys: {e}") from e

    def _make_join_record(self) -> JoinRecord:
        """Fresh evidence binding the HPKE and signing keys (blocking: asks the TEE)."""
        provider = self.runtime.provider
        if provider is None:
            raise ClusterError("cluster mode needs an attestation provider")
        sign_spki = spki_der(self._sign.public_key())
        nonce = join_nonce(self.name, self.me, self._hpke_spki, sign_spki)
        # With a shared signer this replica has no receipt key of its own at this point:
        # the join evidence names none (the fleet's address is attested by the RA-TLS
        # certificate and the evidence endpoint once the key is installed).
        claims = encode_evidence_claims(
            nonce,
            _sha256(self._hpke_spki),
            int(time.time()),
            signing_address="" if self.shared_signer else self.runtime.signing_address,
        )
        try:
            quote = provider.get_quote(report_data_for_claims(claims))
            tee = parse_evidence(quote).measurement.tee.value
        except (QuoteProviderError, QuoteError) as e:
            raise ClusterError(f"no quote for the join record: {e}") from e
        doc = build_evidence(quote, claims, tee=tee, provider=provider.name)
        return JoinRecord(
            self.me,
            self._hpke_spki,
            sign_spki,
            json.dumps(doc).encode(),
            "0x" + self._my_mid.hex(),
            int(time.time()),
            self.cfg.admin.listen,
            self.url,
            "shared" if self.shared_signer else ("own" if self.runtime.signing_key else ""),
        )

    async def _publish_membership(self) -> None:
        if self._join is None:
            raise ClusterError("no join record")
        self.lease = await self.client.grant(self.c.lease_ttl)
        await self.client.put(self.k("members", self.me), self._join.to_json(), lease=self.lease)

    async def advertise(self, url: str) -> None:
        """Publish where operators reach this replica (once its ports are resolved)."""
        self.url = url
        if self._join is None or self._join.url == url:
            return
        self._join = dataclasses.replace(self._join, url=url)
        try:
            await self.client.put(
                self.k("members", self.me), self._join.to_json(), lease=self.lease
            )
        except EtcdError as e:  # the next re-join publishes it
            log.warning("cluster: could not publish the advertised URL: %s", e)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.c.lease_ttl / 3)
            try:
                ttl = await self.client.keepalive(self.lease)
                if ttl == 0:
                    log.warning("cluster: lease expired (paused or cut off): joining again")
                    await self._publish_membership()
            except EtcdError as e:
                log.warning("cluster: lease refresh failed: %s", e)

    # -- watermarks (sealed in the state dir: the host can delete them, not forge them) --

    def _load_watermarks(self) -> Watermarks:
        try:
            blob = self._seen_path.read_bytes()
        except FileNotFoundError:
            return Watermarks()
        try:
            data = json.loads(self.runtime.sealer.unseal(blob, self._seen_path.name))
        except (SealError, ValueError) as e:
            raise ClusterError(f"{self._seen_path}: unreadable: {e}") from e
        return Watermarks.from_mapping(data if isinstance(data, dict) else {})

    async def _save_watermarks(self) -> None:
        data = json.dumps(self.watermarks.seen, sort_keys=True).encode()
        blob = self.runtime.sealer.seal(data, self._seen_path.name)
        await asyncio.to_thread(atomic_write, self._seen_path, blob)

    async def _note(self, name: str, version: int) -> None:
        if self.watermarks.note(name, version):
            await self._save_watermarks()

    # -- verification ---------------------------------------------------------------------

    def _policy(self, mid: bytes, _m: Measurement | None = None) -> CheckResult:
        g = self.cfg.governance
        d = decide(self.governor.snapshot, mid, time.time(), max_staleness=g.max_staleness)
        return CheckResult(d.allowed, d.reason)

    def _allowed(self, mid_hex: str) -> bool:
        try:
            return self._policy(parse_measurement_id(mid_hex)).allowed
        except ValueError:
            return False

    def _verify(self, rec: JoinRecord) -> Verdict:
        """The clients' verifier on a join record, with the on-chain policy now (pure)."""
        try:
            rec.signing_key()
            rec.public_key()
        except EnvelopeError as e:
            return _bad(str(e))
        nonce = join_nonce(self.name, rec.member_id, rec.hpke_spki, rec.sign_spki)
        opts = VerifyOptions(trusted_dev_keys=self._dev_keys, policy=self._policy)
        try:
            collateral = self._intel_collateral(rec.evidence)
            return verify_evidence(rec.evidence, nonce, _sha256(rec.hpke_spki), collateral, opts)
        except VerifyError as e:
            return _bad(str(e))

    def _intel_collateral(self, evidence: bytes) -> Any:
        """Collateral for a join record's Intel quote from this proxy's own source (None:
        none configured, not an Intel quote from a TEE, or unavailable: the verdict then
        says ``collateral-missing``, and nothing is released)."""
        if self._collateral is None:
            return None
        try:
            quote = parse_evidence_json(evidence).quote
            parsed = parse_evidence(quote)
            if parsed.simulated or parsed.tee not in (TeeType.TDX, TeeType.SGX):
                return None
            return load_collateral(self._collateral(quote, dt.datetime.now(dt.UTC)))
        except (CertmgrError, OSError, ValueError, RuntimeError) as e:
            log.warning("cluster: no collateral for a newcomer's quote: %s", e)
            return None

    async def _records(self) -> dict[str, JoinRecord]:
        kvs, _ = await self.client.get_prefix(self.k("members") + b"/")
        out: dict[str, JoinRecord] = {}
        for kv in kvs:
            try:
                rec = JoinRecord.parse(kv.value)
            except EnvelopeError as e:
                log.warning("cluster: ignoring a malformed join record %r: %s", kv.key[-80:], e)
                continue
            if kv.key != self.k("members", rec.member_id):
                log.warning("cluster: join record of %s under another key", rec.member_id)
                continue
            out[rec.member_id] = rec
        return out

    async def _wraps(self, epoch: int) -> dict[str, WrapRecord]:
        kvs, _ = await self.client.get_prefix(self.k("wrap", str(epoch)) + b"/")
        out: dict[str, WrapRecord] = {}
        for kv in kvs:
            try:
                w = WrapRecord.parse(kv.value)
            except EnvelopeError as e:
                log.warning("cluster: ignoring a malformed wrap record: %s", e)
                continue
            if w.epoch == epoch and kv.key == self.k("wrap", str(epoch), w.member_id):
                out[w.member_id] = w
        return out

    # -- the key --------------------------------------------------------------------------

    def _policy_version(self) -> int:
        snapshot = self.governor.snapshot
        return snapshot.version if snapshot is not None else 0

    def _epoch_record(self, epoch: int) -> bytes:
        # The policy version the epoch's creator judged the members by: a member whose
        # snapshot is older admits nobody to this epoch until it catches up (else a member
        # lagging behind a revocation would wrap the new key to the revoked replica).
        return json.dumps(
            {
                "format": "teeproxy-cluster-epoch/1",
                "epoch": epoch,
                "by": self.me,
                "policy_version": self._policy_version(),
            }
        ).encode()

    @staticmethod
    def _epoch_policy(kv: KeyValue) -> int:
        """The epoch record's ``policy_version`` (0 when absent; the record was checked)."""
        doc = json.loads(kv.value)
        pv = doc.get("policy_version", 0) if isinstance(doc, dict) else 0
        return pv if isinstance(pv, int) and not isinstance(pv, bool) and pv >= 0 else 0

    @staticmethod
    def _parse_epoch(kv: KeyValue) -> int:
        if len(kv.value) > _MAX_EPOCH_RECORD:
            raise EnvelopeError("epoch record too large")
        try:
            doc = json.loads(kv.value)
        except ValueError as e:
            raise EnvelopeError("epoch record is not JSON") from e
        epoch = doc.get("epoch") if isinstance(doc, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch < 2**32:
            raise EnvelopeError("epoch record: bad epoch")
        return epoch

    def _my_wrap(self, keys: dict[int, bytes], epoch: int) -> WrapRecord:
        return WrapRecord(
            epoch,
            self.me,
            self.me,
            "0x" + self._my_mid.hex(),
            _sha256(self._hpke_spki),
            wrap_keys(keys, self._hpke.public_key(), self.name, self.me, epoch),
        ).sign(self.name, self._sign)

    async def _try_bootstrap(self) -> None:
        if self.watermarks.seen.get("epoch", 0) > 0:
            return  # this replica was in the cluster before: never start a new key history
        if not self._policy(self._my_mid).allowed:
            return
        key = os.urandom(32)
        wrap = self._my_wrap({1: key}, 1)
        epoch_key = self.k("epoch")
        got = await self.client.txn(
            [Compare(epoch_key, "CREATE", 0)],
            [
                Put(epoch_key, self._epoch_record(1)),
                Put(self.k("wrap", "1", self.me), wrap.to_json()),
            ],
        )
        if got.succeeded:
            log.info("cluster %s: created the cluster key (epoch 1)", self.name)

    async def _load_key(self) -> bool:
        """Adopt the current epoch's key from our wrap record, if a trusted member made it."""
        kv = await self.client.get(self.k("epoch"))
        if kv is None:
            return False
        epoch = self._parse_epoch(kv)
        self._epoch_policy_version = self._epoch_policy(kv)
        try:
            self.watermarks.check("epoch", epoch)
        except ClusterError as e:
            metrics.CLUSTER_ROLLBACKS.inc()
            log.error("cluster: %s: keeping epoch %d", e, self.epoch)
            return False
        if epoch == self.epoch and self.has_key:
            self._epoch_mod = kv.mod_revision
            return True
        wkv = await self.client.get(self.k("wrap", str(epoch), self.me))
        if wkv is None:
            if epoch != self.epoch:
                log.info("cluster: epoch %d announced; no key wrapped to this member yet", epoch)
            return False
        wrap = WrapRecord.parse(wkv.value)
        if wrap.epoch != epoch or wrap.member_id != self.me:
            raise EnvelopeError("wrap record names another epoch or member")
        if wrap.recipient_spki_sha256 != _sha256(self._hpke_spki):
            return False  # wrapped to an earlier run of this member
        if wrap.by == self.me:
            wrapper = self._sign.public_key()
        else:
            rec = (await self._records()).get(wrap.by)
            if rec is None:
                log.info("cluster: the key was wrapped by %s, which has left: waiting", wrap.by)
                return False
            verdict = await asyncio.to_thread(self._verify, rec)
            if not verdict.trusted:
                log.warning("cluster: key wrapped by %s, which does not verify now", wrap.by)
                return False
            wrapper = rec.signing_key()
        if not wrap.verify(self.name, wrapper):
            raise EnvelopeError(f"wrap record from {wrap.by}: bad signature")
        keys = unwrap_keys(wrap.wrapped, self._hpke, self.name, self.me, epoch)
        self.keys.update(keys)
        for old in sorted(self.keys)[:-MAX_EPOCHS]:
            del self.keys[old]
        self.epoch = epoch
        self._epoch_mod = kv.mod_revision
        await self._note("epoch", epoch)
        metrics.CLUSTER_KEY_EPOCH.set(epoch)
        log.info("cluster: now at key epoch %d (wrapped by %s)", epoch, wrap.by)
        return True

    async def _admit(self) -> None:
        """Wrap the current key to every member that verifies and is allowed now; rotate
        when a member holding the current key has a measurement the policy revoked."""
        if not self.has_key:
            return
        records = await self._records()
        wraps = await self._wraps(self.epoch)
        lagging = self._policy_version() < self._epoch_policy_version
        view: dict[str, dict[str, Any]] = {}
        for mid_, rec in records.items():
            if mid_ == self.me:
                view[mid_] = {
                    "measurement_id": "0x" + self._my_mid.hex(),
                    "signing_address": (
                        self.signer.address_hex
                        if self.signer is not None
                        else (self.runtime.signing_address or None)
                    ),
                    "receipt_signer": rec.receipt_signer,
                    "url": rec.url,
                    "verdict": "self",
                    "policy": self._policy(self._my_mid).reason,
                    "allowed": self._policy(self._my_mid).allowed,
                    "has_key": True,
                }
                continue
            verdict = await asyncio.to_thread(self._verify, rec)
            mid_hex = (
                "0x" + measurement_id(verdict.measurement).hex()
                if verdict.measurement is not None
                else rec.measurement_id
            )
            existing = wraps.get(mid_)
            current = existing is not None and existing.recipient_spki_sha256 == _sha256(
                rec.hpke_spki
            )
            view[mid_] = {
                "measurement_id": mid_hex,
                "signing_address": (
                    "0x" + verdict.signing_address.hex() if verdict.signing_address else None
                ),
                "receipt_signer": rec.receipt_signer,
                "url": rec.url,
                "verdict": "trusted" if verdict.trusted else "refused",
                "reasons": [f.message for f in verdict.failures],
                "allowed": verdict.trusted,
                "has_key": current,
            }
            if not verdict.trusted:
                reason = "; ".join(f"{f.reason}: {f.message}" for f in verdict.failures)
                if self.refused.get(mid_) != reason:
                    log.warning("cluster: refusing the key to %s: %s", mid_, reason)
                    metrics.CLUSTER_REFUSALS.inc()
                self.refused[mid_] = reason
                continue
            self.refused.pop(mid_, None)
            if current and existing is not None and existing.by in records:
                continue
            if lagging:
                log.info(
                    "cluster: not releasing epoch %d to %s before this member's policy "
                    "(version %d) reaches the epoch's (version %d)",
                    self.epoch,
                    mid_,
                    self._policy_version(),
                    self._epoch_policy_version,
                )
                continue
            wrap = WrapRecord(
                self.epoch,
                mid_,
                self.me,
                mid_hex,
                _sha256(rec.hpke_spki),
                wrap_keys(self.keys, rec.public_key(), self.name, mid_, self.epoch),
            ).sign(self.name, self._sign)
            got = await self.client.txn(
                [Compare(self.k("epoch"), "MOD", self._epoch_mod)],
                [Put(self.k("wrap", str(self.epoch), mid_), wrap.to_json())],
            )
            if got.succeeded:
                view[mid_]["has_key"] = True
                log.info(
                    "cluster: released the key (epoch %d) to %s (measurement %s)",
                    self.epoch,
                    mid_,
                    mid_hex,
                )
        self.members = view
        metrics.CLUSTER_MEMBERS.set(len(records))
        revoked = sorted(m for m, w in wraps.items() if not self._allowed(w.measurement_id))
        if revoked and self._policy(self._my_mid).allowed:
            await self._rotate(records, f"measurement revoked for {', '.join(revoked)}")

    async def _rotate(self, records: dict[str, JoinRecord], reason: str) -> None:
        new = self.epoch + 1
        keys = dict(self.keys)
        keys[new] = os.urandom(32)
        ops: list[Put | Delete | Range] = [Put(self.k("epoch"), self._epoch_record(new))]
        to: list[str] = []
        for mid_, rec in records.items():
            if mid_ == self.me:
                ops.append(Put(self.k("wrap", str(new), mid_), self._my_wrap(keys, new).to_json()))
                to.append(mid_)
                continue
            verdict = await asyncio.to_thread(self._verify, rec)
            if not verdict.trusted or verdict.measurement is None:
                continue
            w = WrapRecord(
                new,
                mid_,
                self.me,
                "0x" + measurement_id(verdict.measurement).hex(),
                _sha256(rec.hpke_spki),
                wrap_keys(keys, rec.public_key(), self.name, mid_, new),
            ).sign(self.name, self._sign)
            ops.append(Put(self.k("wrap", str(new), mid_), w.to_json()))
            to.append(mid_)
        # Every shared value again, under the new key, its version raised.
        data, _ = await self.client.get_prefix(self.k("data") + b"/")
        new_key = ValueKey(keys[new], new, self.name)
        replaced = ""
        for kv in data:
            name = kv.key[len(self.prefix) :].decode(errors="replace")
            opened = self._open(name, kv.value)
            if name == SIGNER_VALUE:
                # Not re-sealed but replaced: a revoked build held the old key.
                old = open_signer(opened)
                key, blob = replace_signer(new_key, old, int(time.time()))
                ops.append(Put(kv.key, blob))
                replaced = f"; receipt signer {old.address_hex} replaced by {key.address_hex}"
                continue
            ops.append(Put(kv.key, new_key.seal(name, opened.version + 1, opened.plaintext)))
        got = await self.client.txn([Compare(self.k("epoch"), "MOD", self._epoch_mod)], ops)
        if not got.succeeded:
            log.info("cluster: another member rotated first")
            return
        self.keys = {e: keys[e] for e in sorted(keys)[-MAX_EPOCHS:]}
        self.epoch = new
        self._epoch_mod = got.revision
        self._epoch_policy_version = self._policy_version()
        self.rotations += 1
        await self._note("epoch", new)
        metrics.CLUSTER_KEY_EPOCH.set(new)
        metrics.CLUSTER_ROTATIONS.inc()
        log.warning(
            "cluster: rotated the key to epoch %d (%s); wrapped to %s; %d value(s) re-sealed%s",
            new,
            reason,
            ", ".join(sorted(to)),
            len(data),
            replaced,
        )

    # -- sealed values --------------------------------------------------------------------

    def _open(self, name: str, blob: bytes) -> Any:
        epoch, _version = peek(blob)
        key = self.keys.get(epoch)
        if key is None:
            raise EnvelopeError(f"{name}: sealed under epoch {epoch}, not held here")
        return ValueKey(key, epoch, self.name).open(name, blob)

    def _seal(self, name: str, version: int, plaintext: bytes) -> bytes:
        return ValueKey(self.keys[self.epoch], self.epoch, self.name).seal(name, version, plaintext)

    async def _read_opened(self, full: str) -> Any:
        """The opened value (:class:`~certmgr.cluster.envelope.Opened`) of ``full``, its
        version checked against what this replica saw; or None."""
        kv = await self.client.get(self.k(full))
        if kv is None:
            return None
        opened = self._open(full, kv.value)
        try:
            self.watermarks.check(full, opened.version)
        except ClusterError:
            metrics.CLUSTER_ROLLBACKS.inc()
            raise
        return opened

    async def read(self, name: str) -> tuple[int, bytes] | None:
        """(version, plaintext) of ``data/<name>``, version checked; or None."""
        opened = await self._read_opened(f"data/{name}")
        if opened is None:
            return None
        return opened.version, opened.plaintext

    # -- the fleet's receipt signer -------------------------------------------------------

    async def sync_signer(self, *, apply: bool = True) -> bool:
        """Install the fleet's receipt signer when etcd holds a newer one (generating the
        first one when there is none and this build is allowed). True when installed;
        ``apply``: tell :attr:`on_signer` (the supervisor) when its address changed."""
        if not self.shared_signer or not self.has_key:
            return False
        try:
            opened = await self._read_opened(SIGNER_VALUE)
            if opened is None and self._policy(self._my_mid).allowed:
                await self._create_signer()
                opened = await self._read_opened(SIGNER_VALUE)
        except EnvelopeError as e:
            # Sealed under an epoch this replica does not hold (revoked, or not yet
            # adopted): it keeps the signer it has.
            if str(e) != self._signer_problem:
                log.warning("cluster: the fleet's receipt signer is unusable here: %s", e)
            self._signer_problem = str(e)
            return False
        if opened is None or (self.signer is not None and opened.version <= self.signer.version):
            return False
        signer = open_signer(opened)
        self._signer_problem = ""
        changed = self.signer is None or self.signer.address_hex != signer.address_hex
        if changed:
            sealer = self.runtime.sealer
            await asyncio.to_thread(
                store_shared_signing_key, self.cfg.state_dir, sealer, signer.key
            )
        old = self.signer
        self.signer = signer
        await self._note(SIGNER_VALUE, signer.version)
        if old is not None and old.address_hex != signer.address_hex:
            metrics.CLUSTER_SIGNER.labels(old.address_hex).set(0)
        metrics.CLUSTER_SIGNER.labels(signer.address_hex).set(1)
        metrics.CLUSTER_SIGNER_VERSION.set(signer.version)
        if old is None:
            log.info(
                "cluster: receipts are signed with the fleet's key %s (version %d)",
                signer.address_hex,
                signer.version,
            )
        elif changed:
            log.warning(
                "cluster: the fleet's receipt signer changed from %s to %s (version %d): "
                "register the new one (teeproxy policy register-signer --cluster-members) "
                "and unregister the old one (teeproxy policy unregister-signer %s)",
                old.address_hex,
                signer.address_hex,
                signer.version,
                old.address_hex,
            )
        if changed and apply and self.on_signer is not None:
            await self.on_signer(signer.key)
        return changed

    async def _create_signer(self) -> None:
        key = SigningKey.generate()
        value_key = ValueKey(self.keys[self.epoch], self.epoch, self.name)
        blob = seal_signer(value_key, 1, key, int(time.time()))
        got = await self.client.txn(
            [
                Compare(self.k(SIGNER_VALUE), "CREATE", 0),
                Compare(self.k("epoch"), "MOD", self._epoch_mod),
            ],
            [Put(self.k(SIGNER_VALUE), blob)],
        )
        if got.succeeded:
            log.info("cluster: generated the fleet's receipt signing key %s", key.address_hex)

    # -- the certificate ------------------------------------------------------------------

    async def sync_cert(self, *, reload: bool = True) -> bool:
        """Install the fleet's certificate when etcd holds a newer one; True if installed."""
        if not self.cfg.acme.enabled or not self.has_key:
            return False
        try:
            got = await self.read("cert")
        except (ClusterError, EtcdError, ValueError) as e:
            log.error("cluster: the fleet's certificate is unusable: %s", e)
            return False
        if got is None:
            return False
        version, pt = got
        if version <= self.cert_version:
            return False
        installed = await asyncio.to_thread(self._install_cert, pt)
        self.cert_version = version
        await self._note("data/cert", version)
        metrics.CLUSTER_CERT_VERSION.set(version)
        if installed:
            log.info("cluster: installed the fleet's certificate (version %d)", version)
            if reload and self.reload is not None:
                await self.reload()
            if self.acme_wakeup is not None:
                self.acme_wakeup.set()
        return installed

    def _install_cert(self, payload: bytes) -> bool:
        """Blocking: verify the shared certificate and store it sealed locally if new."""
        try:
            doc = json.loads(payload)
            chain = doc["chain_pem"].encode()
            key = serialization.load_der_private_key(base64.b64decode(doc["key"]), None)
            names = tuple(str(n) for n in doc["names"])
            directory, account = str(doc["directory"]), str(doc["account_uri"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise EnvelopeError(f"certificate payload malformed: {type(e).__name__}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnvelopeError("certificate payload: not an EC key")
        try:
            verify_issued(chain, key, tuple(self.cfg.acme.names), dt.datetime.now(dt.UTC))
        except IssuedCertError as e:
            log.warning("cluster: the fleet's certificate is not usable here: %s", e)
            return False
        store = AcmeStore(self.cfg.state_dir, self.runtime.sealer)
        try:
            current = store.load_cert()
        except (OSError, ValueError):
            current = None
        if current is not None and spki_sha256(current.key.public_key()) == spki_sha256(
            key.public_key()
        ):
            return False
        store.save_cert(chain, key, directory, names, account)
        return True

    def _cert_payload(self) -> bytes | None:
        stored = AcmeStore(self.cfg.state_dir, self.runtime.sealer).load_cert()
        if stored is None:
            return None
        der = stored.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        account = AcmeStore(self.cfg.state_dir, self.runtime.sealer).account_uri(stored.directory)
        return json.dumps(
            {
                "chain_pem": stored.chain_pem.decode(),
                "key": base64.b64encode(der).decode(),
                "names": list(stored.names),
                "directory": stored.directory,
                "account_uri": account or "",
            }
        ).encode()

    def _account_payload(self) -> bytes | None:
        store = AcmeStore(self.cfg.state_dir, self.runtime.sealer)
        for url in self.cfg.acme.directory_urls:
            got = store.export_account(url)
            if got is not None:
                der = got[0].private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                return json.dumps(
                    {"directory": url, "uri": got[1], "key": base64.b64encode(der).decode()}
                ).encode()
        return None

    def _install_account(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            key = serialization.load_der_private_key(base64.b64decode(doc["key"]), None)
            directory, uri = str(doc["directory"]), str(doc["uri"])
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise EnvelopeError(f"account payload malformed: {type(e).__name__}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnvelopeError("account payload: not an EC key")
        store = AcmeStore(self.cfg.state_dir, self.runtime.sealer)
        have = store.export_account(directory)
        if have is not None and have[1] == uri:
            return
        store.install_account(directory, key, uri)

    # -- the renew lock (called by the ACME loop) -----------------------------------------

    async def before_order(self) -> bool:
        """True when this replica holds the renew lock and should order now."""
        if not self.has_key:
            log.warning("cluster: no cluster key: not ordering")
            return False
        if await self.sync_cert():
            return False  # someone renewed already
        lock = self.k("lock", "renew")
        got = await self.client.txn(
            [Compare(lock, "CREATE", 0)],
            [Put(lock, self.me.encode(), self.lease)],
            [Range(lock)],
        )
        if not got.succeeded:
            holder = got.ranges[0][0] if got.ranges and got.ranges[0] else None
            self.renewer = holder.value.decode(errors="replace")[:64] if holder else None
            log.info("cluster: renewal in progress on %s", self.renewer)
            return False
        self._lock_rev = got.revision
        self.renewer = self.me
        metrics.CLUSTER_RENEWER.set(1)
        try:
            acct = await self.read("acme-account")
        except (ClusterError, ValueError) as e:
            log.error("cluster: shared ACME account unusable: %s", e)
            await self.release()
            return False
        if acct is not None:
            await asyncio.to_thread(self._install_account, acct[1])
        log.info("cluster: this member renews (lock revision %d)", self._lock_rev)
        return True

    def _fence(self) -> list[Compare]:
        lock = self.k("lock", "renew")
        return [Compare(lock, "LEASE", self.lease), Compare(lock, "MOD", self._lock_rev)]

    async def after_order(self) -> bool:
        """Publish the certificate just obtained, only while still holding the lock."""
        payload = await asyncio.to_thread(self._cert_payload)
        if payload is None:
            return False
        ops: list[Put | Delete | Range] = []
        current = await self.read("cert")
        version = max(self.cert_version, current[0] if current else 0) + 1
        ops.append(Put(self.k("data/cert"), self._seal("data/cert", version, payload)))
        if await self.client.get(self.k("data/acme-account")) is None:
            account = await asyncio.to_thread(self._account_payload)
            if account is not None:
                ops.append(
                    Put(self.k("data/acme-account"), self._seal("data/acme-account", 1, account))
                )
        got = await self.client.txn(self._fence(), ops)
        if not got.succeeded:
            log.error("cluster: lost the renew lock (lease expired?): certificate not published")
            return False
        self.cert_version = version
        await self._note("data/cert", version)
        metrics.CLUSTER_CERT_VERSION.set(version)
        log.info("cluster: published the fleet's certificate (version %d)", version)
        return True

    async def release(self) -> None:
        try:
            await self.client.txn(self._fence(), [Delete(self.k("lock", "renew"))])
        except EtcdError as e:
            log.warning("cluster: could not release the renew lock (expires with the lease): %s", e)
        self.renewer = None
        metrics.CLUSTER_RENEWER.set(0)

    # -- receipts -------------------------------------------------------------------------

    async def put_receipt(self, rid: str, blob: bytes) -> None:
        """Store a receipt sealed, bound to a lease that outlives the receipts TTL."""
        if not self.has_key:
            return
        lease, until = self._receipt_lease
        now = time.monotonic()
        if not lease or now > until:
            ttl = int(self.cfg.receipts.ttl + _RECEIPT_BUCKET)
            lease = await self.client.grant(ttl)
            self._receipt_lease = (lease, now + _RECEIPT_BUCKET)
        name = f"receipts/{rid}"
        await self.client.put(self.k(name), self._seal(name, 1, blob), lease=lease)

    async def get_receipt(self, rid: str) -> bytes | None:
        name = f"receipts/{rid}"
        kv = await self.client.get(self.k(name))
        if kv is None:
            return None
        opened = self._open(name, kv.value)
        return bytes(opened.plaintext)

    # -- background -----------------------------------------------------------------------

    async def _watch(self) -> None:
        async for ev in self.client.watch(self.prefix, prefix=True):
            key = ev.kv.key[len(self.prefix) :]
            if key.startswith(b"receipts/"):
                continue
            if key == b"lock/renew":
                self.renewer = ev.kv.value.decode(errors="replace")[:64] or None
                if ev.kind == "DELETE":
                    self.renewer = None
            self._poke.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.c.resync_interval)
            self._poke.clear()
            await self.tick()

    async def tick(self) -> None:
        """One pass: the key, admissions and rotation, the certificate."""
        async with self._tick_lock:
            try:
                await self._load_key()
                await self._admit()
                await self.sync_cert()
                await self.sync_signer()
                lock = await self.client.get(self.k("lock", "renew"))
                self.renewer = lock.value.decode(errors="replace")[:64] if lock else None
            except (ClusterError, EtcdError, ValueError) as e:
                log.warning("cluster: %s", e)

    def status(self) -> dict[str, Any]:
        """For the admin ``/cluster`` body and ``teeproxy cluster status``."""
        return {
            "cluster": self.name,
            "member_id": self.me,
            "measurement_id": "0x" + self._my_mid.hex(),
            "key_epoch": self.epoch,
            "has_key": self.has_key,
            "renewer": self.renewer,
            "certificate_version": self.cert_version,
            "rotations": self.rotations,
            "etcd_endpoint": self.client.current_endpoint,
            "members": self.members,
            "refused": dict(self.refused),
            "receipt_signer": self._signer_status(),
        }

    def _signer_status(self) -> dict[str, Any]:
        if not self.shared_signer:
            address = self.runtime.signing_address
            return {"mode": "per-replica" if address else "off", "address": address or None}
        s = self.signer
        return {
            "mode": "shared",
            "address": s.address_hex if s else None,
            "version": s.version if s else 0,
            "epoch": s.epoch if s else 0,
            "created_at": s.created_at if s else 0,
            "previous": (s.previous_hex or None) if s else None,
        }


def _bad(message: str) -> Verdict:
    return Verdict(failures=(Failure(Reason.EVIDENCE_MALFORMED, message),))
