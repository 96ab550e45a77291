"""proxy.dataplane.receipt_store: the receipt store keeps entries for exactly the TTL
and stays bounded."""

from __future__ import annotations

from proxy.dataplane.receipt_store import ReceiptStore
from proxy.dataplane.receipts import new_receipt_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_store_keeps_entries_for_exactly_the_ttl() -> None:
    clock = Clock()
    store = ReceiptStore(ttl=10, max_entries=100, clock=clock)
    store.put("a", b"1")
    clock.now += 9.9
    assert store.get("a") == b"1"
    clock.now += 0.1
    assert store.get("a") is None


def test_store_evicts_expired_entries_on_insert_and_the_oldest_over_capacity() -> None:
    clock = Clock()
    store = ReceiptStore(ttl=10, max_entries=3, clock=clock)
    for i in range(3):
        store.put(str(i), b"x")
        clock.now += 1
    store.put("3", b"x")  # over capacity: "0" goes
    assert [store.get(str(i)) for i in range(4)] == [None, b"x", b"x", b"x"]
    clock.now += 100
    store.put("4", b"x")  # everything else expired and is dropped, not just hidden
    assert len(store) == 1


def test_store_re_put_moves_the_entry_to_the_back() -> None:
    clock = Clock()
    store = ReceiptStore(ttl=10, max_entries=2, clock=clock)
    store.put("a", b"pending")
    store.put("b", b"x")
    store.put("a", b"final")
    store.put("c", b"x")  # capacity: "b" is now the oldest
    assert store.get("a") == b"final"
    assert store.get("b") is None


def test_store_stays_bounded_under_churn() -> None:
    clock = Clock()
    store = ReceiptStore(ttl=5, max_entries=50, clock=clock)
    for i in range(10_000):
        store.put(new_receipt_id(), b"x")
        clock.now += 0.001 * (i % 7)
        assert len(store) <= 50
