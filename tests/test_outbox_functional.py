"""The projection outbox is written with the changes, coalesces per household, and loses
nothing logged while a projection runs (real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from test_storage_contract import HID, edits

from conflict.ids import new_household_id
from sync_server.projection.projector import Projector
from sync_server.store.contract import HouseholdRecord
from sync_server.store.tables import household_keys, proj_households

pytestmark = pytest.mark.functional


async def test_logged_changes_queue_their_household_once(store) -> None:
    assert await store.outbox_pending() == []
    doc, first = edits(3)
    created = await store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    [entry] = await store.outbox_pending()
    assert (entry.household_id, entry.last_seq) == (HID, created.last_seq)

    doc, more = edits(2, doc)
    appended = await store.append_changes(HID, more)
    [again] = await store.outbox_pending()  # still one row: bursts coalesce
    assert again.last_seq == appended.last_seq > created.last_seq
    assert again.enqueued_at == entry.enqueued_at  # lag counts from the oldest change

    resent = await store.append_changes(HID, more)  # nothing new logged: nothing queued
    assert resent.inserted == 0
    assert (await store.outbox_pending())[0].last_seq == appended.last_seq


async def test_a_row_written_during_a_projection_stays_for_the_next_pass(store, engine) -> None:
    """The projector removes an outbox row only if no batch wrote it since the projector
    read it. Here a batch is logged while the projector waits (for the data key row, held
    by this test): the row stays, and the next pass projects the household again."""
    doc, first = edits(2)
    await store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    projector = Projector(engine, store)
    async with engine.connect() as hold, hold.begin():
        await hold.execute(sa.select(household_keys.c.household_id)
                           .where(household_keys.c.household_id == HID).with_for_update())
        first_pass = asyncio.create_task(projector.project([HID]))
        while not await _waiting_for_a_lock(engine):  # noqa: ASYNC110 (the state is in the database)
            await asyncio.sleep(0.01)
        _, later = edits(1, doc)
        appended = await store.append_changes(HID, later)  # logged while "projecting"
    [done] = await first_pass
    assert done.lag_seconds is not None
    [entry] = await store.outbox_pending()  # still queued: its row changed meanwhile
    assert entry.last_seq == appended.last_seq
    [again] = await projector.project([HID])
    assert await store.outbox_pending() == []
    async with engine.connect() as conn:
        seq = (await conn.execute(sa.select(proj_households.c.projected_seq))).scalar_one()
    assert seq == appended.last_seq and again.household_id == HID


async def _waiters(engine) -> int:
    """How many lock requests wait in the database."""
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted"))).scalar_one()


async def _waiting_for_a_lock(engine) -> bool:
    return await _waiters(engine) > 0


async def test_erasing_a_household_removes_its_outbox_row(store) -> None:
    _, first = edits(1)
    await store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    result = await store.erase_household(HID)
    assert result.deleted.get("projection_outbox") == 1
    assert await store.outbox_pending() == []


async def _ids(engine, n: int) -> list[str]:
    """``n`` new household ids, in the database's order (``ORDER BY``, its collation)."""
    async with engine.connect() as conn:
        return list((await conn.execute(
            sa.text("SELECT h FROM unnest(CAST(:ids AS text[])) AS h ORDER BY h"),
            {"ids": [new_household_id() for _ in range(n)]})).scalars())


async def _done_or_waiting(engine, task: asyncio.Task, waiters: int) -> bool:
    """Wait until ``task`` ends (True) or ``waiters`` transactions wait for a lock (False)."""
    while not task.done():
        if await _waiters(engine) >= waiters:
            await asyncio.sleep(0.2)  # a waiter may be about to be granted: look again
            if not task.done() and await _waiters(engine) >= waiters:
                return False
        await asyncio.sleep(0.01)
    return True


async def _hold_outbox_row(conn, household_id: str) -> None:
    await conn.execute(sa.text("SELECT 1 FROM projection_outbox WHERE household_id = :h "
                               "FOR UPDATE"), {"h": household_id})


async def test_a_projector_pass_waiting_for_one_outbox_row_holds_no_other(store, engine) -> None:
    """Issue 13, fault 4: under normal load, PostgreSQL reported ``deadlock detected``
    between the group commit's upsert of ``projection_outbox`` and the projector's
    DELETE/UPDATE of the same rows, in 3 of about 10 runs; when the group commit was the
    victim, every batch in it was refused with ``storage-failure``. The two locked the
    rows of several households in different orders.

    Reproduced without a race: the test holds the first household's outbox row, and a
    projector pass for all of them starts and waits. Before the fix it had already locked
    (deleted) the rows it met before that one in the table, so a sync batch for one of
    those households then waited for the projector: a cycle as soon as that batch also
    holds a row the projector needs. Now the projector locks the rows in household order
    first, holds none while it waits for the first, and the batch lands."""
    ids = await _ids(engine, 6)
    for hid in reversed(ids):  # the table's physical order is the reverse of the ids'
        await store.create_household(HouseholdRecord(hid, "54975", "CJ"), edits(1)[1])
    projector = Projector(engine, store)
    async with engine.connect() as hold, hold.begin():
        await _hold_outbox_row(hold, ids[0])
        projecting = asyncio.create_task(projector.project(list(reversed(ids))))
        assert not await _done_or_waiting(engine, projecting, 1)
        appending = asyncio.create_task(store.append_changes(ids[-1], edits(1)[1]))
        assert await _done_or_waiting(engine, appending, 2), \
            "the batch waits for a row the projector locked while it waits itself"
        appended = await appending
    done = await projecting
    assert {p.household_id for p in done} == set(ids)
    [left] = await store.outbox_pending()  # the batch's row stays for the next pass
    assert (left.household_id, left.last_seq) == (ids[-1], appended.last_seq)


async def test_a_group_commit_waiting_for_one_outbox_row_holds_no_other(store, engine) -> None:
    """Issue 13, fault 4, the group commit's side (see the test above): the test holds the
    first household's outbox row while one group commit carries batches for all of them.
    Before the fix the commit's upsert had already locked the rows it wrote before that
    one (in its aggregate's order), so a projector pass for one of those households
    waited for the commit. Now the commit writes the rows in household order, holds none
    while it waits for the first, and the projector's pass ends."""
    from sync_server.store.group_commit import insert_changes

    ids = await _ids(engine, 6)
    for hid in ids:
        await store.create_household(HouseholdRecord(hid, "54975", "CJ"), edits(1)[1])
    projector = Projector(engine, store)
    await projector.drain_all()

    async def commit() -> None:
        async with engine.begin() as conn:
            keys, _ = await store.data_keys_in(conn, ids)
            await insert_changes(conn, [(h, edits(1)[1], None) for h in reversed(ids)],
                                 keys, store.audit)

    for hid in ids:  # rows for the projector to settle
        await store.append_changes(hid, edits(1)[1])
    async with engine.connect() as hold, hold.begin():
        await _hold_outbox_row(hold, ids[0])
        committing = asyncio.create_task(commit())
        assert not await _done_or_waiting(engine, committing, 1)
        projecting = asyncio.create_task(projector.project(ids[1:]))
        assert await _done_or_waiting(engine, projecting, 2), \
            "the projector waits for a row the commit locked while it waits itself"
        await projecting
    await committing
    assert {e.household_id for e in await store.outbox_pending()} == set(ids)


async def test_a_projector_pass_locks_households_in_the_group_commits_order(store, engine
                                                                           ) -> None:
    """Issue 14: with three instances under load, PostgreSQL reported ``deadlock
    detected`` between a group commit and the projector (18 live edits refused with
    ``storage-failure`` in 30 s of `loadtests`). The group commit locks the registry
    rows of the households it writes FOR UPDATE, in household order; the projector's
    rows reference the same registry rows, and the foreign key check locked them (FOR KEY
    SHARE) in the order the projector wrote them, which was the outbox's.

    Reproduced without a race: the test holds the first household's registry row FOR
    UPDATE, as a group commit that locked it and goes on to the next one does, and a
    projector pass for both, last one first, starts and waits. Before the fix it already
    held the second household's row, so that commit's next lock (tried here with NOWAIT)
    could not be had: a cycle. Now the projector locks the rows in household order and
    holds none while it waits for the first."""
    first, second = await _ids(engine, 2)
    for hid in (second, first):
        await store.create_household(HouseholdRecord(hid, "54975", "CJ"), edits(1)[1])
    projector = Projector(engine, store)
    async with engine.connect() as hold, hold.begin():
        await hold.execute(sa.text("SELECT 1 FROM households WHERE id = :h FOR UPDATE"),
                           {"h": first})
        projecting = asyncio.create_task(projector.project([second, first]))
        assert not await _done_or_waiting(engine, projecting, 1)
        async with engine.connect() as commit, commit.begin():
            await commit.execute(sa.text("SET LOCAL lock_timeout = '1s'"))
            await commit.execute(sa.text(  # the group commit's next lock
                "SELECT 1 FROM households WHERE id = :h FOR UPDATE NOWAIT"), {"h": second})
    done = await projecting
    assert {p.household_id for p in done} == {first, second}
