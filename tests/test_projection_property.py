"""Property-based, against a real server: after a sync, the projection of a household is
the projection of its converged document.

Two or three workers' tablets of one team edit one or two households offline,
concurrently (members' fields, notes, assessments and answers with catalogue indicator
codes, so vulnerabilities appear and disappear; services planned, their status and
note changed; activity; addresses, so conflicts are recorded; GPS; change requests,
which the county's supervisor approves or rejects over HTTP), syncing in a random
order. Meanwhile the server's own projector projects whatever state it sees. Then
every tablet syncs until all have converged, the projector drains, and every ``proj``
row of each household must equal what :func:`sync_server.projection.rows.project` gives
for a converged tablet's document, compared column by column, ``updated_at``,
``updated_by`` and ``projected_seq`` included (they are computed here with the
projector's own ``_log_facts`` for the newest change the server logged, so a stale
projection fails); only ``projected_at`` (the time of the write) is left out. The
outbox is empty afterwards and a rebuild writes nothing.

Bounded for CI (``VATRA_PROPERTY_EXAMPLES``, default 8); raise it for a longer run. A
failing example is reported as generated, not shrunk: every example is a real server
session of a second or so, and shrinking one would outlast the test's timeout.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import sqlalchemy as sa
from _scenes import active_household
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_permissions_property import EXAMPLES, STATUSES, _tag
from test_projector_functional import rows_of

from client_sdk import ServerRejected, SupervisorClient, SyncClient
from conflict import Household
from conflict.catalogue import assessment_order, load_catalogue
from conflict.household import InvalidValueError
from sync_server.app import ENGINE, PROJECTOR, STORE, SYNCHRONIZER
from sync_server.projection.projector import _log_facts
from sync_server.projection.rows import primary_key, project
from sync_server.store.tables import PROJ_TABLES as TABLES
from sync_server.store.tables import changes, projection_outbox

pytestmark = pytest.mark.functional

#: Instants of assessments, deliveries and activity: few, so that ties happen (the
#: latest assessment is then chosen by id).
INSTANTS = ("2026-03-01T10:00:00Z", "2026-03-02T09:30:00Z", "2026-03-02T09:30:00Z",
            "2026-04-15T16:00:00Z")
#: (indicator code, answer): each makes a vulnerability appear or disappear for someone.
ANSWERS = (("family_doctor_registered", False), ("family_doctor_registered", True),
           ("vaccination_status", "incomplete"), ("vaccination_status", "complete"),
           ("health_insurance", False), ("unexcused_absences_last_month", 12),
           ("unexcused_absences_last_month", 1), ("employment_status", "unemployed"),
           ("single_parent", True), ("has_electricity", False), ("school_dropout", True),
           ("food_insecurity", True))
MEMBER_FIELDS = {"first_name": ("Ana", "Ioana", "Mihai"), "last_name": ("Pop", "Rus"),
                 "birth_date": ("2015-04-01", "1988-11-30", "2008-03-02", "2021-06-01"),
                 "sex": ("F", "M", "X")}
SERVICES = (("information", "child_no_family_doctor"), ("counselling", "school_absenteeism"),
            ("assistance", "below_poverty_line"))
DEADLINES = ("2026-03-20", "2026-04-01", "2026-02-10")
PRESENCES = ("present", "absent", "moved")
#: What a decision may be refused with: decided already; a member still referenced; a
#: status transition the household is no longer in; the member a request names removed
#: meanwhile.
REFUSALS = {"decided", "reference", "transition", "missing"}
KINDS = ("member", "notes", "assess", "answer", "answer", "answer", "answer", "complete",
         "plan", "status", "service_note", "activity", "address", "gps", "request", "request",
         "decide", "decide", "decide", "resolve", "sync", "sync", "sync", "sync")

step = st.tuples(st.sampled_from(KINDS), st.integers(0, 2), st.integers(0, 1),
                 st.integers(0, 11), st.integers(0, 11))


def keyed(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows in primary-key order (Python's order, not the database
    collation's), without ``projected_at``."""
    out = {}
    for table in TABLES:
        pk = primary_key(table)
        out[table.name] = sorted(
            ({k: v for k, v in r.items() if k != "projected_at"} for r in rows[table.name]),
            key=lambda r, pk=pk: tuple(r[c] for c in pk))
    return out


async def last_seq_of(engine, household_id: str) -> int:
    """The newest change the server logged for the household."""
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.max(changes.c.seq))
                                   .where(changes.c.household_id == household_id))).scalar_one()


async def expected_rows(engine, household_id: str, doc: dict[str, Any], *, locality: str,
                        county: str) -> dict[str, list[dict[str, Any]]]:
    """What the projection of ``doc`` must be, with the log facts of the newest change
    logged (read the way the projector reads them)."""
    last_seq = await last_seq_of(engine, household_id)
    async with engine.connect() as conn:
        facts = (await _log_facts(conn, {household_id: last_seq}))[household_id]
    return keyed(project(household_id, doc, locality=locality, county=county, log=facts,
                         catalogue=load_catalogue()))


async def outbox_size(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(
            sa.select(sa.func.count()).select_from(projection_outbox))).scalar_one()


def _pick(keys: Any, n: int) -> str | None:
    ordered = sorted(keys)
    return ordered[n % len(ordered)] if ordered else None


def edit(h: Household, kind: str, user: str, x: int, y: int, n: int) -> None:
    """One offline edit of ``kind`` on a tablet's copy, through the SDK's guarded API
    (nothing, if the copy has no member, assessment or service to edit yet)."""
    d = h.to_dict()
    pid = _pick(d["members"], y)
    aid = _pick(d["assessments"], x)
    sid = _pick(d["service_plan"], x)
    if kind == "member" and pid is not None:
        field = sorted(MEMBER_FIELDS)[x % len(MEMBER_FIELDS)]
        h.set_member_field(pid, field, MEMBER_FIELDS[field][y % len(MEMBER_FIELDS[field])])
    elif kind == "notes":
        (h.set_notes if x % 2 else h.append_notes)(f" note {n}")
    elif kind == "assess":
        h.start_assessment(at=INSTANTS[x % len(INSTANTS)])
    elif kind == "answer" and pid is not None:
        if aid is None:
            aid = h.start_assessment(at=INSTANTS[x % len(INSTANTS)])
        elif x % 3:  # mostly the latest one
            aid = assessment_order(d["assessments"])[-1][0]
        code, value = ANSWERS[(x + y) % len(ANSWERS)]
        h.record_answers(aid, pid, {code: value})
    elif kind == "complete" and aid is not None:
        h.complete_assessment(aid, at=INSTANTS[y % len(INSTANTS)])
    elif kind == "plan" and pid is not None:
        code, vulnerability = SERVICES[x % len(SERVICES)]
        h.plan_service(code, pid, vulnerability, DEADLINES[y % len(DEADLINES)])
    elif kind == "status" and sid is not None:
        h.set_service_status(sid, STATUSES[y % len(STATUSES)],
                             at=INSTANTS[x % len(INSTANTS)])
    elif kind == "service_note" and sid is not None:
        h.set_service_note(sid, f"note {n}" if y % 3 else "")
    elif kind == "activity":
        h.append_activity("visit", f"visit {n}", at=INSTANTS[x % len(INSTANTS)])
    elif kind == "address":
        h.set_address(f"Str. {'ABC'[x % 3]} {y}")
    elif kind == "gps":
        h.set_gps(46.77 + x / 100, 23.59 + y / 100, 10.0, captured_at=INSTANTS[0])
    elif kind == "request" and pid is not None:
        kinds = ("change_presence", "add_member", "remove_member", "close_household",
                 "reopen_household")
        request = kinds[x % len(kinds)]
        payload: dict[str, Any] = {
            "change_presence": {"person_id": pid, "presence": PRESENCES[y % len(PRESENCES)]},
            "add_member": {"first_name": "Dan", "last_name": "Rus", "sex": "M",
                           "birth_date": MEMBER_FIELDS["birth_date"][y % 4],
                           "relation_to_head": "child"},
            "remove_member": {"person_id": pid}}.get(request, {})
        h.request_change(request, payload, f"reason {n}")
    elif kind == "resolve":
        open_ = h.conflicts(open_only=True)
        if open_:
            c = open_[x % len(open_)]
            with contextlib.suppress(InvalidValueError):  # a protected path: a request's job
                h.resolve_conflict(c["conflict_id"], c["values"][y % len(c["values"])])


async def second_household(server, provision, tablets) -> str:
    """Another active household of the same team: a head and a child."""
    ana = tablets[0]
    hid = ana.create_household(locality="54975", county="CJ", address="Str. Scurta 5").household_id
    with ana.edit(hid) as e:
        e.add_member("Ion", "Rus", "1980-05-05", "M", "head")
        e.add_member("Maria", "Rus", "2020-09-01", "F", "child")
        e.set_status("active")
    await SyncClient(ana, server.url).sync()
    await provision.share(hid, *tablets)
    for t in tablets[1:]:
        t.track(hid)
        await SyncClient(t, server.url).sync()
    return hid


@settings(max_examples=EXAMPLES, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workers=st.integers(2, 3), households=st.integers(1, 2),
       steps=st.lists(step, min_size=8, max_size=30), order=st.permutations(range(3)))
async def test_projection_after_sync_is_the_projection_of_the_converged_document(
        server, provision, workers, households, steps, order) -> None:
    tag = _tag(server, steps)
    mates = [(f"nurse{tag}", {}), (f"csl{tag}", {})][:workers - 1]
    hid, _, tablets = await active_household(server, provision, *mates, tablet_prefix=tag)
    hids = [hid] + ([await second_household(server, provision, tablets)]
                    if households == 2 else [])
    supervisor = SupervisorClient(
        await provision.tablet(f"sup{tag}", role="supervisor", county="CJ"), server.http_url)

    for n, (kind, i, which, x, y) in enumerate(steps):
        tablet, household = tablets[i % workers], hids[which % len(hids)]
        if kind == "sync":
            await SyncClient(tablet, server.url).sync()
        elif kind == "decide":  # a request the server has, of this household
            await server.app[PROJECTOR].drain_all()  # the list is read from the projection
            pending = [r for r in await supervisor.requests() if r["household_id"] == household]
            if pending:
                rid = pending[x % len(pending)]["request_id"]
                decide = supervisor.approve if y % 3 else supervisor.reject
                try:
                    await decide(household, rid, note=f"decided at step {n}")
                except ServerRejected as err:  # the household no longer allows it
                    if err.code not in REFUSALS:
                        raise
        else:
            with tablet.edit(household) as h:
                edit(h, kind, tablet.credentials.user_id, x, y, n)

    registry = server.app[SYNCHRONIZER].registry
    for _ in range(4):  # the server's own changes (conflicts, restores) need another round
        for i in (i for i in order if i < workers):
            await SyncClient(tablets[i], server.url).sync()
        heads = {h: sorted((await registry.get(h)).doc.get_heads()) for h in hids}
        if all(sorted(t.household(h).doc.get_heads()) == heads[h]
               for t in tablets for h in hids):
            break
    else:
        pytest.fail("the tablets did not converge")

    engine = server.app[ENGINE]
    await server.app[PROJECTOR].drain_all()
    assert await outbox_size(engine) == 0
    for h in hids:
        record = await server.app[STORE].household(h)
        doc = Household(tablets[0].household(h).doc, h).to_dict()
        expected = await expected_rows(engine, h, doc, locality=record.locality,
                                       county=record.county)
        stored = keyed(await rows_of(engine, h))
        for table in TABLES:
            assert stored[table.name] == expected[table.name], (h, table.name)
    rebuilt = await server.app[PROJECTOR].rebuild(hids)
    assert [(p.household_id, p.upserted, p.deleted) for p in rebuilt] == \
        [(h, 0, 0) for h in hids]
