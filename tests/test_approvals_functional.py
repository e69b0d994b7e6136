"""Change requests end to end: filed offline, decided by the county's supervisor over the
signed HTTP API, applied by the server, delivered to every team tablet."""

from __future__ import annotations

import aiohttp
import pytest

from client_sdk import ServerRejected, SupervisorClient, SyncClient
from conflict import Household
from sync_server.app import PROJECTOR, SYNCHRONIZER
from sync_server.protocol.http_auth import sign

pytestmark = pytest.mark.functional


async def team_with_request(server, provision, kind="change_presence"):
    ana = await provision.tablet("ana")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    hid = h.household_id
    with ana.edit(hid) as e:
        pid = e.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        e.set_status("active")
    nurse = await provision.tablet("nurse")
    sup = await provision.tablet("sup-cj", role="supervisor", county="CJ")
    await SyncClient(ana, server.url).sync()
    await provision.share(hid, ana, nurse)
    nurse.track(hid)
    await SyncClient(nurse, server.url).sync()
    with ana.edit(hid) as e:  # offline
        payload = {"person_id": pid, "presence": "moved"} if kind == "change_presence" else {}
        rid = e.request_change(kind, payload, "moved to her grandmother")
    await SyncClient(ana, server.url).sync()
    return hid, pid, rid, ana, nurse, sup


async def test_approval_reaches_every_team_tablet_and_applies_once(server, provision) -> None:
    hid, pid, rid, ana, nurse, sup = await team_with_request(server, provision)
    client = SupervisorClient(sup, server.http_url)
    await server.app[PROJECTOR].drain_all()  # the list is read from the projection
    pending = await client.requests()
    assert [(r["household_id"], r["request_id"], r["kind"]) for r in pending] == \
        [(hid, rid, "change_presence")]
    assert "Pop" not in str(pending) and "grandmother" not in str(pending)  # no content
    first = await client.approve(hid, rid, note="ok")
    assert first["changed"] is True
    again = await client.approve(hid, rid)
    assert again["changed"] is False  # approving twice applies once
    for tablet in (ana, nurse):
        await SyncClient(tablet, server.url).sync()
        h = tablet.household(hid)
        assert h.members()[pid]["presence"] == "moved"
        [req] = h.change_requests()
        assert (req["status"], req["decided_by"], req["decision_note"]) == \
            ("approved", "sup-cj", "ok")
        assert h.activity()[-1]["text"].endswith("approved by sup-cj")
    await server.app[PROJECTOR].drain_all()
    assert await client.requests() == []


async def test_rejection_changes_only_the_request(server, provision) -> None:
    hid, pid, rid, _ana, nurse, sup = await team_with_request(server, provision)
    result = await SupervisorClient(sup, server.http_url).reject(hid, rid, note="not now")
    assert result["decision"] == "rejected" and result["changed"] is True
    await SyncClient(nurse, server.url).sync()
    h = nurse.household(hid)
    assert h.members()[pid]["presence"] == "present"
    assert h.change_requests()[0]["status"] == "rejected"
    with pytest.raises(ServerRejected) as info:  # a rejected request cannot be approved
        await SupervisorClient(sup, server.http_url).approve(hid, rid)
    assert info.value.code == "decided"


async def test_a_request_about_a_removed_member_is_refused_as_missing(server, provision) -> None:
    """Approving a request whose member was removed meanwhile names that rule (409), not
    "no such change request" (the request exists)."""
    hid, pid, presence, ana, _nurse, sup = await team_with_request(server, provision)
    with ana.edit(hid) as e:
        removal = e.request_change("remove_member", {"person_id": pid}, "duplicate")
    await SyncClient(ana, server.url).sync()
    client = SupervisorClient(sup, server.http_url)
    assert (await client.approve(hid, removal))["changed"] is True
    with pytest.raises(ServerRejected) as info:
        await client.approve(hid, presence)
    assert info.value.code == "missing" and pid in str(info.value)


async def test_other_counties_workers_and_strangers_are_refused(server, provision) -> None:
    hid, _pid, rid, ana, _nurse, sup = await team_with_request(server, provision)
    bv = await provision.tablet("sup-bv", role="supervisor", county="BV")
    with pytest.raises(ServerRejected) as info:
        await SupervisorClient(bv, server.http_url).approve(hid, rid)
    assert info.value.code == "not-found"  # same answer as a household that does not exist
    await server.app[PROJECTOR].drain_all()
    assert [r["request_id"] for r in await SupervisorClient(sup, server.http_url).requests()] \
        == [rid]
    assert await SupervisorClient(bv, server.http_url).requests() == []  # another county's
    creds = sup.credentials
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.http_url}/v1/requests?status=bogus", headers={"Authorization": sign(
                creds.device_id, creds.signing_key, "GET", "/v1/requests?status=bogus")}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "status-enum"
    with pytest.raises(ServerRejected) as info:
        await SupervisorClient(ana, server.http_url).approve(hid, rid)
    assert info.value.code == "forbidden"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.http_url}/v1/requests") as resp:
            assert resp.status == 401
        creds = sup.credentials
        header = sign(creds.device_id, creds.signing_key, "GET", "/v1/requests")
        async with session.get(f"{server.http_url}/v1/requests",
                               headers={"Authorization": header}) as resp:
            assert resp.status == 200
        async with session.get(f"{server.http_url}/v1/requests",
                               headers={"Authorization": header}) as resp:
            assert resp.status == 401 and "replayed" in (await resp.json())["message"]
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert Household(actor.doc, hid).change_requests()[0]["status"] == "pending"


async def test_the_openapi_document_lists_the_api(server) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.http_url}/v1/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/requests", "/v1/enroll",
            "/v1/households/{household_id}/requests/{request_id}/{decision}"} <= set(doc["paths"])
