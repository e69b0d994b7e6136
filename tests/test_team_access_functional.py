"""Team is access (issue 12, deliverable 5): who may sync a household is its document's
team (after approved changes) plus its county's supervisors; a team change reaches live
sessions within a second; only workers of the household's locality can be on it (a
real server, enrolled tablets, the supervisors' HTTP API)."""

from __future__ import annotations

import pytest
from _rawpeer import raw_peer
from _scenes import active_household, until
from automerge.core import Document

from client_sdk import SupervisorClient, SyncClient
from conflict import Household, InvalidValueError
from sync_server.app import SYNCHRONIZER
from sync_server.protocol import wire

pytestmark = pytest.mark.functional



async def test_an_approved_team_change_gives_and_takes_access(server, provision) -> None:
    """Before (issue 12, observation 5): an approved ``change_team`` request changed the
    document's team but not who may sync: the new nurse still got ``doc-unavailable``.
    Reproduced with a request replacing the nurse, approved over the supervisors' API.
    Now the new nurse's session, open before the approval, gets the household within a
    second of it; the removed nurse's live session stops receiving it, and her tablet
    drops it at its next sync."""
    hid, _, (ana, old_nurse, sup) = await active_household(
        server, provision, ("nurse-old", {}), ("sup-cj", {"role": "supervisor", "county": "CJ"}))
    new_nurse = await provision.tablet("nurse-new")
    sync = server.app[SYNCHRONIZER]

    async with raw_peer(server.url, new_nurse, peer_id="new-nurse") as peer:
        answer = await peer.push(Document(), hid, kind=wire.Request, strict=False)
        assert isinstance(answer, wire.DocUnavailable)  # not on the team (yet)

        with ana.edit(hid) as h:
            rid = h.request_change("change_team", {"nurse": "nurse-new"}, "nurse changed")
        assert (await SyncClient(ana, server.url).sync()).rejected == []
        assert (await SupervisorClient(sup, server.http_url).approve(hid, rid))["changed"]

        async def new_nurse_may_sync() -> bool:
            reply = await peer.push(Document(), hid, kind=wire.Request, strict=False)
            return isinstance(reply, wire.Sync)
        await until(new_nurse_may_sync, "the new nurse's live session gets the household")

    summary = await SyncClient(new_nurse, server.url).sync()  # the caseload lists it
    assert hid in new_nurse.household_ids() and summary.rejected == []
    assert new_nurse.household(hid).to_dict()["team"]["nurse"] == "nurse-new"
    gone = await SyncClient(old_nurse, server.url).sync()
    assert hid in gone.removed and hid not in old_nurse.household_ids()
    assert sorted(await server.app[SYNCHRONIZER].identity.team(hid)) == ["ana", "nurse-new"]
    assert sync.registry.resident(hid) is not None


async def test_a_removed_members_live_session_stops_receiving_the_household(
        server, provision) -> None:
    hid, _, (ana, nurse, sup) = await active_household(
        server, provision, ("nurse", {}), ("sup-cj", {"role": "supervisor", "county": "CJ"}))
    sync = server.app[SYNCHRONIZER]
    async with raw_peer(server.url, nurse, peer_id="nurse-live") as peer:
        await peer.push(nurse.household(hid).doc.fork(), hid)
        actor = sync.registry.resident(hid)
        assert any(p.peer_id == "nurse-live" for p in actor.subscribers)
        with ana.edit(hid) as h:
            rid = h.request_change("change_team", {"nurse": None}, "the nurse left")
        await SyncClient(ana, server.url).sync()
        await SupervisorClient(sup, server.http_url).approve(hid, rid)

        async def unsubscribed() -> bool:
            return not any(p.peer_id == "nurse-live" for p in actor.subscribers)
        await until(unsubscribed, "the removed nurse's session is unsubscribed")


async def test_a_team_names_workers_of_the_households_locality_only(server, provision) -> None:
    """Before (issue 12, observation 5): a household's creator could give sync access to
    any existing user, another county's worker included, by naming them in ``team``.
    Reproduced at registration, by setting the team while registering, and by filing a
    ``change_team`` request. Each is now refused ``invalid-team-member`` (quarantined),
    and so is a household whose team leaves out the worker who registers it."""
    ana = await provision.tablet("ana")
    await provision.tablet("sw-bv", localities=[("40198", "BV")], county="BV")
    await provision.tablet("sup-cj", role="supervisor", county="CJ")

    def codes(summary) -> list[str]:
        return [r.code for r in summary.rejected]

    outsider = ana.create_household(locality="54975", county="CJ", address="Str. Noua 1",
                                    team={"social_worker": "ana", "nurse": "sw-bv"})
    assert codes(await SyncClient(ana, server.url).sync([outsider.household_id])) == [
        "invalid-team-member"]
    assert await server.app[SYNCHRONIZER].registry.get(outsider.household_id) is None

    with pytest.raises(InvalidValueError) as refused:  # the SDK says so before writing it
        ana.create_household(locality="54975", county="CJ", address="Str. Noua 2",
                             team={"social_worker": "sup-cj"})
    assert (refused.value.path, refused.value.rule) == (("team",), "registrar")
    not_mine = Household.create(locality="54975", county="CJ", address="Str. Noua 2",
                                author="ana", actor_id=ana.actor_id,
                                team={"social_worker": "sup-cj"})
    async with raw_peer(server.url, ana) as peer:  # and the server refuses it
        refusal = await peer.push(not_mine.doc, not_mine.household_id, strict=False)
    assert isinstance(refusal, wire.Error) and refusal.code == "invalid-team-member"
    assert "registers" in refusal.message

    hid = ana.create_household(locality="54975", county="CJ", address="Str. Noua 3").household_id
    assert (await SyncClient(ana, server.url).sync([hid])).rejected == []
    with ana.edit(hid) as h:  # still registering: the team is not protected yet
        h.set_team(nurse="sw-bv")
    assert codes(await SyncClient(ana, server.url).sync([hid])) == ["invalid-team-member"]
    assert await server.app[SYNCHRONIZER].identity.team(hid) == ["ana"]

    # Filed with the registration itself (before, a creation's requests went unchecked).
    filed = ana.create_household(locality="54975", county="CJ", address="Str. Noua 4")
    with ana.edit(filed.household_id) as h:
        h.request_change("change_team", {"counsellor": "sw-bv"}, "help from Brasov")
    assert codes(await SyncClient(ana, server.url).sync([filed.household_id])) == [
        "invalid-team-member"]

    hid2, _, (ana2,) = await active_household(server, provision, tablet_prefix="b-")
    with ana2.edit(hid2) as h:
        h.request_change("change_team", {"counsellor": "sw-bv"}, "help from Brasov")
    [refusal] = (await SyncClient(ana2, server.url).sync([hid2])).rejected
    assert refusal.code == "invalid-team-member" and "change_requests/" in refusal.message
    assert "sw-bv" not in refusal.message  # a user id may be a name


async def test_a_registration_cannot_carry_its_own_approval(server, provision) -> None:
    """Before (found in review of issue 12): a registration batch skipped the decision
    check, so a worker could register a household with a ``change_team`` request filed
    already approved, ``decided_by`` herself. Reproduced by a raw client on her own
    device. Now the registration is refused ``decision-field`` and nothing is stored."""
    ana = await provision.tablet("ana")
    await provision.tablet("ion")
    h = Household.create(locality="54975", county="CJ", address="Str. Noua 5", author="ana",
                         actor_id=ana.actor_id)
    rid = h.request_change("change_team", {"nurse": "ion"}, "to help")
    h.apply_request(rid, as_server=True)  # what only the server may write
    async with raw_peer(server.url, ana) as peer:
        answer = await peer.push(h.doc, h.household_id, strict=False)
    assert isinstance(answer, wire.Error) and answer.code == "decision-field", answer
    assert await server.app[SYNCHRONIZER].registry.get(h.household_id) is None
