"""proxy.dataplane.receipts: receipt ids are unguessable and URL-safe."""

from __future__ import annotations

from proxy.dataplane.receipts import new_receipt_id


def test_receipt_ids_are_unguessable_and_url_safe() -> None:
    ids = {new_receipt_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)
