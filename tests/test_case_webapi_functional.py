"""Case work in the web tier's read API: households by case stage and by due or overdue
deadline, and a profile's deadlines and visit reports (real server, real PostgreSQL,
projector, row-level security, signed HTTP)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from _scenes import web_get

from client_sdk import SyncClient
from conflict import Household
from conflict import case as case_rules
from sync_server.app import PROJECTOR

pytestmark = pytest.mark.functional

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
LONG_AGO = "2020-01-10T10:00:00Z"  # every deadline counted from it is long overdue


def instant(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def get(server, tablet, path: str, **params: Any) -> tuple[int, Any]:
    status, body, _ = await web_get(server.http_url, tablet, path, **params)
    return status, json.loads(body)


@pytest.fixture
async def cases(server, provision) -> dict[str, Any]:
    """Four households of one worker: ``late`` (a case identified long ago, nothing done:
    its initial assessment and service plan are overdue, and it has a visit report),
    ``fresh`` (identified an hour ago: both open), ``monitored`` (moved to monitoring
    after an assessment completed yesterday and reported: its re-assessment is due in
    nine months) and
    ``none`` (no case)."""
    ana = await provision.tablet("ana")
    cara = await provision.tablet("cara", localities=[("55000", "CJ")])
    ids = {}
    for key in ("late", "fresh", "monitored", "none"):
        ids[key] = ana.create_household(locality="54975", county="CJ",
                                        address=f"Str. {key} 1").household_id
    with ana.edit(ids["late"]) as h:
        h.open_case(identified_at=LONG_AGO, at=LONG_AGO)
    with ana.edit(ids["late"]) as h:
        h.record_visit(visited_on="2020-01-11", place="home", purpose="identification",
                       participants=["mother"], synthesis="Four children, no income.",
                       next_visit="2020-01-20", at="2020-01-11T12:00:00Z")
    with ana.edit(ids["fresh"]) as h:
        h.open_case(identified_at=instant(NOW - dt.timedelta(hours=1)), emergency=False)
    with ana.edit(ids["monitored"]) as h:
        h.open_case(identified_at=instant(NOW - dt.timedelta(days=2)))
        aid = h.start_assessment(at=instant(NOW - dt.timedelta(days=1)))
        h.complete_assessment(aid, at=instant(NOW - dt.timedelta(days=1)))
        h.record_initial_report(at=instant(NOW - dt.timedelta(hours=20)))
        for stage in ("detailed_assessment", "planning", "services", "monitoring"):
            h.move_stage(stage)
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await server.app[PROJECTOR].drain_all()
    return {"ids": ids, "ana": ana, "cara": cara}


async def listed(server, tablet, ids: dict[str, str], **params: Any) -> list[str]:
    status, answer = await get(server, tablet, "/v1/web/households", **params)
    assert status == 200, answer
    names = {v: k for k, v in ids.items()}
    return sorted(names[item["id"]] for item in answer["items"])


@pytest.mark.parametrize(("params", "expected"), [
    ({"stage": "identification"}, ["fresh", "late"]),
    ({"stage": "monitoring"}, ["monitored"]),
    ({"stage": "none"}, ["none"]),
    ({"deadline": "any"}, ["late"]),  # overdue now
    ({"deadline": "initial_assessment"}, ["late"]),
    ({"deadline": "service_plan"}, ["late"]),  # met by `monitored` when it entered services
    ({"deadline": "next_visit"}, ["late"]),
    ({"deadline": "reassessment"}, []),  # not overdue ...
    ({"deadline": "reassessment", "due_before": (NOW + dt.timedelta(days=400)).date().isoformat()},
     ["monitored"]),  # ... but due within the year
    ({"due_before": (NOW + dt.timedelta(days=5)).date().isoformat()}, ["fresh", "late"]),
    ({"stage": "identification", "deadline": "initial_assessment"}, ["late"]),
])
async def test_households_by_stage_and_deadline(server, cases, params, expected) -> None:
    assert await listed(server, cases["ana"], cases["ids"], **params) == expected


async def test_each_item_says_its_stage_and_another_locality_sees_none(server, cases) -> None:
    status, answer = await get(server, cases["ana"], "/v1/web/households")
    assert status == 200
    stages = {item["id"]: item["case_stage"] for item in answer["items"]}
    assert stages == {cases["ids"]["late"]: "identification",
                      cases["ids"]["fresh"]: "identification",
                      cases["ids"]["monitored"]: "monitoring", cases["ids"]["none"]: None}
    assert await listed(server, cases["cara"], cases["ids"], deadline="any") == []


async def test_a_profile_has_the_cases_deadlines_as_the_tablet_computes_them(
        server, cases) -> None:
    for key in ("late", "fresh", "monitored"):
        hid = cases["ids"][key]
        status, profile = await get(server, cases["ana"], f"/v1/web/households/{hid}")
        assert status == 200
        tablet = Household(cases["ana"].household(hid).doc, hid)
        now = dt.datetime.now(dt.UTC)
        expected = {d.code: (d.due, d.state) for d in case_rules.deadlines(tablet.doc, now)}
        served = {d["code"]: (dt.datetime.fromisoformat(d["due"]), d["state"])
                  for d in profile["case_deadlines"]}
        assert served == expected, key
        assert profile["household"]["case_stage"] == tablet.case()["stage"]
    late = cases["ids"]["late"]
    _, profile = await get(server, cases["ana"], f"/v1/web/households/{late}")
    assert {d["code"]: d["state"] for d in profile["case_deadlines"]} == {
        "initial_assessment": "overdue", "service_plan": "overdue", "next_visit": "overdue"}
    [visit] = profile["visits"]
    assert (visit["visited_on"], visit["participants"], visit["synthesis"], visit["next_visit"]) \
        == ("2020-01-11", ["mother"], "Four children, no income.", "2020-01-20")
    assert profile["household"]["case_stage_since"].startswith("2020-01-10T10:00:00")


@pytest.mark.parametrize(("params", "code"), [
    ({"stage": "closing"}, "stage-enum"),
    ({"deadline": "lunch"}, "deadline-enum"),
    ({"deadline": "any", "due_before": "2026-13-01"}, "due-before-format"),
    ({"due_before": "next week"}, "due-before-format"),
])
async def test_bad_case_filters_are_refused_by_rule(server, cases, params, code) -> None:
    status, answer = await get(server, cases["ana"], "/v1/web/households", **params)
    assert (status, answer["code"]) == (400, code)


async def test_dates_are_utc_whatever_the_database_time_zone(server, provision,
                                                            database_url) -> None:
    """Found in review: ``due_before`` became midnight, and months were added, in the
    database session's TimeZone, which nothing set. An assessment completed at 22:30 UTC
    on 30 May is due for re-assessment (nine months) at 22:30 UTC on 28 February, as the
    tablet says; in Europe/Bucharest, where it was already 31 May, the database said
    23:30 UTC on the 27th. The read model's transactions now set UTC."""
    import sqlalchemy as sa

    from sync_server.projection import readmodel
    from sync_server.projection.readmodel import ListFilter, PersonFilter, Scope
    from sync_server.store.database import make_engine

    ana = await provision.tablet("ana")
    hid = ana.create_household(locality="54975", county="CJ", address="Str. B 2").household_id
    with ana.edit(hid) as h:
        pid = h.add_member("Ion", "Pop", "1980-05-10", "M", "head")
        aid = h.start_assessment(at="2025-05-30T22:00:00Z")
        h.record_answers(aid, pid, {"single_parent": True})
        h.complete_assessment(aid, at="2025-05-30T22:30:00Z")
        h.open_case(identified_at="2025-05-29T10:00:00Z")
        for stage in ("detailed_assessment", "planning", "services", "monitoring"):
            h.move_stage(stage)
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await server.app[PROJECTOR].drain_all()
    tablet = {d.code: d.due for d in case_rules.dues(ana.household(hid).to_dict())}
    assert tablet["reassessment"] == dt.datetime(2026, 2, 28, 22, 30, tzinfo=dt.UTC)
    engine = make_engine(database_url)
    scope = Scope("locality", localities=("54975",))
    try:
        for zone in ("UTC", "Europe/Bucharest", "Pacific/Kiritimati"):
            async with engine.connect() as conn, conn.begin():
                await conn.execute(sa.text(f"SET LOCAL TIME ZONE '{zone}'"))
                await readmodel.scoped(conn, scope)
                [person] = (await readmodel.list_persons(conn, scope, PersonFilter()))["items"]
                assert person["reassessment_due"] == tablet["reassessment"], zone
                due = await readmodel.list_households(conn, scope, ListFilter(
                    deadline="reassessment", due_before=dt.date(2026, 3, 1)))
                assert due["total"] == 1, zone
                early = await readmodel.list_households(conn, scope, ListFilter(
                    deadline="reassessment", due_before=dt.date(2026, 2, 28)))
                assert early["total"] == 0, zone
    finally:
        await engine.dispose()
