"""Attribution is the signer (issue 12, deliverable 2): every "who" a batch writes names
the user of the device that signed the session, and no "when" is in the future (a real
server, enrolled tablets, a raw client that bypasses the SDK)."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest
from _rawpeer import raw_peer
from _scenes import active_household

from client_sdk import SyncClient
from conflict import Household
from conflict.household import utc_instant
from sync_server.app import SYNCHRONIZER
from sync_server.protocol import wire

pytestmark = pytest.mark.functional


def _open_conflict(h: Household) -> str:
    return h.record_conflict(("address",), ["Str. A 1", "Str. B 2"])


#: field -> an edit a modified client makes as ``dan`` (another worker of the team) on a
#: household whose real signer is ``ana``; returns the path refused
FORGERIES = {
    "activity.by": lambda h, ctx: (h.append_activity("visit", "a visit"), "activity/")[1],
    "assessments.by": lambda h, ctx: f"assessments/{h.start_assessment()}/by",
    "delivered_by": lambda h, ctx: (h.set_service_status(ctx["sid"], "delivered"),
                                    f"service_plan/{ctx['sid']}/delivered_by")[1],
    "requested_by": lambda h, ctx: "change_requests/" + h.request_change(
        "close_household", {}, "the family moved away") + "/requested_by",
    "resolved_by": lambda h, ctx: (h.resolve_conflict(ctx["cid"], "Str. A 1"),
                                   f"conflicts/{ctx['cid']}/resolved_by")[1],
    # A conflict record says who wrote what: only the server records one (a device that
    # could would also be offering a supervisor a decision to "resolve" into place).
    "conflicts.written": lambda h, ctx: "conflicts/" + h.record_conflict(
        ("change_requests", ctx["cid"], "status"), ["pending", "approved"],
        written=[("dan", "2026-11-30T10:00:00Z"), ("sup-cj", "2026-11-30T10:00:00Z")]),
}


@pytest.mark.parametrize("field", sorted(FORGERIES))
async def test_a_forged_attribution_is_refused_quarantined_and_not_merged(
        server, provision, field) -> None:
    """Before (issue 12, observation 2): ``activity[].by``, ``assessments.*.by``,
    ``delivered_by``, ``requested_by`` and ``resolved_by`` were free text: a worker's
    device wrote another worker's user id (and a supervisor's), the server accepted it
    and the projections showed that user as the author. Reproduced here by a raw client
    on the worker's own enrolled device writing each field as another user. Now the batch
    is refused ``forged-attribution`` naming the path (no values), quarantined, and
    nothing of it merges; sent through the SDK instead, it is refused and recovered
    without the forged attribution."""
    hid, pid, (ana, _dan) = await active_household(server, provision, ("dan", {}))
    with ana.edit(hid) as h:
        sid = h.plan_service("counselling", pid, "school_absenteeism", "2026-12-20")
    await server.app[SYNCHRONIZER].server_change(
        hid, _open_conflict, author=_server_author())
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    cid = ana.household(hid).conflicts(open_only=True)[0]["conflict_id"]
    heads = sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads())

    # A raw client (the SDK's session code, not its sync client): ana's own device sends
    # the forged batch, and nothing on the device side checks or recovers it.
    forged_doc = ana.household(hid).doc.fork()
    forged_doc.set_actor(ana.actor_id)
    path = FORGERIES[field](Household(forged_doc, hid, author="dan"), {"sid": sid, "cid": cid})
    async with raw_peer(server.url, ana) as peer:
        answer = await peer.push(forged_doc, hid, strict=False)
    assert isinstance(answer, wire.Error) and answer.code == "forged-attribution", answer
    assert path in answer.message and "dan" not in answer.message
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [(k.document_id, k.code) for k in kept] == [(hid, "forged-attribution")]
    resident = server.app[SYNCHRONIZER].registry.resident(hid).doc
    assert sorted(resident.get_heads()) == heads  # nothing of the batch merged

    # The same forgery through the SDK's sync is refused too; the SDK recovers the batch,
    # re-applying what it may (a resolution's value, say) under the signer and dropping
    # the forged attribution, so nothing forged ever merges.
    FORGERIES[field](Household(ana.household(hid).doc, hid, author="dan"),
                     {"sid": sid, "cid": cid})
    ana.save(hid)
    summary = await SyncClient(ana, server.url).sync()
    assert [r.code for r in summary.rejected] == ["forged-attribution"]
    stored = Household(server.app[SYNCHRONIZER].registry.resident(hid).doc, hid).to_dict()
    del stored["team"]  # (dan is on the team: the one place his id belongs)
    assert "'dan'" not in repr(stored)


async def test_a_decision_names_the_supervisor_who_signs_it(server, provision) -> None:
    """A supervisor's tablet deciding a request through sync must name herself in
    ``decided_by``; naming another supervisor is refused like any forged attribution."""
    hid, _, (ana, sup, _other) = await active_household(
        server, provision, ("sup-cj", {"role": "supervisor", "county": "CJ"}),
        ("sup-cj2", {"role": "supervisor", "county": "CJ"}))
    with ana.edit(hid) as h:
        rid = h.request_change("close_household", {}, "the family moved away")
    await SyncClient(ana, server.url).sync()
    await SyncClient(sup, server.url).sync()
    doc = sup.household(hid).doc
    from automerge.core import ROOT, ScalarType
    request = doc.get(doc.get(ROOT, "change_requests")[1], rid)[1]
    with doc.transaction() as tx:
        tx.put(request, "status", ScalarType.Str, "rejected")
        tx.put(request, "decided_by", ScalarType.Str, "sup-cj2")
        tx.put(request, "decided_at", ScalarType.Str, utc_instant())
    sup.save(hid)
    [rejection] = (await SyncClient(sup, server.url).sync()).rejected
    assert rejection.code == "forged-attribution"
    assert f"change_requests/{rid}/decided_by" in rejection.message


async def test_a_time_beyond_the_clock_skew_is_refused(server, provision) -> None:
    """A "when" more than a day ahead of the server's clock is refused (``future-instant``
    under ``forged-attribution``); a day back, or an hour ahead, is accepted."""
    hid, _, (ana,) = await active_household(server, provision)
    now = datetime.now(UTC)
    with ana.edit(hid) as h:
        h.append_activity("visit", "yesterday's visit, recorded today", at=now - timedelta(days=1))
        h.append_activity("call", "a tablet clock an hour fast", at=now + timedelta(hours=1))
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    with ana.edit(hid) as h:
        h.append_activity("visit", "dated next week", at=now + timedelta(days=7))
    [rejection] = (await SyncClient(ana, server.url).sync()).rejected
    assert rejection.code == "forged-attribution" and "future-instant" in rejection.message


def test_the_sdk_takes_no_author_a_caller_could_get_wrong(tmp_path) -> None:
    """No edit of the household API takes a "by": a replica's households are bound to its
    enrolled user, and creating one with an author of the caller's choosing is refused."""
    from _offline import offline_replica

    for name, method in inspect.getmembers(Household, inspect.isfunction):
        if name.startswith("_") or name == "as_author":
            continue
        params = set(inspect.signature(method).parameters)
        assert not params & {"by", "created_by", "requested_by", "decided_by", "approver",
                             "delivered_by", "resolved_by", "author"}, (name, params)
    replica = offline_replica(tmp_path / "t", "ana")
    with pytest.raises(TypeError):
        replica.create_household(locality="54975", county="CJ", address="x", author="dan")
    h = replica.create_household(locality="54975", county="CJ", address="x")
    assert h.author == "ana" and h.activity()[0]["by"] == "ana"


def _server_author():
    from sync_server.store.contract import Author
    return Author("server", "ana")


async def test_a_registration_names_its_signer(server, provision) -> None:
    """The registration entry of a new household is an attribution too: a household whose
    first entry names another worker is refused, and not registered."""
    ana = await provision.tablet("ana")
    h = Household.create(locality="54975", county="CJ", address="Str. Noua 5", author="dan",
                         actor_id=ana.actor_id)
    ana.adopt(h.household_id, h.doc)
    [rejection] = (await SyncClient(ana, server.url).sync()).rejected
    assert rejection.code == "forged-attribution" and "activity/" in rejection.message
    assert await server.app[SYNCHRONIZER].registry.get(h.household_id) is None


async def test_an_activity_entry_stays_as_its_author_wrote_it(server, provision) -> None:
    """Before: the activity feed was append-only by convention only. A teammate's
    tablet that rewrote the text of ana's entry (``by`` still naming ana) or removed the
    entry was accepted, and the feed and its projection then said ana wrote what she did
    not, or lost what she did. Reproduced by a raw client on dan's own enrolled device.
    Now such a batch is refused (``forged-attribution``, rule ``activity-record``),
    quarantined and not merged; through the SDK it is refused and recovered, and the
    server keeps the entry as ana wrote it."""
    from automerge.core import ROOT, ScalarType

    hid, _, (ana, dan) = await active_household(server, provision, ("dan", {}))
    with ana.edit(hid) as h:
        h.append_activity("visit", "the child is well")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await SyncClient(dan, server.url).sync()
    heads = sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads())

    def rewrite(doc) -> None:
        feed = doc.get(ROOT, "activity")[1]
        with doc.transaction() as tx:
            tx.put(doc.get(feed, doc.length(feed) - 1)[1], "text", ScalarType.Str,
                   "the family refused the visit")

    def remove(doc) -> None:
        feed = doc.get(ROOT, "activity")[1]
        with doc.transaction() as tx:
            tx.delete(feed, doc.length(feed) - 1)

    for edit in (rewrite, remove):
        forged_doc = dan.household(hid).doc.fork()
        forged_doc.set_actor(dan.actor_id)
        edit(forged_doc)
        async with raw_peer(server.url, dan) as peer:
            answer = await peer.push(forged_doc, hid, strict=False)
        assert isinstance(answer, wire.Error) and answer.code == "forged-attribution", answer
        assert "activity-record" in answer.message, answer.message
        assert "the child" not in answer.message
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [(k.document_id, k.code) for k in kept] == [(hid, "forged-attribution")] * 2
    assert sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads()) == heads

    for edit in (rewrite, remove):
        edit(dan.household(hid).doc)
        dan.save(hid)
        summary = await SyncClient(dan, server.url).sync()
        assert [r.code for r in summary.rejected] == ["forged-attribution"], edit.__name__
        assert hid in summary.recovered, edit.__name__
        feed = Household(server.app[SYNCHRONIZER].registry.resident(hid).doc, hid).activity()
        assert [(e["by"], e["text"]) for e in feed if e["kind"] == "visit"] == \
            [("ana", "the child is well")], edit.__name__
    assert (await SyncClient(dan, server.url).sync()).rejected == []  # the tablet is clean
