"""The projection outbox is written with the changes, coalesces per household, and loses
nothing logged while a projection runs (real PostgreSQL)."""

from __future__ import annotations

import pytest
from test_storage_contract import HID, edits

from sync_server.storage import HouseholdRecord

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


async def test_done_removes_the_row_only_if_nothing_came_since(store) -> None:
    doc, first = edits(2)
    created = await store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    _, later = edits(1, doc)
    appended = await store.append_changes(HID, later)  # logged while "projecting" created
    assert await store.outbox_done(HID, created.last_seq) is False
    assert [e.last_seq for e in await store.outbox_pending()] == [appended.last_seq]
    assert await store.outbox_done(HID, appended.last_seq) is True
    assert await store.outbox_pending() == []


async def test_erasing_a_household_removes_its_outbox_row(store) -> None:
    _, first = edits(1)
    await store.create_household(HouseholdRecord(HID, "54975", "CJ"), first)
    result = await store.erase_household(HID)
    assert result.deleted.get("projection_outbox") == 1
    assert await store.outbox_pending() == []
