"""The projector fills the ``proj`` tables from the change log: after a sync, after a
burst, after an erasure; a rebuild gives the same rows; the operator's commands (real
server, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest
import sqlalchemy as sa
from _scenes import active_household
from conftest import TEST_MASTER_KEY

from client_sdk import SyncClient
from conflict import Household
from sync_server.app import ENGINE, PROJECTOR, STORE
from sync_server.projection.projector import projection_status
from sync_server.store import aggregates
from sync_server.store.contract import HouseholdRecord
from sync_server.store.tables import PROJ_TABLES as TABLES
from sync_server.sync.apply import stored

pytestmark = pytest.mark.functional


async def rows_of(engine, household_id: str | None = None) -> dict[str, list[dict]]:
    """Every projection row (of one household), without the projection's own timestamp."""
    out = {}
    async with engine.connect() as conn:
        for table in TABLES:
            q = sa.select(table).order_by(*table.primary_key.columns)
            if household_id is not None:
                q = q.where(table.c.household_id == household_id)
            out[table.name] = [{k: v for k, v in r.items() if k != "projected_at"}
                               for r in (await conn.execute(q)).mappings()]
    return out


async def test_a_synced_household_is_projected(server, provision) -> None:
    hid, pid, [ana] = await active_household(server, provision)
    with ana.edit(hid) as e:
        aid = e.start_assessment(at="2026-03-01T10:00:00Z")
        e.record_answers(aid, pid, {"family_doctor_registered": False,
                                    "vaccination_status": "complete"})
        e.complete_assessment(aid, at="2026-03-01T11:00:00Z")
        sid = e.plan_service("information", pid, "child_no_family_doctor", "2026-03-20")
    await SyncClient(ana, server.url).sync()
    projector = server.app[PROJECTOR]
    await projector.drain_all()

    rows = await rows_of(server.app[ENGINE], hid)
    [h] = rows["households"]
    assert (h["locality"], h["county"], h["status"]) == ("54975", "CJ", "active")
    assert (h["members_present"], h["members_total"], h["services_open"]) == (1, 1, 1)
    assert h["vulnerabilities"] == 1 and h["last_assessment_id"] == aid
    assert h["created_by"] == "ana" and h["updated_by"] == "ana"
    assert h["search"] == "str. lunga 3 ana pop"
    [v] = rows["vulnerabilities"]
    assert (v["vulnerability"], v["person_id"], v["population"]) == \
        ("child_no_family_doctor", pid, "child")
    [a] = rows["answers"]
    assert a["answers"] == {"family_doctor_registered": False, "vaccination_status": "complete"}
    assert a["age_at_assessment"] == 10
    [s] = rows["services"]
    assert (s["service_id"], s["status"], str(s["deadline"])) == (sid, "planned", "2026-03-20")
    assert rows["activity"][0]["kind"] == "registered"
    status = await projection_status(server.app[ENGINE])
    assert status["pending"] == 0 and status["households_projected"] == 1


async def test_every_assessment_stays_in_the_projections(server, provision) -> None:
    """Issue 12, deliverable 4: a partial re-assessment updates only what it answered.
    ``proj.answers`` holds the answers that stand (the latest per indicator), the
    vulnerabilities follow them, and ``proj.assessments`` keeps every assessment as
    recorded, with the catalogue version it used, so the web tier can compare two."""
    hid, pid, [ana] = await active_household(server, provision)
    with ana.edit(hid) as e:
        first = e.start_assessment(at="2026-03-01T10:00:00Z")
        e.record_answers(first, pid, {"family_doctor_registered": False,
                                      "vaccination_status": "incomplete"})
        e.complete_assessment(first, at="2026-03-01T11:00:00Z")
        second = e.start_assessment(at="2026-06-01T10:00:00Z")
        e.record_answers(second, pid, {"vaccination_status": "complete"})
        e.complete_assessment(second, at="2026-06-01T10:30:00Z")
    await SyncClient(ana, server.url).sync()
    await server.app[PROJECTOR].drain_all()
    rows = await rows_of(server.app[ENGINE], hid)
    [a] = rows["answers"]
    assert a["answers"] == {"family_doctor_registered": False, "vaccination_status": "complete"}
    assert a["assessment_id"] == second
    assert [v["vulnerability"] for v in rows["vulnerabilities"]] == ["child_no_family_doctor"]
    history = {r["assessment_id"]: r for r in rows["assessments"]}
    assert set(history) == {first, second}
    assert history[first]["answers"] == {"family_doctor_registered": False,
                                         "vaccination_status": "incomplete"}
    assert history[second]["answers"] == {"vaccination_status": "complete"}
    assert {r["catalogue_version"] for r in history.values()} == {2}
    assert {r["by"] for r in history.values()} == {"ana"}


async def test_rebuild_gives_the_rows_the_incremental_projection_gave(server, provision) -> None:
    hid, _, [ana] = await active_household(server, provision)
    projector = server.app[PROJECTOR]
    await projector.drain_all()
    for i in range(3):  # several projections, each of a later state
        with ana.edit(hid) as e:
            e.set_notes(f"visit {i}")
            e.append_activity("visit", f"visit {i}")
        await SyncClient(ana, server.url).sync()
        await projector.drain_all()
    incremental = await rows_of(server.app[ENGINE])
    async with server.app[ENGINE].begin() as conn:
        for table in TABLES:
            await conn.execute(sa.delete(table))
    assert (await rows_of(server.app[ENGINE]))["households"] == []
    rebuilt = await projector.rebuild()
    assert [p.household_id for p in rebuilt] == [hid]
    assert await rows_of(server.app[ENGINE]) == incremental
    again = await projector.rebuild([hid])  # nothing changed: nothing written
    assert (again[0].upserted, again[0].deleted) == (0, 0)
    # The rows were deleted behind the projector's back, so its aggregates counted the
    # household twice; the recount a full `vatra projections rebuild` ends with says so.
    async with server.app[ENGINE].begin() as conn:
        assert await aggregates.recount(conn) > 0
    async with server.app[ENGINE].begin() as conn:
        assert await aggregates.recount(conn) == 0


async def test_erasing_a_household_removes_its_projection(server, provision) -> None:
    hid, _, _ = await active_household(server, provision)
    await server.app[PROJECTOR].drain_all()
    assert (await rows_of(server.app[ENGINE], hid))["persons"]
    result = await server.app[STORE].erase_household(hid)
    assert result.deleted["proj.households"] == 1 and result.deleted["proj.persons"] == 1
    assert all(rows == [] for rows in (await rows_of(server.app[ENGINE], hid)).values())
    assert await server.app[PROJECTOR].rebuild([hid]) != []  # an erased one stays empty
    assert all(rows == [] for rows in (await rows_of(server.app[ENGINE], hid)).values())


async def test_the_commands_project_report_and_rebuild(database_url, store) -> None:
    """`vatra status`, `vatra projector --once` and `vatra projections rebuild` on a
    database with queued households, as an operator runs them."""
    ids = []
    for i in range(3):
        h = Household.create(locality="54975", county="CJ", address=f"Str. Noua {i}",
                             author="ana")
        await store.create_household(HouseholdRecord(h.household_id, "54975", "CJ"),
                                     stored(h.doc.get_changes([])))
        ids.append(h.household_id)
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY}

    def vatra(*args: str, status: int = 0) -> str:
        done = subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == status, done.stderr
        return done.stdout + done.stderr

    before = json.loads(await asyncio.to_thread(vatra, "status", "--json"))
    assert (before["pending"], before["households_projected"]) == (3, 0)
    assert before["lag_seconds"] > 0
    assert "projected 3 household(s)" in await asyncio.to_thread(vatra, "projector", "--once")
    after = json.loads(await asyncio.to_thread(vatra, "status", "--json"))
    assert (after["pending"], after["households_projected"], after["lag_seconds"]) == (0, 3, 0)
    rebuilt = await asyncio.to_thread(vatra, "projections", "rebuild", "--household", ids[0])
    assert rebuilt.strip() == "rebuilt 1 household(s): 0 changed, 0 row(s) written, 0 deleted"
    everything = await asyncio.to_thread(vatra, "projections", "rebuild")
    assert everything.splitlines() == [
        "rebuilt 3 household(s): 0 changed, 0 row(s) written, 0 deleted",
        "recounted the per-locality aggregates: 0 row(s) corrected"]
    refused = await asyncio.to_thread(vatra, "projections", "rebuild", "--household", "nope",
                                      status=1)
    assert "no such household: nope" in refused


async def test_the_lag_gauges_are_served_for_metrics(server, provision) -> None:
    await active_household(server, provision)
    await server.app[PROJECTOR].drain_all()
    await server.app[PROJECTOR].refresh_gauges()
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    assert "vatra_projection_lag_seconds 0.0" in text
    assert "vatra_projection_pending_households 0.0" in text
    assert "vatra_projections_total" in text
