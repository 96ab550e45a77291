"""The etcd client (certmgr.cluster.etcd) against a real three-member etcd cluster.

- get/put/prefix/delete round trips bytes that are not UTF-8;
- a lease-bound key disappears when the lease expires, and a transaction comparing that key's
  lease and mod_revision (the renew lock's fence) fails afterwards;
- a watch delivers every event in order and resumes on another member when its member stops;
- requests keep working with one member stopped; answers over the size cap are refused.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from certmgr.cluster.etcd import Compare, EtcdClient, Put, Range
from certmgr.errors import EtcdError
from tests.helpers.etcd import EtcdCluster

pytestmark = pytest.mark.slow


def _prefix() -> bytes:
    return b"/test-client/" + os.urandom(4).hex().encode() + b"/"


async def test_kv_round_trip_and_prefix(etcd_cluster: EtcdCluster) -> None:
    p = _prefix()
    c = EtcdClient(etcd_cluster.endpoints, timeout=2.0)
    try:
        await c.put(p + b"a", b"\xff\x00binary")
        await c.put(p + b"b", b"2")
        kv = await c.get(p + b"a")
        assert kv is not None and kv.value == b"\xff\x00binary" and kv.version == 1
        kvs, rev = await c.get_prefix(p)
        assert [k.key for k in kvs] == [p + b"a", p + b"b"] and rev >= kv.mod_revision
        await c.delete(p, prefix=True)
        assert await c.get(p + b"a") is None
    finally:
        await c.close()


async def test_lease_expiry_fences_a_transaction(etcd_cluster: EtcdCluster) -> None:
    p = _prefix()
    c = EtcdClient(etcd_cluster.endpoints, timeout=2.0)
    try:
        lease = await c.grant(1)
        lock = p + b"lock"
        got = await c.txn([Compare(lock, "CREATE", 0)], [Put(lock, b"me", lease)], [Range(lock)])
        assert got.succeeded
        kv = await c.get(lock)
        assert kv is not None and kv.lease == lease
        fence = [Compare(lock, "LEASE", lease), Compare(lock, "MOD", kv.mod_revision)]
        assert (await c.txn(fence, [Put(p + b"cert", b"v1")])).succeeded
        # The holder stops refreshing: etcd drops the key with the lease, the fence fails.
        await asyncio.sleep(3.0)
        assert await c.keepalive(lease) == 0
        assert await c.get(lock) is None
        assert not (await c.txn(fence, [Put(p + b"cert", b"v2")])).succeeded
        cert = await c.get(p + b"cert")
        assert cert is not None and cert.value == b"v1"
    finally:
        await c.close()


async def test_watch_survives_a_stopped_member(etcd_cluster: EtcdCluster) -> None:
    p = _prefix()
    writer = EtcdClient(etcd_cluster.endpoints, timeout=2.0)
    # The watcher starts on member 0, which is stopped mid-way.
    watcher = EtcdClient(etcd_cluster.endpoints, timeout=2.0)
    seen: list[bytes] = []
    done = asyncio.Event()

    async def watch() -> None:
        async for ev in watcher.watch(p, prefix=True, start_revision=1):
            seen.append(ev.kv.value)
            if len(seen) == 6:
                done.set()
                return

    task = asyncio.get_running_loop().create_task(watch())
    try:
        for i in range(3):
            await writer.put(p + b"k", str(i).encode())
        await asyncio.to_thread(etcd_cluster.stop_member, 0)
        for i in range(3, 6):
            await writer.put(p + b"k", str(i).encode())  # fails over to member 1 or 2
        async with asyncio.timeout(15):
            await done.wait()
        assert seen == [str(i).encode() for i in range(6)]
        assert writer.current_endpoint != etcd_cluster.endpoints[0]
    finally:
        task.cancel()
        await asyncio.to_thread(etcd_cluster.start_member, 0)
        await writer.close()
        await watcher.close()


async def test_answers_over_the_cap_are_refused(etcd_cluster: EtcdCluster) -> None:
    p = _prefix()
    big = EtcdClient(etcd_cluster.endpoints, timeout=2.0)
    small = EtcdClient(etcd_cluster.endpoints, timeout=2.0, max_response=1024)
    try:
        await big.put(p + b"big", b"x" * 4096)
        with pytest.raises(EtcdError, match="larger than 1024"):
            await small.get(p + b"big")
    finally:
        await big.close()
        await small.close()
