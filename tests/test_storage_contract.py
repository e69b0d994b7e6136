"""The storage contract, run against every HouseholdStore implementation (today: PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from automerge.core import ROOT, Document, ScalarType
from sqlalchemy.exc import DBAPIError

from conflict import new_household_id
from sync_server.store.contract import HouseholdRecord, HouseholdStore, StoredChange

HID = "2fiH6LVoDnXEUsYNHowu3UTBwJqk"
_values = itertools.count(1)


@pytest.fixture(params=["postgres"])
def contract_store(request: pytest.FixtureRequest, store) -> HouseholdStore:
    # One entry per implementation; each param returns its store.
    return {"postgres": store}[request.param]


def edits(n: int, doc: Document | None = None) -> tuple[Document, list[StoredChange]]:
    doc = doc or Document()
    before = doc.get_heads()
    for _ in range(n):
        with doc.transaction() as tx:
            tx.put(ROOT, "counter", ScalarType.Int, next(_values))  # never the same value twice
    return doc, [StoredChange(c.hash, tuple(c.deps), c.actor_id, c.bytes)
                 for c in doc.get_changes(before)]


async def test_unknown_household_is_none(contract_store: HouseholdStore) -> None:
    assert await contract_store.household(HID) is None
    assert await contract_store.load(HID) is None


async def test_create_then_load_returns_the_same_document(contract_store: HouseholdStore) -> None:
    doc, first = edits(3)
    result = await contract_store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    assert result.inserted == 3 and result.last_seq > 0
    rec = await contract_store.household(HID)
    assert (rec.locality, rec.county) == ("54975", "CJ")
    loaded = await contract_store.load(HID)
    assert Document.load(loaded.document_bytes()).get_heads() == doc.get_heads()


async def test_resending_changes_is_a_no_op(contract_store: HouseholdStore) -> None:
    doc, first = edits(2)
    await contract_store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    again = await contract_store.append_changes(HID, first)
    assert (again.inserted, again.inserted_bytes, again.last_seq) == (0, 0, 0)
    assert await contract_store.change_count(HID) == 2
    _, more = edits(1, doc)
    mixed = await contract_store.append_changes(HID, first + more)
    assert mixed.inserted == 1
    assert await contract_store.change_count(HID) == 3


async def test_load_is_snapshot_plus_later_changes(contract_store: HouseholdStore) -> None:
    doc, first = edits(5)
    created = await contract_store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    snapshot_heads = doc.get_heads()
    await contract_store.save_snapshot(HID, doc.save(), snapshot_heads, created.last_seq)
    doc, later = edits(2, doc)
    await contract_store.append_changes(HID, later)
    loaded = await contract_store.load(HID)
    assert len(loaded.later_changes) == 2
    assert loaded.snapshot_heads == tuple(snapshot_heads)
    assert Document.load(loaded.document_bytes()).get_heads() == doc.get_heads()


async def test_a_snapshot_never_moves_backwards(contract_store: HouseholdStore) -> None:
    doc, first = edits(4)
    created = await contract_store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    await contract_store.save_snapshot(HID, doc.save(), doc.get_heads(), created.last_seq)
    await contract_store.save_snapshot(HID, b"stale", [], created.last_seq - 1)
    loaded = await contract_store.load(HID)
    assert loaded.snapshot == doc.save()


async def test_the_change_log_refuses_rewrites(contract_store: HouseholdStore, engine) -> None:
    _, first = edits(1)
    await contract_store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM changes")
    assert await contract_store.change_count(HID) == 1


async def test_concurrent_appends_of_many_households_all_land(contract_store: HouseholdStore) -> None:
    """Appends that arrive together may share a commit (PostgresStore groups them);
    each caller still gets exactly its own household's result."""
    ids = [new_household_id() for _ in range(12)]
    docs = {}
    for hid in ids:
        doc, first = edits(1)
        docs[hid] = doc
        await contract_store.create_household(HouseholdRecord(hid, "54975", "CJ"), first)
    batches = {hid: edits(3, docs[hid])[1] for hid in ids}
    results = await asyncio.gather(*(contract_store.append_changes(hid, batches[hid])
                                     for hid in ids))
    for hid, result in zip(ids, results, strict=True):
        assert result.inserted == 3
        assert result.inserted_bytes == sum(len(c.body) for c in batches[hid])
        assert await contract_store.change_count(hid) == 4
        loaded = await contract_store.load(hid)
        assert Document.load(loaded.document_bytes()).get_heads() == docs[hid].get_heads()
    if hasattr(contract_store, "_group"):
        assert contract_store._group.commits < len(ids)  # they really shared commits
