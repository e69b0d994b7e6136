"""The per-locality aggregates (sync_server/store/aggregates.py) against the rows they
count, on a real PostgreSQL: after a seeded caseload is projected by two projectors side
by side, after edits, a move and erasures, every locality, county and national summary
read from the aggregates equals the one counted from the rows, and a recount finds
nothing to correct."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from conflict import validate
from sync_server.projection.projector import Projector
from sync_server.projection.readmodel import Scope, reading, summary, summary_from_rows
from sync_server.store import aggregates
from sync_server.store.contract import HouseholdRecord
from sync_server.store.database import alembic_config
from sync_server.store.tables import proj_households, proj_services
from sync_server.sync.apply import stored
from vatra_devtools.seed import generate

pytestmark = pytest.mark.functional

TODAY = date(2026, 5, 1)


async def summaries_agree(engine) -> int:
    """Compare every area's summary both ways (a national scope, and each county's own
    scope for its county); how many areas were compared."""
    async with engine.connect() as conn:
        places = (await conn.execute(sa.select(proj_households.c.county,
                                               proj_households.c.locality).distinct())).all()
    areas = [("national", None, Scope("national"))]
    areas += [("county", c, scope) for c in {c for c, _ in places}
              for scope in (Scope("national"), Scope("county", county=c))]
    areas += [("locality", loc, Scope("locality", localities=(loc,))) for _, loc in places]
    for level, code, scope in areas:
        async with reading(engine, scope) as conn:
            kept = await summary(conn, scope, level, code)
            counted = await summary_from_rows(conn, scope, level, code)
        assert kept == counted, (level, code)
    return len(areas)


async def recount(engine) -> int:
    async with engine.begin() as conn:
        return await aggregates.recount(conn)


async def test_the_aggregates_follow_the_rows_through_edits_moves_and_erasures(store, engine) -> None:
    homes = list(generate(120, seed=7, today=TODAY, counties=("CJ", "BC")))
    for h in homes:
        await store.create_household(HouseholdRecord(h.household_id, str(h.locality), str(h.county)),
                                     stored(h.doc.get_changes([])))
    # Two projectors side by side, in small batches: they update the same localities' rows.
    first, second = Projector(engine, store, batch=7), Projector(engine, store, batch=5)
    assert sum(await asyncio.gather(first.drain_all(), second.drain_all())) == len(homes)
    assert await summaries_agree(engine) > 10
    assert await recount(engine) == 0
    async with reading(engine, Scope("national")) as conn:
        before = await summary(conn, Scope("national"), "national", None)
    assert before["households"] == len(homes) and before["overdue_services"] > 0

    # Services delivered and planned, a re-assessment that clears answers, in 30 households.
    for h in homes[:30]:
        heads = h.doc.get_heads()
        for sid, service in list(h.to_dict()["service_plan"].items())[:2]:
            if service["status"] in ("planned", "in_progress"):
                h.set_service_status(sid, "delivered", at="2026-05-02T09:00:00Z")
        members = list(h.to_dict()["members"])
        if members:
            h.plan_service("information", members[0], "child_no_family_doctor", "2026-04-15")
            aid = h.start_assessment(at="2026-05-02T10:00:00Z")
            h.record_answers(aid, members[0], {"family_doctor_registered": True})
            h.complete_assessment(aid, at="2026-05-02T11:00:00Z")
        assert validate(h.doc) == []
        await store.append_changes(h.household_id, stored(h.doc.get_changes(heads)))
    # One household moves to another county's locality; two are erased.
    moved = homes[40]
    target = next(h for h in homes if h.county != moved.county)
    heads = moved.doc.get_heads()
    moved.set_notes("moved")  # the store's registry row says where: the projection reads it
    await store.move_household(HouseholdRecord(moved.household_id, str(target.locality),
                                               str(target.county)),
                               stored(moved.doc.get_changes(heads)))
    for h in homes[50:52]:
        await store.erase_household(h.household_id)
    await asyncio.gather(first.drain_all(), second.drain_all())

    assert await summaries_agree(engine) > 10
    assert await recount(engine) == 0
    async with reading(engine, Scope("national")) as conn:
        after = await summary(conn, Scope("national"), "national", None)
    assert after["households"] == len(homes) - 2
    assert after != before


async def test_a_recount_repairs_rows_written_behind_the_projector(store, engine) -> None:
    """``vatra projections rebuild`` ends with a recount: rows deleted or added by hand (a
    restore of one table, a manual fix) leave the aggregates wrong until then."""
    homes = list(generate(20, seed=8, today=TODAY, counties=("CJ",)))
    for h in homes:
        await store.create_household(HouseholdRecord(h.household_id, str(h.locality), str(h.county)),
                                     stored(h.doc.get_changes([])))
    await Projector(engine, store).drain_all()
    async with engine.begin() as conn:
        await conn.execute(sa.delete(proj_services))
    with pytest.raises(AssertionError):
        await summaries_agree(engine)
    assert await recount(engine) > 0
    assert await summaries_agree(engine) > 1
    assert await recount(engine) == 0


async def test_the_migration_fills_the_aggregates_from_the_rows_already_projected(store, engine) -> None:
    """A database upgraded to migration 0015 already had its households projected: the
    migration counts them, with the same definitions as the projector."""
    homes = list(generate(40, seed=9, today=TODAY, counties=("CJ", "BC")))
    for h in homes:
        await store.create_household(HouseholdRecord(h.household_id, str(h.locality), str(h.county)),
                                     stored(h.doc.get_changes([])))
    await Projector(engine, store).drain_all()

    def downgrade_and_upgrade(connection: sa.Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0014")
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(downgrade_and_upgrade)
    assert await summaries_agree(engine) > 3
    assert await recount(engine) == 0


def plan(h, start: int, n: int) -> None:
    member = next(iter(h.to_dict()["members"]))
    for i in range(start, start + n):
        h.plan_service("information", member, "child_no_family_doctor",
                       date(2000, 1, 1) + timedelta(days=i))


async def test_many_deadline_days_are_projected_and_erased(store, engine) -> None:
    """A review found that the aggregates were written in one statement: a household whose
    open services fell on more than ~4,000 distinct deadline days (two aggregate rows
    each: its locality's and its county's, four parameters a row) passed PostgreSQL's
    32,767 parameters, so it was never projected; one projected in smaller steps could
    never be erased (the erasure's statement failed and rolled back). Reproduced with
    4,200 days projected at once, then erased."""
    one = next(generate(1, seed=3, today=TODAY, counties=("CJ",)))
    plan(one, 0, 4200)
    await store.create_household(HouseholdRecord(one.household_id, str(one.locality),
                                                 str(one.county)), stored(one.doc.get_changes([])))
    assert await Projector(engine, store).project([one.household_id])
    assert await summaries_agree(engine) > 2
    await store.erase_household(one.household_id)
    async with engine.connect() as conn:
        left = (await conn.execute(sa.select(sa.func.count()).select_from(
            aggregates.AGGREGATES[2]))).scalar_one()
    assert left == 0 and await recount(engine) == 0
