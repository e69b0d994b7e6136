"""Change-permission rules enforced by the server (real server, enrolled devices)."""

from __future__ import annotations

import pytest
from _scenes import active_household
from automerge.core import ROOT, ScalarType

from client_sdk import SyncClient
from conflict import Household
from sync_server.app import SYNCHRONIZER

pytestmark = pytest.mark.functional


async def test_a_client_bypassing_the_sdk_cannot_change_a_protected_path(server,
                                                                         provision) -> None:
    hid, pid, (ana,) = await active_household(server, provision)
    raw = Household(ana.household(hid).doc, hid)  # no guard: what a modified client does
    raw.set_member_field(pid, "presence", "moved")
    ana.save(hid)
    summary = await SyncClient(ana, server.url).sync()
    [rejection] = summary.rejected
    assert rejection.code == "protected-path"
    assert f"members/{pid}/presence" in rejection.message
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert Household(actor.doc, hid).members()[pid]["presence"] == "present"
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [(k.document_id, k.code) for k in kept] == [(hid, "protected-path")]


async def test_the_sdk_stops_an_honest_client_before_it_edits(server, provision) -> None:
    from conflict.household import ProtectedPathError

    hid, pid, (ana,) = await active_household(server, provision)
    heads = ana.household(hid).doc.get_heads()
    with pytest.raises(ProtectedPathError):
        ana.household(hid).set_member_field(pid, "presence", "moved")
    assert ana.household(hid).doc.get_heads() == heads  # nothing written, offline


async def test_only_the_countys_supervisor_may_decide_a_request(server, provision) -> None:
    hid, pid, (ana, sup) = await active_household(
        server, provision, ("sup-cj", {"role": "supervisor", "county": "CJ"}))
    with ana.edit(hid) as h:
        rid = h.request_change("change_presence", {"person_id": pid, "presence": "moved"},
                               "moved to her grandmother")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    raw = Household(ana.household(hid).doc, hid)
    doc = raw.doc
    requests = doc.get(ROOT, "change_requests")[1]
    request = doc.get(requests, rid)[1]
    with doc.transaction() as tx:  # the worker approves their own request
        tx.put(request, "status", ScalarType.Str, "approved")
    ana.save(hid)
    summary = await SyncClient(ana, server.url).sync()
    assert [r.code for r in summary.rejected] == ["decision-field"]

    # the county's supervisor may write the decision (a rejection here)
    await SyncClient(sup, server.url).sync()
    sdoc = sup.household(hid).doc
    srequest = sdoc.get(sdoc.get(ROOT, "change_requests")[1], rid)[1]
    with sdoc.transaction() as tx:
        tx.put(srequest, "status", ScalarType.Str, "rejected")
        tx.put(srequest, "decided_by", ScalarType.Str, "sup-cj")
        tx.put(srequest, "decided_at", ScalarType.Str, "2026-11-22T12:00:00Z")
    sup.save(hid)
    assert (await SyncClient(sup, server.url).sync()).rejected == []
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert Household(actor.doc, hid).change_requests()[0]["status"] == "rejected"


async def test_a_concurrent_lower_service_status_is_restored_by_the_server(server,
                                                                           provision) -> None:
    """The nurse marks a service delivered; the counsellor, offline, marks it in progress.
    Automerge lets the larger actor id win (here the counsellor's), which would move the
    status back: the server writes ``delivered`` again and records why."""
    ana = await provision.tablet("ana", actor_id=bytes([0x10]) * 16)
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    hid = h.household_id
    with ana.edit(hid) as e:
        pid = e.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        sid = e.plan_service("counselling", pid, "school_absenteeism", "2026-12-20")
    await SyncClient(ana, server.url).sync()
    nurse = await provision.tablet("nurse", actor_id=bytes([0x20]) * 16)
    counsellor = await provision.tablet("counsellor", actor_id=bytes([0xF0]) * 16)
    await provision.share(hid, ana, nurse, counsellor)
    for t in (nurse, counsellor):
        t.track(hid)
        await SyncClient(t, server.url).sync()
    with nurse.edit(hid) as e:
        e.set_service_status(sid, "delivered")
    with counsellor.edit(hid) as e:
        e.set_service_status(sid, "in_progress")
    await SyncClient(nurse, server.url).sync()
    await SyncClient(counsellor, server.url).sync()
    await SyncClient(counsellor, server.url).sync()
    service = counsellor.household(hid).to_dict()["service_plan"][sid]
    assert service["status"] == "delivered"
    assert service["delivered_by"] == "nurse"
    assert counsellor.household(hid).activity()[-1]["kind"] == "status-restored"


async def test_same_field_conflicts_are_recorded_and_resolved(server, provision) -> None:
    """Two teammates change the address offline to different values: the server records a
    conflict with both values; choosing one writes it and closes the conflict. Writing the
    same value concurrently, or one after the other, is no conflict."""
    hid, pid, (ana, nurse) = await active_household(server, provision, ("nurse", {}))
    with ana.edit(hid) as h:
        h.set_address("Str. Morii 12A")
    with nurse.edit(hid) as h:
        h.set_address("Strada Morii nr. 12")
    await SyncClient(ana, server.url).sync()
    await SyncClient(nurse, server.url).sync()
    await SyncClient(ana, server.url).sync()
    [c] = ana.household(hid).conflicts(open_only=True)
    assert c["path"] == ["address"]
    # the server's value first (ana's, synced first), then the value of the batch (nurse's)
    assert c["values"] == ["Str. Morii 12A", "Strada Morii nr. 12"]
    assert [w["by"] for w in c["written"]] == ["ana", "nurse"]
    assert all(w["at"] <= c["detected_at"] for w in c["written"])
    assert ana.household(hid).activity()[-1]["kind"] == "conflict"

    with ana.edit(hid) as h:
        h.resolve_conflict(c["conflict_id"], "Str. Morii 12A")
    await SyncClient(ana, server.url).sync()
    await SyncClient(nurse, server.url).sync()
    assert nurse.household(hid).to_dict()["address"] == "Str. Morii 12A"
    assert nurse.household(hid).conflicts(open_only=True) == []

    # sequential edits (the nurse has synced ana's) and equal concurrent values: none
    with nurse.edit(hid) as h:
        h.set_address("Str. Morii 14")
    await SyncClient(nurse, server.url).sync()
    with ana.edit(hid) as h:
        h.set_member_field(pid, "first_name", "Anca")
    with nurse.edit(hid) as h:
        h.set_member_field(pid, "first_name", "Anca")
    await SyncClient(ana, server.url).sync()
    await SyncClient(nurse, server.url).sync()
    await SyncClient(ana, server.url).sync()
    assert len(ana.household(hid).conflicts()) == 1  # still only the first one


async def test_a_supervisor_approving_through_sync_gets_the_change_applied_once(
        server, provision) -> None:
    hid, pid, (ana, sup) = await active_household(
        server, provision, ("sup-cj", {"role": "supervisor", "county": "CJ"}))
    with ana.edit(hid) as h:
        rid = h.request_change("change_presence", {"person_id": pid, "presence": "moved"},
                               "moved to her grandmother")
    await SyncClient(ana, server.url).sync()
    await SyncClient(sup, server.url).sync()
    sdoc = sup.household(hid).doc
    srequest = sdoc.get(sdoc.get(ROOT, "change_requests")[1], rid)[1]
    with sdoc.transaction() as tx:  # the supervisor's tablet decides (decision fields only)
        tx.put(srequest, "status", ScalarType.Str, "approved")
        tx.put(srequest, "decided_by", ScalarType.Str, "sup-cj")
        tx.put(srequest, "decided_at", ScalarType.Str, "2026-11-22T12:00:00Z")
    sup.save(hid)
    assert (await SyncClient(sup, server.url).sync()).rejected == []
    await SyncClient(sup, server.url).sync()  # once more: nothing is applied twice
    await SyncClient(ana, server.url).sync()
    h = ana.household(hid)
    assert h.members()[pid]["presence"] == "moved"
    applied = [e for e in h.activity() if e["kind"] == "change_approved"]
    assert len(applied) == 1 and applied[0]["text"].endswith("approved by sup-cj")


async def test_two_deliveries_of_one_service_conflict_on_who_delivered(server,
                                                                      provision) -> None:
    """Both teammates mark the same service delivered offline: the status agrees, but
    ``delivered_by`` differs, and that is recorded as a conflict naming both writers."""
    hid, pid, (ana, nurse) = await active_household(server, provision, ("nurse", {}))
    with ana.edit(hid) as h:
        sid = h.plan_service("counselling", pid, "school_absenteeism", "2026-12-20")
    await SyncClient(ana, server.url).sync()
    await SyncClient(nurse, server.url).sync()
    at = "2026-11-20T10:00:00Z"
    with ana.edit(hid) as h:
        h.set_service_status(sid, "delivered", at=at)
    with nurse.edit(hid) as h:
        h.set_service_status(sid, "delivered", at=at)
    await SyncClient(ana, server.url).sync()
    await SyncClient(nurse, server.url).sync()
    [c] = nurse.household(hid).conflicts(open_only=True)
    assert c["path"] == ["service_plan", sid, "delivered_by"]
    assert c["values"] == ["ana", "nurse"]
    assert [w["by"] for w in c["written"]] == ["ana", "nurse"]
    assert nurse.household(hid).to_dict()["service_plan"][sid]["status"] == "delivered"


async def test_concurrent_feed_entries_are_kept_and_never_a_conflict(server, provision) -> None:
    """Before (issue 12, observation 1): a worker wrote a visit note and a teammate a phone
    call in the activity feed while both were offline; after sync the server recorded
    conflicts on ``activity/N/by``, ``kind`` and ``text`` (entry N was one entry at one
    tablet's heads and the other at the server's), and resolving the ``text`` conflict as
    offered overwrote the other entry: the visit note disappeared. Reproduced with two
    tablets appending one entry each offline and syncing in turn. Now nothing conflicts
    and both entries are in the feed, once each, on every tablet."""
    hid, _, (ana, nurse) = await active_household(server, provision, ("nurse", {}))
    with ana.edit(hid) as h:
        h.append_activity("visit", "visit note: the boy has a fever")
    with nurse.edit(hid) as h:
        h.append_activity("call", "phone call with the school")
    for tablet in (nurse, ana, nurse):
        assert (await SyncClient(tablet, server.url).sync()).rejected == []
    for tablet in (ana, nurse):
        h = tablet.household(hid)
        assert h.conflicts() == []
        texts = [e["text"] for e in h.activity()]
        assert texts.count("visit note: the boy has a fever") == 1
        assert texts.count("phone call with the school") == 1
