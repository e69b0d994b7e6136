"""The projection outbox is written with the changes, coalesces per household, and loses
nothing logged while a projection runs (real PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from test_storage_contract import HID, edits

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


async def _waiting_for_a_lock(engine) -> bool:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted"))).scalar_one() > 0


async def test_erasing_a_household_removes_its_outbox_row(store) -> None:
    _, first = edits(1)
    await store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    result = await store.erase_household(HID)
    assert result.deleted.get("projection_outbox") == 1
    assert await store.outbox_pending() == []
