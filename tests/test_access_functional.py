"""Who may sync what: teams, counties, read-only national users, actor binding, creation
rights, the caseload, and revocation. Every attack has its own test."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from _scenes import forge_write, joined
from automerge.core import ROOT, ScalarType

from client_sdk import ServerRejected, SyncClient
from client_sdk._transport import ClientChannel
from sync_server.app import ENGINE as ENGINE_KEY
from sync_server.app import IDENTITY, SYNCHRONIZER
from sync_server.protocol import wire
from sync_server.protocol.session import open_session

pytestmark = pytest.mark.functional


def register(replica, locality: str = "54975", county: str = "CJ") -> str:
    return replica.create_household(locality=locality, county=county, address="Str. Lunga 3").household_id


async def fetch(server, replica, hid: str):
    replica.track(hid)
    return await SyncClient(replica, server.url).sync([hid])


async def test_another_teams_household_is_unavailable(server, provision) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    mallory = await provision.tablet("mallory")  # a worker of the same county, other team
    summary = await fetch(server, mallory, hid)
    assert summary.unavailable == [hid]
    assert not mallory.has_local_copy(hid)


async def test_another_countys_supervisor_gets_nothing_and_the_own_county_reads(
        server, provision) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    other = await provision.tablet("sup-bv", role="supervisor", county="BV")
    assert (await fetch(server, other, hid)).unavailable == [hid]
    own = await provision.tablet("sup-cj", role="supervisor", county="CJ")
    assert (await fetch(server, own, hid)).households_synced == 1
    assert own.household(hid).to_dict()["address"] == "Str. Lunga 3"


async def test_national_users_read_but_cannot_write(server, provision) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    nat = await provision.tablet("nat", role="national")
    await fetch(server, nat, hid)
    with nat.edit(hid) as h:
        h.set_address("changed by a read-only user")
    summary = await SyncClient(nat, server.url).sync()
    assert [r.code for r in summary.rejected] == ["read-only"]
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert actor.doc.get(ROOT, "address")[0][1] == "Str. Lunga 3"


async def test_a_forged_actor_id_is_refused_and_nothing_merges(server, provision) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    await forge_write(provision, ana, hid, "written under a forged actor")
    summary = await SyncClient(ana, server.url).sync()
    assert [r.code for r in summary.rejected] == ["actor-not-registered"]
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert actor.doc.get(ROOT, "address")[0][1] == "Str. Lunga 3"


async def test_registering_outside_ones_localities_is_refused(server, provision) -> None:
    ana = await provision.tablet("ana")  # assigned 54975 in CJ
    hid = register(ana, locality="55000")
    summary = await SyncClient(ana, server.url).sync()
    assert [r.code for r in summary.rejected] == ["creation-refused"]
    assert await server.app[SYNCHRONIZER].registry.get(hid) is None


async def test_the_caseload_follows_the_team(server, provision, tmp_path) -> None:
    """A new tablet of a team member gets the whole caseload on its first sync; adding a
    user to a team delivers the household next sync; removing them deletes it there."""
    ana = await provision.tablet("ana")
    hids = [register(ana) for _ in range(3)]
    await SyncClient(ana, server.url).sync()
    second_tablet = await provision.tablet("ana-2", "ana")
    summary = await SyncClient(second_tablet, server.url).sync()
    assert sorted(second_tablet.household_ids()) == sorted(hids)
    assert summary.households_synced == 3

    ioana = await provision.tablet("ioana")
    assert (await SyncClient(ioana, server.url).sync()).households_synced == 0
    await provision.share(hids[0], ana, ioana)
    await SyncClient(ioana, server.url).sync()
    assert ioana.household_ids() == [hids[0]] and ioana.has_local_copy(hids[0])

    await provision.share(hids[0], ana)  # ioana leaves the team
    summary = await SyncClient(ioana, server.url).sync()
    assert summary.removed == [hids[0]]
    assert ioana.household_ids() == [] and not ioana.has_local_copy(hids[0])


async def test_revocation_cuts_the_live_session_and_wipes_the_tablet(server, provision) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    creds = ana.credentials
    async with joined(server, ana) as channel:
        assert await server.app[IDENTITY].revoke_device(creds.device_id)
        # NOTIFY reaches the server at commit; the session is cut right away (the bound
        # here is generous only because this machine is shared).
        frame = await asyncio.wait_for(channel.receive(), timeout=5)
        err = wire.decode(frame)
        assert isinstance(err, wire.Error) and err.code == "device-revoked"
        assert await asyncio.wait_for(channel.receive(), timeout=5) is None

    with pytest.raises(ServerRejected) as info:  # reconnecting is refused...
        await SyncClient(ana, server.url).sync()
    assert info.value.code == "device-revoked"
    assert ana.household_ids() == [] and not ana.has_local_copy(hid)  # ...and it wiped itself
    assert ana.credentials is None


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    from sync_server.gateway.dispatch import TokenBucket

    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0  # two more tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]


async def live_session(server, replica):
    """An open session of ``replica``'s device that has joined; returns (ws ctx, channel)."""
    creds = replica.credentials
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(server.url)
    channel = await open_session(ClientChannel(ws), creds.device_id, creds.signing_key,
                                 creds.server_key)
    return session, ws, channel


async def test_a_flooding_session_is_closed_and_others_go_on(server, tmp_path) -> None:
    import dataclasses

    from sync_server.app import VatraServer
    from vatra_devtools.provision import Provisioner

    strict = dataclasses.replace(server.settings, port=0, message_burst=5,
                                 messages_per_second=0.01)
    async with VatraServer(strict) as small:
        p = Provisioner(small.app[IDENTITY], small.http_url)
        flood = await p.tablet(tmp_path / "flood", "flood")
        calm = await p.tablet(tmp_path / "calm", "calm")
        session, ws, channel = await live_session(small, flood)
        try:
            await channel.send(wire.encode(wire.Join("flood")))
            for _ in range(10):  # accepted and ignored, but each one counts
                await channel.send(wire.encode(wire.Ephemeral("flood", "x", b"")))
            messages = []
            while (frame := await asyncio.wait_for(channel.receive(), timeout=5)) is not None:
                messages.append(wire.decode(frame))
            assert any(isinstance(m, wire.Error) and m.code == "rate-limited" for m in messages)
        finally:
            await ws.close()
            await session.close()
        register(calm)
        assert (await SyncClient(calm, small.url).sync()).households_synced == 1


async def test_concurrent_sessions_per_device_are_limited(server, tmp_path) -> None:
    import dataclasses

    from sync_server.app import VatraServer
    from vatra_devtools.provision import Provisioner

    async with VatraServer(dataclasses.replace(server.settings, port=0,
                                               sessions_per_device=1)) as small:
        p = Provisioner(small.app[IDENTITY], small.http_url)
        ana = await p.tablet(tmp_path / "ana", "ana")
        session, ws, channel = await live_session(small, ana)
        try:
            await channel.send(wire.encode(wire.Join("first")))
            assert isinstance(wire.decode(await channel.receive()), wire.Peer)
            with pytest.raises(ServerRejected) as info:
                await SyncClient(ana, small.url).sync()
            assert info.value.code == "too-many-sessions"
        finally:
            await ws.close()
            await session.close()


async def test_refused_data_is_quarantined_sealed_and_can_be_reviewed(server, provision,
                                                                      engine) -> None:
    """Nothing is lost: each refused batch is kept (sealed) with the device and the rule."""
    import sqlalchemy as sa
    from automerge.core import Message

    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    await forge_write(provision, ana, hid, "Zamfirescu forged")
    await SyncClient(ana, server.url).sync()
    elsewhere = register(ana, locality="55000")  # outside ana's localities: no such household
    await SyncClient(ana, server.url).sync()

    q = server.app[SYNCHRONIZER].quarantine
    kept = await q.list()
    assert {(k.document_id, k.code) for k in kept} >= {(hid, "actor-not-registered"),
                                                       (elsewhere, "creation-refused")}
    assert all(k.device_id == ana.credentials.device_id and k.user_id == "ana" for k in kept)
    async with engine.connect() as conn:
        bodies = (await conn.execute(sa.text("SELECT body FROM quarantine"))).scalars().all()
    assert bodies and all(b"Zamfirescu" not in bytes(b) for b in bodies)
    forged = next(k for k in kept if k.code == "actor-not-registered")
    Message.decode(await q.open(forged.id))  # the raw sync message, intact, for review
    orphan = next(k for k in kept if k.code == "creation-refused")
    assert orphan.household_id is None
    Message.decode(await q.open(orphan.id))


@pytest.mark.parametrize(("field", "stype", "value", "rule"), [
    ("status", ScalarType.Str, "demolished", "enum"),          # not in the enumeration
    ("locality", ScalarType.Int, 54975, "type"),                # a number where a code is
    ("schema", ScalarType.Int, 2, "schema-version"),
    ("county", ScalarType.Str, "cluj", "format"),               # not a county code
    # an unknown key is client-chosen (it could be a name): the error masks it as "*"
    ("favourite_colour", ScalarType.Str, "blue", "unknown-field"),
])
async def test_a_batch_that_breaks_the_schema_is_refused_with_its_path(
        server, provision, field, stype, value, rule) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    with ana.edit(hid) as h, h.doc.transaction() as tx:  # bypassing the typed API
        tx.put(ROOT, field, stype, value)
    summary = await SyncClient(ana, server.url).sync()
    [rejection] = summary.rejected
    assert rejection.code == "schema-violation"
    shown = "*" if rule == "unknown-field" else field
    assert f"{shown}: {rule}" in rejection.message
    actor = await server.app[SYNCHRONIZER].registry.get(hid)
    assert actor.doc.get(ROOT, "status")[0][1] == "registration"
    kept = await server.app[SYNCHRONIZER].quarantine.list()
    assert [(k.document_id, k.code) for k in kept] == [(hid, "schema-violation")]


async def test_vatra_quarantine_list_and_show(server, provision, database_url) -> None:
    import os
    import subprocess
    import sys

    from conftest import TEST_MASTER_KEY

    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    await forge_write(provision, ana, hid, "Zamfirescu forged")
    await SyncClient(ana, server.url).sync()
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY}

    def vatra(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sync_server.cli", "quarantine", *args],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    listing = await asyncio.to_thread(vatra, "list")  # the server runs on this loop
    assert listing.returncode == 0, listing.stderr
    assert hid in listing.stdout and "rule=actor-not-registered" in listing.stdout
    row_id = listing.stdout.split()[0]
    shown = await asyncio.to_thread(vatra, "show", row_id)
    assert shown.returncode == 0, shown.stderr
    assert "NOT this device's actor" in shown.stdout and "1 change(s)" in shown.stdout
    assert "Zamfirescu" not in shown.stdout + listing.stdout
    assert (await asyncio.to_thread(vatra, "show", "999999")).returncode == 1


async def test_the_server_writes_its_own_changes_through_the_pipeline(server, provision) -> None:
    """A server change (as used for approvals) is validated, stored with its author,
    audited, and reaches the team's tablets by sync."""
    from sync_server.store.contract import Author

    ana = await provision.tablet("ana")
    hid = register(ana)
    await SyncClient(ana, server.url).sync()
    sync = server.app[SYNCHRONIZER]
    await sync.server_change(hid, lambda h: h.append_activity("approval", "ok"),
                             author=Author("server", "sup-cj"))
    await SyncClient(ana, server.url).sync()
    assert [e["kind"] for e in ana.household(hid).activity()][-1] == "approval"
    import sqlalchemy as sa

    from sync_server.store.audit import audit

    async with server.app[ENGINE_KEY].connect() as conn:
        authors = (await conn.execute(sa.select(audit.c.user_id, audit.c.device_id).where(
            audit.c.chain == hid, audit.c.kind == "changes-accepted"))).all()
    assert ("sup-cj", "server") in authors
    assert await sync.store.audit.verify() == []
    with pytest.raises(LookupError):
        await sync.server_change("2fiH6LVoDnXEUsYNHowu3UTBwJqk", lambda h: None,
                                 author=Author("server", "sup-cj"))



@pytest.mark.parametrize("breakage", ["missing", "reference"])
async def test_missing_fields_and_dangling_references_are_refused_with_their_path(
        server, provision, breakage) -> None:
    ana = await provision.tablet("ana")
    hid = register(ana)
    with ana.edit(hid) as h:
        pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        sid = h.plan_service("counselling", pid, "school_absenteeism", "2026-12-20")
    await SyncClient(ana, server.url).sync()
    doc = ana.household(hid).doc
    with doc.transaction() as tx:  # bypassing the typed API
        if breakage == "missing":
            tx.delete(doc.get(doc.get(ROOT, "members")[1], pid)[1], "last_name")
            expected = f"members/{pid}/last_name: missing"
        else:
            service = doc.get(doc.get(ROOT, "service_plan")[1], sid)[1]
            tx.put(service, "person_id", ScalarType.Str, "00000000-0000-4000-8000-000000000001")
            expected = f"service_plan/{sid}/person_id: reference"
    ana.save(hid)
    [rejection] = (await SyncClient(ana, server.url).sync()).rejected
    assert rejection.code == "schema-violation" and expected in rejection.message
