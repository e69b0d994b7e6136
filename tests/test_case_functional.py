"""Case stages through the real server: moves along the rule table sync to the team, a
client bypassing the SDK is refused by rule and its batch kept, and a supervisor's
approval closes the case (real PostgreSQL, enrolled devices, sealed sessions)."""

from __future__ import annotations

import pytest
from _scenes import active_household
from automerge.core import ROOT, ScalarType

from client_sdk import SupervisorClient, SyncClient
from conflict import Household
from sync_server.app import SYNCHRONIZER

pytestmark = pytest.mark.functional


async def server_case(server, hid: str) -> dict | None:
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    return Household(actor.doc, hid).case()


async def test_a_case_moved_on_one_tablet_reaches_the_teammate_with_its_history(
        server, provision) -> None:
    hid, pid, (ana, nurse) = await active_household(server, provision, ("nurse", {}))
    with ana.edit(hid) as h:
        h.open_case(identified_at="2026-11-02T08:00:00Z")
    with ana.edit(hid) as h:
        h.record_visit(visited_on="2026-11-03", place="home", purpose="initial assessment",
                       participants=[pid, "mother"], synthesis="Met the family.",
                       next_visit="2026-11-17")
    with ana.edit(hid) as h:
        h.move_stage("detailed_assessment")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    assert (await SyncClient(nurse, server.url).sync()).rejected == []
    seen = nurse.household(hid)
    got = seen.case()
    assert got is not None and got["stage"] == "detailed_assessment"
    assert [(e["stage"], e["by"]) for e in got["history"]] == \
        [("identification", "ana"), ("detailed_assessment", "ana")]
    [visit] = seen.visits().values()
    assert (visit["next_visit"], visit["by"]) == ("2026-11-17", "ana")
    with nurse.edit(hid) as h:  # the teammate takes the next step
        h.move_stage("planning")
    assert (await SyncClient(nurse, server.url).sync()).rejected == []
    assert (await server_case(server, hid))["stage"] == "planning"


async def test_a_client_jumping_stages_is_refused_by_rule_and_its_batch_kept(
        server, provision) -> None:
    """A modified client writes ``services`` straight after ``identification`` (skipping
    detailed assessment and planning). The server refuses it ``stage-transition``, keeps
    the batch in quarantine, and its copy stays at identification."""
    hid, _, (ana,) = await active_household(server, provision)
    with ana.edit(hid) as h:
        h.open_case()
    await SyncClient(ana, server.url).sync()
    raw = Household(ana.household(hid).doc, hid, author="ana")  # no guard
    with raw.doc.transaction() as tx:
        tx.put(raw.doc.get(ROOT, "case")[1], "stage", ScalarType.Str, "services")
        raw._append_stage(tx, "services", None, "identification")
    ana.save(hid)
    [rejection] = (await SyncClient(ana, server.url).sync()).rejected
    assert rejection.code == "stage-transition"
    assert "case_history/" in rejection.message  # the move, by its entry's element id
    assert (await server_case(server, hid))["stage"] == "identification"
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [(k.document_id, k.code) for k in kept] == [(hid, "stage-transition")]


async def test_a_move_naming_another_worker_is_forged_and_closing_by_a_device_refused(
        server, provision) -> None:
    hid, _, (ana,) = await active_household(server, provision)
    with ana.edit(hid) as h:
        h.open_case()
    await SyncClient(ana, server.url).sync()
    forged = Household(ana.household(hid).doc, hid, author="somebody-else")
    forged.move_stage("detailed_assessment")  # names another user as who moved it
    ana.save(hid)
    # (the SDK rebuilds a refused household on the server's copy and re-applies its
    # edits, which are refused again: both refusals are reported)
    rejected = (await SyncClient(ana, server.url).sync()).rejected
    assert {r.code for r in rejected} == {"forged-attribution"}
    raw = Household(ana.household(hid).doc, hid, author="ana")  # no guard
    raw.move_stage("closed")
    ana.save(hid)
    closing = (await SyncClient(ana, server.url).sync()).rejected
    assert {r.code for r in closing} == {"protected-path"}
    assert (await server_case(server, hid))["stage"] == "identification"


async def test_a_supervisors_approval_closes_the_case_on_every_tablet(server, provision) -> None:
    hid, _, (ana, sup) = await active_household(
        server, provision, ("sup-cj", {"role": "supervisor", "county": "CJ"}))
    with ana.edit(hid) as h:
        h.open_case()
        for stage in ("detailed_assessment", "planning", "services", "monitoring",
                      "post_services"):
            h.move_stage(stage)
    with ana.edit(hid) as h:
        rid = h.request_change("close_household", {}, "post-service monitoring done")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    result = await SupervisorClient(sup, server.http_url).approve(hid, rid)
    assert result["changed"] is True
    await SyncClient(ana, server.url).sync()
    got = ana.household(hid).case()
    assert got is not None and got["stage"] == "closed"
    assert got["history"][-1]["stage"] == "closed"
    assert ana.household(hid).status == "closed"


async def test_a_rebuilt_household_keeps_the_cases_moves(server, provision) -> None:
    """Before: when the server refused a batch for another reason, the SDK's rebuild
    re-applied the case's new stage but not the ``case_history`` entry recording the
    move, and the server refused the rebuilt batch as well (``stage-transition``).
    Reproduced by one batch that moves the case and, bypassing the guard, changes a
    member's presence (``protected-path``). Now the entry is re-appended with the stage,
    and only the presence is re-filed as a request."""
    hid, pid, (ana,) = await active_household(server, provision)
    with ana.edit(hid) as h:
        h.open_case()
    await SyncClient(ana, server.url).sync()
    with ana.edit(hid) as h:
        h.move_stage("detailed_assessment")
    Household(ana.household(hid).doc, hid).set_member_field(pid, "presence", "moved")
    ana.save(hid)
    summary = await SyncClient(ana, server.url).sync()
    assert [r.code for r in summary.rejected] == ["protected-path"]
    recovery = summary.recovered[hid]
    assert recovery.uploaded and recovery.refiled == [f"members.{pid}.presence"]
    got = await server_case(server, hid)
    assert got["stage"] == "detailed_assessment"
    assert [(e["stage"], e.get("from")) for e in got["history"]] == \
        [("identification", None), ("detailed_assessment", "identification")]


async def test_teammates_moving_the_case_apart_offline_get_a_recorded_conflict(
        server, provision) -> None:
    """From monitoring, the nurse re-plans while the social worker starts post-service
    monitoring, both offline. Each move is legal from the stage its writer left, so both
    batches are accepted and both moves kept; the stage the server accepted first stands
    (whichever value wins Automerge's tie-break), and the stage both wrote is recorded as
    a same-field conflict naming both values, for the team to resolve."""
    hid, _, (ana, nurse) = await active_household(server, provision, ("nurse", {}))
    with ana.edit(hid) as h:
        h.open_case()
        for stage in ("detailed_assessment", "planning", "services", "monitoring"):
            h.move_stage(stage)
    await SyncClient(ana, server.url).sync()
    await SyncClient(nurse, server.url).sync()
    with nurse.edit(hid) as h:
        h.move_stage("planning")
    with ana.edit(hid) as h:
        h.move_stage("post_services")
    assert (await SyncClient(nurse, server.url).sync()).rejected == []
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    recorded = Household(actor.doc, hid).conflicts(open_only=True)
    assert [(c["path"], sorted(c["values"])) for c in recorded] == \
        [(["case", "stage"], ["planning", "post_services"])]
    assert len(Household(actor.doc, hid).case()["history"]) == 7  # both moves kept
    # the stage the server accepted first (the nurse's) stands against the later move
    assert Household(actor.doc, hid).case()["stage"] == "planning"


async def test_a_move_concurrent_with_the_closing_leaves_the_case_closed(
        server, provision) -> None:
    """Found in review: a worker offline moves the case on while the supervisor approves
    its closing. The move is legal from where the worker stood, so it is accepted; but if
    it won Automerge's tie-break, the closed household showed an open stage. The server
    now writes ``closed`` back, and the conflict record keeps the worker's value."""
    hid, _, (ana, sup) = await active_household(
        server, provision, ("sup-cj", {"role": "supervisor", "county": "CJ"}))
    with ana.edit(hid) as h:
        h.open_case()
        for stage in ("detailed_assessment", "planning", "services", "monitoring"):
            h.move_stage(stage)
        rid = h.request_change("close_household", {}, "the family moved away")
    await SyncClient(ana, server.url).sync()
    await SupervisorClient(sup, server.http_url).approve(hid, rid)
    with ana.edit(hid) as h:  # offline: has not seen the approval
        h.append_notes("notes from the last visit " * 8)  # (its counter passes the server's,
        h.move_stage("post_services")                      # so the move wins the tie-break)
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    seen = await server_case(server, hid)
    assert seen["stage"] == "closed"
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert "stage-restored" in [e["kind"] for e in Household(actor.doc, hid).activity()]
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    recorded = Household(actor.doc, hid).conflicts(open_only=True)
    assert [(c["path"], sorted(c["values"])) for c in recorded] == \
        [(["case", "stage"], ["closed", "post_services"])]
