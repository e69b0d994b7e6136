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
                             author="ana")
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


async def _queued_appends(store: PostgresStore, n: int) -> list[asyncio.Task]:
    households = []
    for i in range(n):
        h = Household.create(locality="54975", county="CJ", address=f"Str. {i}",
                             author="ana")
        await store.create_household(HouseholdRecord(h.household_id, "54975", "CJ"),
                                     stored(h.doc.get_changes([])))
        households.append(h)
    pending = []
    for h in households:
        before = h.doc.get_heads()
        h.set_address("Str. Noua")
        pending.append(asyncio.create_task(
            store.append_changes(h.household_id, stored(h.doc.get_changes(before)))))
    await asyncio.sleep(0)  # every append is queued, the writer started
    return pending


async def test_a_writer_cancelled_mid_commit_fails_its_callers_instead_of_stranding_them(
        engine, keyring) -> None:
    """Before: when the writer task was cancelled while a group's transaction was under
    way (a loop shutting down), the group had already left the queue, so neither the
    writer nor ``close()`` resolved its callers' futures: each merge waiting on one hung
    with its household's lock held, and ``close()`` re-raised the writer's
    ``CancelledError``. Reproduced by cancelling the writer right after eight appends
    were taken into a commit. Now every caller gets either its result (the commit won
    the race) or ``StoreClosed`` (retry: a resend is idempotent), and ``close()`` returns."""
    store = PostgresStore(engine, keyring)
    pending = await _queued_appends(store, 8)
    for _ in range(100):  # until the writer has taken the group into its transaction
        if store._group._inflight:
            break
        await asyncio.sleep(0)
    writer = store._group._task
    assert store._group._inflight and writer is not None and not writer.done()
    writer.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True),
                                      timeout=30)
    assert all(isinstance(o, StoreClosed) or o.inserted == 1 for o in outcomes), outcomes
    assert any(isinstance(o, StoreClosed) for o in outcomes), "the cancel hit no commit"
    await asyncio.wait_for(store.close(), timeout=30)


async def test_a_failing_commit_listener_does_not_keep_callers_from_their_results(
        engine, keyring, caplog) -> None:
    """Before: the store called its ``on_commit`` listeners (the projector's wake-up)
    between a commit and its callers' results; a listener that raised made a committed
    creation report failure, and in the group commit it killed the writer and left every
    caller of that group waiting although its rows were stored. Reproduced with a
    listener that raises. Now the failure is logged and every caller gets its result."""
    store = PostgresStore(engine, keyring)

    def broken() -> None:
        raise RuntimeError("listener failed")

    store.on_commit(broken)
    pending = await _queued_appends(store, 4)
    results = await asyncio.wait_for(asyncio.gather(*pending), timeout=30)
    assert [r.inserted for r in results] == [1] * 4
    assert "on_commit listener failed" in caplog.text
    await store.close()


async def test_a_writer_cancelled_before_it_ran_fails_the_queued_callers(engine, keyring) -> None:
    """The same with the writer cancelled before its first step: the appends were still
    queued, and nothing would have resolved them before the next append. They get
    ``StoreClosed`` now."""
    store = PostgresStore(engine, keyring)
    pending = await _queued_appends(store, 4)
    writer = store._group._task
    assert writer is not None and not store._group._inflight
    writer.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True),
                                      timeout=30)
    assert all(isinstance(o, StoreClosed) for o in outcomes), outcomes
    await asyncio.wait_for(store.close(), timeout=30)
