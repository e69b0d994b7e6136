"""A refused batch is recovered by the SDK: the server's copy, plus every local edit that
is allowed, re-applied as new changes (real server, enrolled tablets)."""

from __future__ import annotations

import pytest
from _scenes import active_household
from automerge.core import ROOT, ScalarType

from client_sdk import Recovery, SyncClient
from client_sdk._recovery import REFILE_REASON
from conflict import Household
from sync_server.app import SYNCHRONIZER

pytestmark = pytest.mark.functional


async def active_household_with_notes(server, provision, *mates):
    return await active_household(server, provision, *mates,
                                  notes="first visit\nneeds school supplies\n")


async def server_copy(server, hid: str) -> Household:
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    return Household(actor.doc, hid)


async def test_a_refused_batch_keeps_every_allowed_edit(server, provision) -> None:
    hid, pid, (ana, nurse) = await active_household_with_notes(server, provision, ("nurse", {}))

    # The nurse adds to the notes and syncs first: that edit must survive ana's recovery.
    with nurse.edit(hid) as e:
        e.append_notes("vaccination card checked\n")
    assert (await SyncClient(nurse, server.url).sync()).rejected == []

    # Ana, offline, with a client that bypasses the SDK guard: one protected edit (the
    # child's presence), a protected addition (a member), and ordinary work.
    raw = Household(ana.household(hid).doc, hid, author="ana")
    raw.set_member_field(pid, "presence", "moved")
    new_pid = raw.add_member("Ion", "Pop", "2017-02-03", "M", "child")
    raw.set_address("Str. Scurta 5")
    raw.append_activity("home_visit", "school enrolment discussed")
    aid = raw.start_assessment()
    raw.record_answers(aid, pid, {"school_enrolled": True, "unexcused_absences_last_month": 2})
    raw.set_notes("first visit\nneeds school supplies, bought on Monday\n")
    ana.save(hid)

    summary = await SyncClient(ana, server.url).sync()

    # refused whole, quarantined, reported ...
    assert [r.code for r in summary.rejected] == ["protected-path"]
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [(k.document_id, k.code) for k in kept] == [(hid, "protected-path")]
    # ... and recovered in the same sync
    recovery = summary.recovered[hid]
    assert isinstance(recovery, Recovery) and recovery.uploaded
    assert recovery.code == "protected-path"
    assert recovery.reapplied == 4  # address, activity entry, assessment, notes
    assert sorted(recovery.refiled) == sorted([f"members.{pid}.presence",
                                               f"members.{new_pid}"])
    assert len(recovery.request_ids) == 2
    # the new assessment's (empty) answers about the member not yet approved
    assert recovery.dropped == [f"assessments.{aid}.answers.{new_pid}"]
    assert "Str. Scurta" not in repr(recovery)  # paths and counts, never values

    mine = ana.household(hid)
    theirs = await server_copy(server, hid)
    assert mine.doc.get_heads() == theirs.doc.get_heads()
    assert mine.to_dict() == theirs.to_dict()  # the server holds the re-applied edits
    d = mine.to_dict()
    assert d["address"] == "Str. Scurta 5"
    assert d["members"][pid]["presence"] == "present"  # back to the server's value
    assert new_pid not in d["members"]
    assert d["assessments"][aid]["answers"][pid] == {"school_enrolled": True,
                                                      "unexcused_absences_last_month": 2}
    assert "needs school supplies, bought on Monday\n" in mine.notes
    assert "vaccination card checked\n" in mine.notes
    assert [(a["by"], a["kind"]) for a in mine.activity()][-1] == ("ana", "home_visit")
    requests = {r["kind"]: r for r in mine.change_requests()}
    assert set(requests) == {"change_presence", "add_member"}
    assert all(r["status"] == "pending" and r["reason"] == REFILE_REASON
               and r["requested_by"] == "ana" for r in requests.values())
    assert requests["change_presence"]["payload"] == {"person_id": pid, "presence": "moved"}
    assert requests["add_member"]["payload"]["person_id"] == new_pid
    # the re-applied changes are the device's own
    assert {c.actor_id for c in mine.doc.get_changes([])} >= {ana.actor_id}
    assert ana.is_saved(hid)

    # still guarded after recovery, and the next sync is clean
    again = await SyncClient(ana, server.url).sync()
    assert again.rejected == [] and again.recovered == {}

    # a teammate receives the re-applied edits and the re-filed requests
    await SyncClient(nurse, server.url).sync()
    assert nurse.household(hid).to_dict() == mine.to_dict()


async def test_a_schema_violation_is_recovered_the_same_way(server, provision) -> None:
    hid, pid, (ana, nurse) = await active_household_with_notes(server, provision, ("nurse", {}))
    h = ana.household(hid)
    members = h.doc.get(ROOT, "members")[1]
    child = h.doc.get(members, pid)[1]
    with h.doc.transaction() as tx:  # what the typed API would never write
        tx.put(child, "sex", ScalarType.Str, "unknown")
    raw = Household(h.doc, hid, author="ana")
    raw.set_address("Str. Scurta 5")
    raw.append_notes("moved to the ground floor\n")
    ana.save(hid)

    summary = await SyncClient(ana, server.url).sync()

    assert [r.code for r in summary.rejected] == ["schema-violation"]
    recovery = summary.recovered[hid]
    assert recovery.uploaded and recovery.refiled == []
    assert recovery.dropped == [f"members.{pid}.sex"]
    assert recovery.reapplied == 2
    mine = ana.household(hid).to_dict()
    assert mine == (await server_copy(server, hid)).to_dict()
    assert mine["members"][pid]["sex"] == "F"
    assert mine["address"] == "Str. Scurta 5"
    assert mine["notes"].endswith("moved to the ground floor\n")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await SyncClient(nurse, server.url).sync()
    assert nurse.household(hid).to_dict()["address"] == "Str. Scurta 5"


async def test_a_self_approved_request_is_recovered_without_the_decision(server,
                                                                        provision) -> None:
    hid, pid, (ana,) = await active_household_with_notes(server, provision)
    with ana.edit(hid) as h:
        rid = h.request_change("change_presence", {"person_id": pid, "presence": "moved"},
                               "moved to her grandmother")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    doc = ana.household(hid).doc
    request = doc.get(doc.get(ROOT, "change_requests")[1], rid)[1]
    with doc.transaction() as tx:  # the worker approves their own request
        tx.put(request, "status", ScalarType.Str, "approved")
    Household(doc, hid, author="ana").append_activity("phone_call", "called the school")
    ana.save(hid)

    summary = await SyncClient(ana, server.url).sync()

    assert [r.code for r in summary.rejected] == ["decision-field"]
    recovery = summary.recovered[hid]
    assert recovery.dropped == [f"change_requests.{rid}"] and recovery.reapplied == 1
    mine = ana.household(hid)
    assert mine.change_requests()[0]["status"] == "pending"
    assert mine.activity()[-1]["kind"] == "phone_call"
    assert mine.to_dict() == (await server_copy(server, hid)).to_dict()
    assert (await SyncClient(ana, server.url).sync()).rejected == []


def test_a_teammates_newer_values_are_not_overwritten_with_stale_ones() -> None:
    """The re-applied edits are this device's own (local vs. the history it shares with
    the server), not every difference: the server's newer values stay."""
    from client_sdk._recovery import rebase

    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3",
                         author="ana", actor_id=bytes([1]) * 16)
    hid = h.household_id
    pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    h.set_notes("first visit\n")
    h.set_status("active")
    server = h.doc.fork()
    server.set_actor(bytes([2]) * 16)
    teammate = Household(server, hid)  # changes the device never received
    teammate.set_address("Str. Noua 1")
    teammate.set_notes("NURSE: first visit\n")
    local = h.doc.fork()
    local.set_actor(bytes([1]) * 16)
    mine = Household(local, hid)
    mine.set_member_field(pid, "presence", "deceased")
    mine.set_member_field(pid, "first_name", "Anca")
    mine.append_notes("second visit\n")

    result, recovery = rebase(local, server, hid, actor_id=bytes([1]) * 16, user_id="ana",
                              role="worker", code="protected-path")
    got = Household(result, hid).to_dict()
    assert got["address"] == "Str. Noua 1"  # the teammate's, not the stale local one
    assert got["notes"] == "NURSE: first visit\nsecond visit\n"  # both edits, three-way
    assert got["members"][pid] == {**Household(server, hid).members()[pid],
                                   "first_name": "Anca"}
    assert recovery.reapplied == 2 and recovery.refiled == [f"members.{pid}.presence"]
    assert {c.actor_id for c in result.get_changes(server.get_heads())} == {bytes([1]) * 16}


def test_an_activity_entry_the_schema_refuses_costs_only_itself() -> None:
    """Found in review of the case work: list appends were matched to the checks'
    refusals by element id only, which the policy's refusals use; the schema's name a
    list entry by its position, so one activity entry breaking the schema matched no
    edit and every local edit was dropped (the notes too). Reproduced with rebase on a
    good note, a good activity entry and one whose kind is not a code."""
    from automerge.core import ObjType

    from client_sdk._recovery import rebase

    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="ana",
                         actor_id=bytes([1]) * 16)
    hid = h.household_id
    h.set_notes("first visit\n")
    h.set_status("active")
    server = h.doc.fork()
    server.set_actor(bytes([2]) * 16)
    local = h.doc.fork()
    local.set_actor(bytes([1]) * 16)
    mine = Household(local, hid, author="ana")
    mine.append_notes("second visit\n")
    mine.append_activity("visit", "a good entry")
    feed = local.get(ROOT, "activity")[1]
    with local.transaction() as tx:
        bad = tx.insert_object(feed, tx.length(feed), ObjType.Map)
        for key, value in (("at", "2026-03-03T10:00:00Z"), ("by", "ana"),
                           ("kind", "Not A Code!"), ("text", "x")):
            tx.put(bad, key, ScalarType.Str, value)
    result, recovery = rebase(local, server, hid, actor_id=bytes([1]) * 16, user_id="ana",
                              role="worker", code="schema-violation")
    got = Household(result, hid).to_dict()
    assert got["notes"] == "first visit\nsecond visit\n"
    assert [e["kind"] for e in got["activity"]] == ["registered", "visit"]
    assert (recovery.reapplied, recovery.dropped) == (2, ["activity"])
