"""Answers against the catalogue (issue 12, deliverable 3), in the SDK before the edit
and on the server for every batch (a real server, enrolled tablets, a modified client)."""

from __future__ import annotations

import pytest
from _scenes import active_household
from automerge.core import ROOT, ObjType, ScalarType

from client_sdk import SyncClient
from conflict import Household, InvalidValueError
from conflict.catalogue import LATEST_VERSION, derive
from sync_server.app import SYNCHRONIZER

pytestmark = pytest.mark.functional

#: (what observation 3 wrote, the rule it breaks): indicator code, Automerge value
BAD_ANSWERS = [
    ("parrents_abroad", (ScalarType.Str, "one_parent"), "unknown-indicator"),
    ("parents_abroad", (ScalarType.Boolean, True), "type"),
    ("school_grade", (ScalarType.Str, "twelve"), "type"),
    ("unexcused_absences_last_month", (ScalarType.Str, "half"), "type"),
    ("parents_abroad", (ScalarType.Str, "on_the_moon"), "option"),
    ("school_grade", (ScalarType.Int, 40), "range"),
]


@pytest.mark.parametrize(("code", "value", "rule"), BAD_ANSWERS)
def test_the_sdk_refuses_an_answer_the_catalogue_does_not_allow(code, value, rule) -> None:
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="ana")
    pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    aid = h.start_assessment()
    heads = h.doc.get_heads()
    with pytest.raises(InvalidValueError) as err:
        h.record_answers(aid, pid, {code: value[1]})
    assert err.value.rule == rule and err.value.path[-1] == code
    with pytest.raises(InvalidValueError) as err:
        h.plan_service("teleportation", pid, "parents_working_abroad", "2026-12-20")
    assert err.value.rule == "unknown-service"
    assert h.doc.get_heads() == heads  # nothing written


def _raw_answer(h: Household, aid: str, pid: str, code: str, value) -> None:
    """What a modified client writes, bypassing the typed API."""
    doc = h.doc
    answers = doc.get(doc.get(doc.get(ROOT, "assessments")[1], aid)[1], "answers")[1]
    mine = doc.get(answers, pid)
    with doc.transaction() as tx:
        target = mine[1] if mine is not None else tx.put_object(answers, pid, ObjType.Map)
        tx.put(target, code, *value)


@pytest.mark.parametrize(("code", "value", "rule"), BAD_ANSWERS)
async def test_the_server_refuses_an_answer_the_catalogue_does_not_allow(
        server, provision, code, value, rule) -> None:
    """Before (issue 12, observation 3): an unknown indicator code (``parrents_abroad``),
    ``True`` for a choice indicator, ``"half"`` and ``"twelve"`` for numbers were
    accepted, and the child whose parent works abroad was never flagged. Reproduced
    with a client writing each answer directly. Now each is refused
    ``schema-violation`` naming the path and the rule, quarantined, not merged."""
    hid, pid, (ana,) = await active_household(server, provision)
    with ana.edit(hid) as h:
        aid = h.start_assessment()
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    heads = sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads())
    _raw_answer(ana.household(hid), aid, pid, code, value)
    ana.save(hid)
    summary = await SyncClient(ana, server.url).sync()
    [rejection] = summary.rejected
    # the SDK recovers: the household is rebuilt without the refused answer
    assert summary.recovered[hid].uploaded and summary.recovered[hid].dropped
    assert rejection.code == "schema-violation"
    shown = code if code == "parents_abroad" or code == "school_grade" else None
    assert f"assessments/{aid}/answers/{pid}/{shown or ''}" in rejection.message
    assert f": {rule}" in rejection.message and "on_the_moon" not in rejection.message
    assert sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads()) == heads
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [k.code for k in kept] == ["schema-violation"]
    assert code not in Household(ana.household(hid).doc, hid).to_dict()["assessments"][aid][
        "answers"].get(pid, {})


async def test_the_server_refuses_an_unknown_service_and_flags_a_valid_answer(
        server, provision) -> None:
    """An unknown service code (``teleportation``) is refused; the valid answer for the
    child whose parent works abroad is accepted, recorded under the catalogue version
    the assessment names, and flags the vulnerability."""
    hid, pid, (ana,) = await active_household(server, provision)
    raw = Household(ana.household(hid).doc, hid, author="ana")
    sid = "5b0f6a53-4c5e-4a59-9f0e-2f3d3c1b7a10"
    plan = raw.doc.get(ROOT, "service_plan")[1]
    with raw.doc.transaction() as tx:
        s = tx.put_object(plan, sid, ObjType.Map)
        for key, value in (("code", "teleportation"), ("person_id", pid),
                           ("vulnerability", "parents_working_abroad"),
                           ("deadline", "2026-12-20"), ("status", "planned")):
            tx.put(s, key, ScalarType.Str, value)
        tx.put_object(s, "note", ObjType.Text)
    ana.save(hid)
    [rejection] = (await SyncClient(ana, server.url).sync()).rejected
    assert rejection.code == "schema-violation"
    assert f"service_plan/{sid}/code: unknown-service" in rejection.message

    with ana.edit(hid) as h:
        aid = h.start_assessment()
        h.record_answers(aid, pid, {"parents_abroad": "one_parent"})
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    doc = Household(server.app[SYNCHRONIZER].registry.resident(hid).doc, hid).to_dict()
    assert doc["assessments"][aid]["catalogue_version"] == LATEST_VERSION
    from datetime import date
    assert "parents_working_abroad" in {d.vulnerability for d in derive(doc, on=date.today())}


async def test_an_answer_for_someone_not_in_the_household_is_refused(server, provision) -> None:
    hid, _, (ana,) = await active_household(server, provision)
    with ana.edit(hid) as h:
        aid = h.start_assessment()
    await SyncClient(ana, server.url).sync()
    _raw_answer(ana.household(hid), aid, "0a1b2c3d-0000-4000-8000-000000000000",
                "school_enrolled", (ScalarType.Boolean, True))
    ana.save(hid)
    [rejection] = (await SyncClient(ana, server.url).sync()).rejected
    assert rejection.code == "schema-violation" and ": reference" in rejection.message
