"""The group commit closing while appends are queued or in flight (a real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from conflict import Household
from sync_server.store.contract import HouseholdRecord, StoreClosed
from sync_server.store.postgres import PostgresStore
from sync_server.sync.apply import stored

pytestmark = pytest.mark.functional


async def test_closing_with_appends_queued_leaves_no_caller_waiting(engine, keyring) -> None:
    """Before: ``_GroupCommit.close()`` unpacked the queue's 4-tuples into 3 names and raised
    ``ValueError`` whenever appends were queued, and when it cancelled the commit loop
    mid-commit that group's callers waited forever. Reproduced by closing the store while
    twelve households' appends were queued. Now the commit in flight and the queued
    appends are committed, every caller gets its result, and a later append is refused
    with ``StoreClosed`` (storage-failure: retry later)."""
    store = PostgresStore(engine, keyring)
    households = []
    for i in range(12):
        h = Household.create(locality="54975", county="CJ", address=f"Str. {i}",
                             created_by="ana")
        await store.create_household(HouseholdRecord(h.household_id, "54975", "CJ"),
                                     stored(h.doc.get_changes([])))
        households.append(h)
    pending = []
    for h in households:
        before = h.doc.get_heads()
        h.set_address("Str. Noua")
        pending.append(asyncio.create_task(
            store.append_changes(h.household_id, stored(h.doc.get_changes(before)))))
    await asyncio.sleep(0)  # every append is queued, the first commit under way
    await asyncio.wait_for(store.close(), timeout=30)
    results = await asyncio.wait_for(asyncio.gather(*pending), timeout=30)
    assert [r.inserted for r in results] == [1] * 12
    h = households[0]
    before = h.doc.get_heads()
    h.set_address("Str. Ultima")
    with pytest.raises(StoreClosed):
        await store.append_changes(h.household_id, stored(h.doc.get_changes(before)))
