"""The reconnect fast path (docs/protocol.md, "Reconnect fast path"), against a real
server: a tablet returning with nothing new costs one round trip after the session and
a few hundred bytes whatever its histories; only households that differ are synced, the
server speaking first; what a device holds as the server does is pushed to it when it
changes; and the extension's rules are enforced."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from automerge.core import Message, SyncState

from client_sdk import Replica, SyncClient
from client_sdk._transport import ClientChannel
from sync_server.app import PROJECTOR, SYNCHRONIZER
from sync_server.protocol import fastpath, wire
from sync_server.protocol.session import SecureChannel, open_session
from sync_server.store.database import alembic_config
from sync_server.store.tables import households

pytestmark = pytest.mark.functional


def register(replica: Replica, n: int) -> list[str]:
    """``n`` households registered offline on ``replica`` (its user is on each team)."""
    hids = []
    for i in range(n):
        h = replica.create_household(locality="54975", county="CJ", address=f"Str. Lunga {i}")
        with replica.edit(h.household_id) as e:
            e.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        hids.append(h.household_id)
    return hids


def sync_messages(server) -> int:
    """Sync messages this server received and sent so far (its Prometheus counters)."""
    from sync_server.gateway.connection import MESSAGES_OUT
    from sync_server.gateway.dispatch import MESSAGES_IN
    return int(sum(c.labels(t)._value.get() for c in (MESSAGES_IN, MESSAGES_OUT)
                   for t in ("sync", "request")))


async def test_a_tablet_with_nothing_new_is_answered_in_one_frame(server, provision) -> None:
    """Twelve households synced, then a reconnect with nothing new on either side: the
    server answers with one bitmap, no household is synced, and the whole exchange after
    the handshake is a few hundred bytes (a plain sync exchanges about 400 bytes per
    household, and more as histories grow)."""
    ana = await provision.tablet("ana")
    register(ana, 12)
    first = await SyncClient(ana, server.url).sync()
    assert first.households_synced == 12 and not first.rejected

    before = sync_messages(server)
    again = await SyncClient(ana, server.url).sync()
    assert again.households_unchanged == again.households_synced == 12
    assert again.changes_sent == again.changes_received == 0
    assert sync_messages(server) == before  # not one sync message either way
    assert again.bytes_sent + again.bytes_received < 1000, again  # 16 B a household

    plain = await SyncClient(ana, server.url, fast_path=False).sync()
    assert plain.households_synced == 12 and plain.households_unchanged == 0
    assert plain.bytes_sent + plain.bytes_received > 5 * (again.bytes_sent
                                                           + again.bytes_received)


@contextlib.asynccontextmanager
async def fast_session(server, replica: Replica, heads: wire.Heads | None,
                       offer: object = fastpath.VERSION) -> AsyncIterator[SecureChannel]:
    """A session whose handshake's last flight carries ``join`` (offering the fast path)
    and ``heads``; nothing else is sent before the caller reads."""
    creds = replica.credentials
    early = [wire.encode(wire.Join(replica.peer_id, metadata={"vatraHeads": offer}))]
    if heads is not None:
        early.append(wire.encode(heads))
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        yield await open_session(ClientChannel(ws), creds.device_id, creds.signing_key,
                                 creds.server_key, early=early)


def offer_of(replica: Replica, hids: list[str]) -> wire.Heads:
    return wire.Heads(replica.peer_id, b"".join(
        fastpath.heads_tag(h, replica.document(h).get_heads()) for h in hids))


async def next_message(channel: SecureChannel) -> wire.Message:
    frame = await asyncio.wait_for(channel.receive(), 10)
    assert frame is not None, "the server closed the connection"
    return wire.decode(frame)


async def test_the_answer_needs_no_frame_after_the_handshake(server, provision) -> None:
    """Round trips, counted: the device sends hello, then auth with join and vatra-heads
    sealed behind it in one flight, and nothing more; ready, peer and the reply all
    arrive. So a return with nothing new costs the handshake's two round trips, the
    second of which also answers the fast path."""
    ana = await provision.tablet("ana")
    hids = register(ana, 3)
    await SyncClient(ana, server.url).sync()
    async with fast_session(server, ana, offer_of(ana, hids)) as channel:
        peer = await next_message(channel)
        assert isinstance(peer, wire.Peer) and peer.metadata["vatraHeads"] == 1
        reply = await next_message(channel)
        assert isinstance(reply, wire.HeadsReply), reply
        assert fastpath.bits(reply.same, 3) == [True, True, True]
        assert reply.differ == () and reply.erased == ()


async def test_only_households_that_differ_are_synced(server, provision) -> None:
    """Of six households: one a teammate edited, one edited offline here, one new in the
    caseload, one taken off this worker's team, one erased, one unchanged. The reply
    sorts them; the server opens the ones that differ; the tablet ends where a full sync
    would have left it."""
    ana, ion = await provision.tablet("ana"), await provision.tablet("ion")
    edited_there, edited_here, removed, erased, unchanged = register(ana, 5)
    await SyncClient(ana, server.url).sync()
    for hid in (edited_there, removed, erased):
        await provision.share(hid, ana, ion)
    await SyncClient(ana, server.url).sync()
    new = register(ion, 1)[0]
    await SyncClient(ion, server.url).sync()
    await provision.share(new, ion, ana)
    ion.track(edited_there)
    await SyncClient(ion, server.url).sync()
    with ion.edit(edited_there) as e:
        e.append_activity("visit", "by ion")
    await SyncClient(ion, server.url).sync()
    with ana.edit(edited_here) as e:
        e.append_activity("visit", "offline by ana")
    await provision.share(removed, ion)
    synchronizer = server.app[SYNCHRONIZER]
    await synchronizer.store.erase_household(erased, by="test")

    seen: list[str] = []
    summary = await SyncClient(ana, server.url,
                               on_remote_change=lambda h, n: seen.append(h)).sync()
    assert not summary.rejected
    assert summary.households_unchanged == 1  # unchanged
    assert summary.removed == [removed] and set(summary.erased) == {erased}
    assert sorted(ana.household_ids()) == sorted([edited_there, edited_here, new, unchanged])
    assert "by ion" in [a["text"] for a in ana.household(edited_there).to_dict()["activity"]]
    assert ana.household(new).to_dict()["address"] == "Str. Lunga 0"
    assert seen == [edited_there]
    for hid in (edited_there, edited_here, new, unchanged):  # as the server holds them
        server_doc = (await synchronizer.registry.get(hid)).doc
        assert sorted(server_doc.get_heads()) == sorted(ana.document(hid).get_heads()), hid
        assert ana.is_saved(hid)
    assert (await SyncClient(ana, server.url).sync()).households_unchanged == 4


async def test_a_household_found_the_same_is_pushed_when_a_teammate_changes_it(
        server, provision) -> None:
    """The fast path does not load what is the same, but it follows it: a teammate's edit
    reaches the live session, the server speaking first from a fresh sync state."""
    ana, ion, hid = await shared(server, provision)

    async with fast_session(server, ana, offer_of(ana, [hid])) as channel:
        assert isinstance(await next_message(channel), wire.Peer)
        reply = await next_message(channel)
        assert isinstance(reply, wire.HeadsReply) and fastpath.bits(reply.same, 1) == [True]
        with ion.edit(hid) as e:
            e.append_activity("visit", "live by ion")
        assert not (await SyncClient(ion, server.url).sync()).rejected
        doc, state = ana.document(hid), SyncState()
        want = sorted(ion.document(hid).get_heads())
        while sorted(doc.get_heads()) != want:
            msg = await next_message(channel)
            assert isinstance(msg, wire.Sync) and msg.document_id == hid, msg
            doc.receive_sync_message(state, Message.decode(msg.data))
            answer = doc.generate_sync_message(state)
            if answer is not None:
                await channel.send(wire.encode(wire.Sync(ana.peer_id, msg.sender_id, hid,
                                                         answer.encode())))


@pytest.mark.parametrize(("case", "frames", "code"), [
    ("vatra-heads without the offer", "plain-join", "handshake-required"),
    ("the offer, then no vatra-heads", "no-heads", "handshake-required"),
    ("tags that are not 16 bytes each", "short-tag", "malformed-message"),
])
async def test_the_extension_s_rules_are_enforced(server, provision, case: str, frames: str,
                                                  code: str) -> None:
    ana = await provision.tablet("ana")
    creds = ana.credentials
    join = wire.Join(ana.peer_id, metadata={} if frames == "plain-join" else {"vatraHeads": 1})
    if frames == "no-heads":
        second = wire.encode(wire.Sync(ana.peer_id, "server", "2fiH6LVoDnXEUsYNHowu3UTBwJqk",
                                       b"\x42\x00\x00\x00\x00"))
    elif frames == "short-tag":
        second = wire.encode(wire.Heads(ana.peer_id, bytes(15)))
    else:
        second = wire.encode(wire.Heads(ana.peer_id, bytes(16)))
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        channel = await open_session(ClientChannel(ws), creds.device_id, creds.signing_key,
                                     creds.server_key, early=[wire.encode(join), second])
        assert isinstance(await next_message(channel), wire.Peer)
        err = await next_message(channel)
        assert isinstance(err, wire.Error) and err.code == code, (case, err)
        assert await asyncio.wait_for(channel.receive(), 10) is None


async def test_the_heads_column_follows_the_log_and_the_migration_fills_it(
        server, provision, database_url: str) -> None:
    """Each household's ``heads`` column (what the fast path compares) equals its
    document's heads after concurrent edits merged; a database migrated from before the
    column gets the same heads from its change log."""
    ana, ion = await provision.tablet("ana"), await provision.tablet("ion")
    hids = register(ana, 3)
    await SyncClient(ana, server.url).sync()
    await provision.share(hids[0], ana, ion)
    await SyncClient(ana, server.url).sync()
    ion.track(hids[0])
    await SyncClient(ion, server.url).sync()
    for t, who in ((ana, "ana"), (ion, "ion")):  # concurrent: two heads until merged
        with t.edit(hids[0]) as e:
            e.append_activity("visit", f"by {who}")
    await SyncClient(ana, server.url).sync()
    await SyncClient(ion, server.url).sync()
    synchronizer = server.app[SYNCHRONIZER]
    want = {h: sorted((await synchronizer.registry.get(h)).doc.get_heads()) for h in hids}
    assert len(want[hids[0]]) == 2

    engine = synchronizer.store.engine

    async def stored() -> dict[str, list[bytes]]:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(households.c.id, households.c.heads))
            return {r.id: sorted(r.heads) for r in rows}

    assert await stored() == want

    def downgrade_and_upgrade(connection: sa.Connection) -> None:
        from alembic import command
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0010")
        command.upgrade(cfg, "head")

    # The projector is idle first: the downgrade passes through migration 0012, which
    # alters the projection tables the projector writes while it reads the change log
    # (run while it was still projecting these syncs, the two deadlocked).
    await server.app[PROJECTOR].drain_all()
    async with engine.begin() as conn:
        await conn.run_sync(downgrade_and_upgrade)
    assert await stored() == want


async def test_a_server_that_does_not_take_the_offer_is_synced_without_it(
        database_url: str, tmp_path: Path) -> None:
    """A server from before the fast path (emulated with ``VATRA_FAST_PATH=0``) does not
    take the offer, and refuses the ``vatra-heads`` behind it: the SDK reconnects without
    the offer, syncs everything, and does not offer it again."""
    from conftest import TEST_MASTER_KEY

    from sync_server.app import IDENTITY, VatraServer
    from sync_server.config import Settings
    from vatra_devtools.provision import Provisioner

    settings = Settings.from_env({"VATRA_FAST_PATH": "0"})
    assert settings.fast_path is False
    async with VatraServer(dataclasses.replace(
            settings, database_url=database_url, data_dir=tmp_path / "srv", port=0,
            master_key=TEST_MASTER_KEY)) as old:
        provision = Provisioner(old.app[IDENTITY], old.http_url, old.app[SYNCHRONIZER])
        ana = await provision.tablet(tmp_path / "ana", "ana")
        register(ana, 2)
        client = SyncClient(ana, old.url, backoff_base=0.01)
        first = await client.sync()
        assert first.households_synced == 2 and not first.rejected
        assert first.attempts == 2  # the offer refused, then the plain sync
        again = await client.sync()
        assert again.attempts == 1 and again.households_unchanged == 0
        assert again.households_synced == 2


# -- regressions found in review of the first version -----------------------------------


async def shared(server, provision) -> tuple[Replica, Replica, str]:
    """Ana's household, shared with Ion; both hold it; nothing of it resident."""
    ana, ion = await provision.tablet("ana"), await provision.tablet("ion")
    hid = register(ana, 1)[0]
    await SyncClient(ana, server.url).sync()
    await provision.share(hid, ana, ion)
    await SyncClient(ana, server.url).sync()
    ion.track(hid)
    await SyncClient(ion, server.url).sync()
    server.app[SYNCHRONIZER].registry.evict_idle()
    return ana, ion, hid


async def pushed(channel: SecureChannel, hid: str, seconds: float = 3.0) -> bool:
    """Whether the server sends the session a ``sync`` for ``hid`` within ``seconds``
    (a bound for an absence: nothing else marks it)."""
    try:
        while (frame := await asyncio.wait_for(channel.receive(), seconds)) is not None:
            msg = wire.decode(frame)
            if isinstance(msg, wire.Sync) and msg.document_id == hid:
                return True
    except TimeoutError:
        pass
    return False


async def test_a_watcher_taken_off_the_team_during_a_listener_outage_is_not_pushed(
        server, provision) -> None:
    """Before: after the team listener reconnected, its catch-up decided again only the
    households a session had synced, not those it watched; and the fan-out subscribed
    watchers without asking. Reproduced by removing Ana from the team behind the
    listener's back and running the catch-up: Ion's next edit was pushed to Ana."""
    from sync_server.app import CONNECTIONS
    from sync_server.gateway.teams import TeamChanges
    from sync_server.store.tables import household_team

    ana, ion, hid = await shared(server, provision)
    synchronizer = server.app[SYNCHRONIZER]
    async with fast_session(server, ana, offer_of(ana, [hid])) as channel:
        assert isinstance(await next_message(channel), wire.Peer)
        assert fastpath.bits((await next_message(channel)).same, 1) == [True]
        async with synchronizer.store.engine.begin() as conn:  # no NOTIFY: missed
            await conn.execute(sa.delete(household_team).where(
                household_team.c.household_id == hid,
                household_team.c.user_id == ana.credentials.user_id))
        await TeamChanges(synchronizer.store.engine, synchronizer,
                          server.app[CONNECTIONS]).catch_up()
        with ion.edit(hid) as e:
            e.append_activity("visit", "after ana left the team")
        assert not (await SyncClient(ion, server.url).sync()).rejected
        assert not await pushed(channel, hid)


async def test_a_change_stored_while_the_server_compares_is_pushed(server, provision) -> None:
    """Before: the heads were read, then the household watched; a change stored in between
    was answered "same" and never pushed. Reproduced by holding the server's heads read
    until Ion's change is stored. Now the household is watched before its heads are read,
    so the change reaches the session (its push may come ahead of the reply)."""
    ana, ion, hid = await shared(server, provision)
    store = server.app[SYNCHRONIZER].store
    read, gate = store.heads, asyncio.Event()

    async def held_read(ids):
        rows = await read(ids)
        if hid in rows:
            held.set()
            await gate.wait()
        return rows

    held = asyncio.Event()

    store.heads = held_read
    try:
        async with fast_session(server, ana, offer_of(ana, [hid])) as channel:
            assert isinstance(await next_message(channel), wire.Peer)
            await asyncio.wait_for(held.wait(), 10)
            with ion.edit(hid) as e:
                e.append_activity("visit", "while the server compared")
            # (a plain sync: Ion reads no heads, so nothing holds Ion's)
            assert not (await SyncClient(ion, server.url, fast_path=False).sync()).rejected
            gate.set()
            assert await pushed(channel, hid)
    finally:
        store.heads = read


async def test_the_heads_follow_any_statement_that_logs_changes(server, provision) -> None:
    """Before: the append statement kept the heads, so an instance from before migration
    0011 (a rolling upgrade) appended without them, and tablets were told they held what
    they did not. Now a trigger keeps them: a change logged by a bare INSERT (rolled back
    after) moves the heads from its dependency to itself."""
    ana = await provision.tablet("ana")
    hid = register(ana, 1)[0]
    await SyncClient(ana, server.url).sync()
    [head] = ana.document(hid).get_heads()
    new = bytes(range(32))
    async with server.app[SYNCHRONIZER].store.engine.connect() as conn, conn.begin() as tx:
        await conn.execute(sa.text(
            "INSERT INTO changes (household_id, hash, deps, actor, body) "
            "VALUES (:h, :hash, ARRAY[CAST(:dep AS bytea)], :actor, :body)"),
            {"h": hid, "hash": new, "dep": head, "actor": bytes(16), "body": b"x"})
        heads = (await conn.execute(sa.select(households.c.heads)
                                    .where(households.c.id == hid))).scalar_one()
        await tx.rollback()
    assert heads == [new]


async def test_a_watcher_that_cannot_follow_more_households_does_not_fail_the_writer(
        server, provision) -> None:
    """Before: a watcher whose session held its limit of sync states made the fan-out
    raise limit-exceeded in the writer's task, and Ion's sync was refused. Reproduced by
    lowering Ana's session's limit. Now Ana is simply not followed."""
    from sync_server.app import CONNECTIONS

    ana, ion, hid = await shared(server, provision)
    async with fast_session(server, ana, offer_of(ana, [hid])) as channel:
        assert isinstance(await next_message(channel), wire.Peer)
        await next_message(channel)
        conn = next(c for c in server.app[CONNECTIONS]
                    if c.device.id == ana.credentials.device_id)
        conn.sync._max = len(conn.sync.documents)  # as if it had opened 10,000
        with ion.edit(hid) as e:
            e.append_activity("visit", "by ion")
        assert not (await SyncClient(ion, server.url, max_attempts=1).sync()).rejected
        assert not await pushed(channel, hid, seconds=1.0)


async def test_a_household_registered_offline_goes_up_in_the_first_message(
        server, provision) -> None:
    """A household never synced is one the server holds nothing of: the SDK's first sync
    message for it carries its changes (the plain exchange spent a round trip on
    heads and a Bloom filter first). Counted on the server: one sync message in, where
    the plain exchange took two."""
    from sync_server.gateway.dispatch import MESSAGES_IN

    ana = await provision.tablet("ana")
    await SyncClient(ana, server.url).sync()  # the session's fixed cost, out of the count
    register(ana, 1)
    before = MESSAGES_IN.labels("sync")._value.get()
    summary = await SyncClient(ana, server.url).sync()
    assert summary.households_synced == 1 and summary.changes_sent == 2
    assert MESSAGES_IN.labels("sync")._value.get() - before == 1
