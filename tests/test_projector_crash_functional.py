"""``vatra projector`` killed in the middle of a batch: after a restart the rows are exact
and nothing is projected twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from automerge.core import Document
from conftest import TEST_MASTER_KEY
from test_projection_property import expected_rows, keyed, last_seq_of
from test_projector_functional import rows_of

from conflict import Household
from sync_server.projection.projector import Projector
from sync_server.store.contract import HouseholdRecord, StoredChange
from sync_server.store.tables import proj_households as projected
from sync_server.store.tables import projection_outbox

pytestmark = pytest.mark.functional

#: Households queued after the projector's first batch: the killed one is among them.
SECOND_BATCH = 6
QUEUED_FROM = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def new_changes(doc: Document, since: list[bytes]) -> list[StoredChange]:
    return [StoredChange(c.hash, tuple(c.deps), c.actor_id, c.bytes)
            for c in doc.get_changes(since)]


def a_household(n: int) -> tuple[Household, str, str]:
    """An active household with a child not registered with a family doctor (one
    vulnerability), a service planned for it, and a visit. (household, child, assessment)"""
    h = Household.create(locality="54975", county="CJ", address=f"Str. Lunga {n}",
                         author="ana", at="2026-02-01T09:00:00Z")
    pid = h.add_member("Ana", f"Pop{n}", "2015-04-01", "F", "child")
    h.add_member("Ion", f"Pop{n}", "1984-07-12", "M", "head")
    h.set_status("active")
    aid = h.start_assessment(at="2026-03-01T10:00:00Z")
    h.record_answers(aid, pid, {"family_doctor_registered": False})
    h.complete_assessment(aid, at="2026-03-01T11:00:00Z")
    h.plan_service("information", pid, "child_no_family_doctor", "2026-03-20")
    h.append_activity("visit", f"first visit {n}", at="2026-03-01T11:30:00Z")
    return h, pid, aid


async def projector(database_url: str, data_dir: Path, *args: str, output: Any
                    ) -> asyncio.subprocess.Process:
    """``vatra projector`` in a child process, on the test's database, printing to
    ``output`` (a file, or ``PIPE``)."""
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY,
           "VATRA_DATA_DIR": str(data_dir)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sync_server.cli", "projector", *args, env=env,
        stdout=output, stderr=asyncio.subprocess.STDOUT)


async def blocked_by(engine, holder_pid: int, proc: asyncio.subprocess.Process, log: Path
                     ) -> tuple[int, str]:
    """The backend (pid, statement) waiting for a lock ``holder_pid`` holds, once one is."""
    for _ in range(1200):
        async with engine.connect() as conn:  # a transaction per look: pg_stat_activity
            row = (await conn.execute(sa.text(  # is read once per transaction
                "SELECT pid, query FROM pg_stat_activity"
                " WHERE :holder = ANY(pg_blocking_pids(pid))"), {"holder": holder_pid})).first()
        if row is not None:
            return row.pid, row.query
        if proc.returncode is not None:
            output = await asyncio.to_thread(log.read_text)
            pytest.fail(f"vatra projector exited ({proc.returncode}):\n{output}")
        await asyncio.sleep(0.05)
    pytest.fail("vatra projector never waited for the outbox row lock")


async def gone(engine, backend_pid: int) -> None:
    """Wait until a backend has ended (its client died: its transaction is rolled back)."""
    for _ in range(1200):
        async with engine.connect() as conn:
            if (await conn.execute(sa.text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"),
                                   {"pid": backend_pid})).first() is None:
                return
        await asyncio.sleep(0.05)
    pytest.fail(f"backend {backend_pid} of the killed projector is still there")


async def outbox(engine) -> dict[str, tuple[int, object]]:
    async with engine.connect() as conn:
        return {r.household_id: (r.last_seq, r.enqueued_at) for r in await conn.execute(
            sa.select(projection_outbox))}


async def exact(engine, store, household_id: str) -> dict[str, list[dict]]:
    """The rows a fresh projection of the stored household gives."""
    loaded = await store.load(household_id)
    doc = Household(Document.load(loaded.document_bytes()), household_id).to_dict()
    return await expected_rows(engine, household_id, doc, locality=loaded.record.locality,
                               county=loaded.record.county)


async def test_a_projector_killed_mid_batch_resumes_exactly(
        database_url: str, engine, store, tmp_path: Path) -> None:
    """``vatra projector`` projects the outbox oldest first, ``batch`` households per
    transaction. The test queues one batch and a few more households, and holds a row
    lock on the outbox row of one household X of the second batch: the projector commits
    the first batch, then writes the second batch's rows (X's included: X was projected
    before, and now loses its vulnerability, gains a visit and a name) and blocks on
    locking the outbox rows it settles (X's among them). There it is SIGKILLed; its transaction never
    commits. Then none of the second batch's writes may be visible (X keeps exactly its
    old rows, the others have none) and their outbox rows are untouched, while the first
    batch is exact and settled. ``vatra projector --once`` then projects the second
    batch only, and every household is exact: a rebuild writes nothing."""
    batch = Projector(engine, store).batch  # what the command's projector takes at once
    made = [a_household(n) for n in range(batch + SECOND_BATCH)]
    for h, _, _ in made:
        await store.create_household(HouseholdRecord(h.household_id, "54975", "CJ"),
                                     new_changes(h.doc, []))
    docs = {h.household_id: h for h, _, _ in made}
    order = list(docs)  # the order the projector takes them in (enqueued_at, set below)
    first, second = order[:batch], order[batch:]
    x = second[2]

    # X was projected before; then more was logged for it, and nothing else yet
    h, pid, aid = made[order.index(x)]
    await Projector(engine, store).project_household(x)
    x_before = keyed(await rows_of(engine, x))
    assert len(x_before["vulnerabilities"]) == 1 and len(x_before["activity"]) == 2
    heads = h.doc.get_heads()
    h.record_answers(aid, pid, {"family_doctor_registered": True})  # the vulnerability goes
    h.append_activity("visit", "second visit", at="2026-03-10T09:00:00Z")
    h.set_member_field(pid, "first_name", "Ioana")
    await store.append_changes(x, new_changes(h.doc, heads))
    async with engine.begin() as conn:  # a distinct enqueued_at each: a fixed order
        for n, hid in enumerate(order):
            await conn.execute(sa.update(projection_outbox)
                               .where(projection_outbox.c.household_id == hid)
                               .values(enqueued_at=QUEUED_FROM + dt.timedelta(seconds=n)))
    queued = await outbox(engine)
    assert sorted(queued) == sorted(order)

    async with engine.connect() as lock:
        await lock.begin()
        holder = (await lock.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        await lock.execute(sa.select(projection_outbox.c.household_id)
                           .where(projection_outbox.c.household_id == x).with_for_update())
        log = tmp_path / "projector.log"
        with log.open("wb") as out:
            proc = await projector(database_url, tmp_path / "projector", "--poll", "0.05",
                                   output=out)
        try:
            backend, statement = await blocked_by(engine, holder, proc, log)
            assert "FROM projection_outbox" in statement and "FOR UPDATE" in statement
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await lock.rollback()
    await gone(engine, backend)

    left = await outbox(engine)
    assert left == {hid: queued[hid] for hid in second}  # untouched, X's included
    for hid in first:
        assert keyed(await rows_of(engine, hid)) == await exact(engine, store, hid), hid
    assert keyed(await rows_of(engine, x)) == x_before  # none of the killed writes
    for hid in second:
        if hid != x:
            assert all(rows == [] for rows in (await rows_of(engine, hid)).values()), hid
    async with engine.connect() as conn:
        stamps = dict((await conn.execute(
            sa.select(projected.c.household_id, projected.c.projected_at))).all())

    once = await projector(database_url, tmp_path / "projector", "--once",
                           output=asyncio.subprocess.PIPE)
    output = (await asyncio.wait_for(once.communicate(), timeout=120))[0].decode()
    assert once.returncode == 0, output
    assert f"projected {SECOND_BATCH} household(s); the outbox is empty" in output

    assert await outbox(engine) == {}
    for hid in order:
        rows = keyed(await rows_of(engine, hid))
        assert rows == await exact(engine, store, hid), hid
        assert [a["text"] for a in rows["activity"]] == \
            [a["text"] for a in docs[hid].activity()]  # each entry once
        assert rows["households"][0]["projected_seq"] == await last_seq_of(engine, hid)
    x_after = keyed(await rows_of(engine, x))
    assert x_after["vulnerabilities"] == [] and len(x_after["activity"]) == 3
    async with engine.connect() as conn:
        restamped = dict((await conn.execute(
            sa.select(projected.c.household_id, projected.c.projected_at)
            .where(projected.c.household_id.in_(first)))).all())
    assert restamped == {hid: stamps[hid] for hid in first}  # the first batch not rewritten
    rebuilt = await Projector(engine, store).rebuild()
    assert sorted((p.household_id, p.upserted, p.deleted) for p in rebuilt) == \
        sorted((hid, 0, 0) for hid in order)


async def test_a_projector_on_its_own_serves_its_metrics(database_url: str, tmp_path: Path
                                                         ) -> None:
    """Issue 14, part 4: deployed on its own (deploy/), the projector had no HTTP server,
    so its lag and backlog reached no Prometheus. ``vatra projector --metrics-port P``
    serves them."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "projector.log"
    with log.open("wb") as out:
        proc = await projector(database_url, tmp_path / "projector", "--metrics-port",
                               str(port), output=out)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    try:
        text = ""
        for _ in range(300):
            if proc.returncode is not None:
                pytest.fail(f"vatra projector exited:\n{log.read_text()}")
            try:
                text = await asyncio.to_thread(scrape)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            if "vatra_projector_up 1.0" in text:
                break
            await asyncio.sleep(0.1)
        assert "vatra_projector_up 1.0" in text
        assert "vatra_projection_lag_seconds" in text
        assert "vatra_projection_pending_households" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0, log.read_text()
