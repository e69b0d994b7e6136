"""What the server keeps, and for how long: idempotent change log, snapshots, residency, outbox.

Real PostgreSQL and real servers on free ports throughout, reached by enrolled
devices through the end-to-end session (raw peers: ``tests/_rawpeer.py``); only
the outbox test at the end drives :class:`sync_server.gateway.connection.Connection`
through a fake :class:`FrameChannel` (pure logic: whether a stuck peer gets closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _rawpeer import TIMEOUT, raw_peer
from aiohttp import WSCloseCode, WSMsgType
from automerge.core import Document, SyncState
from conftest import TEST_MASTER_KEY

from client_sdk import Replica, SyncClient
from conflict import Household
from sync_server.app import CONNECTIONS, IDENTITY, SYNCHRONIZER, VatraServer
from sync_server.gateway.connection import Connection, ConnectionState
from sync_server.protocol import wire
from sync_server.protocol.errors import ErrorCode
from sync_server.store.tables import changes, snapshots
from sync_server.sync.apply import stored
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional


# -- helpers ---------------------------------------------------------------------------------


def new_household(replica: Replica, n: int = 0) -> str:
    h = replica.create_household(locality="54975", county="CJ", address=f"Str. Lunga {n}")
    return h.household_id


async def settled(server: VatraServer) -> None:
    """Wait until the server has finished with every closed connection (unsubscribed it)."""
    for _ in range(500):
        if not server.app[CONNECTIONS]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"connections still open: {server.app[CONNECTIONS]}")


async def duplicate_rows(engine, hid: str) -> int:
    async with engine.connect() as conn:
        dup = (sa.select(changes.c.hash).where(changes.c.household_id == hid)
               .group_by(changes.c.hash).having(sa.func.count() > 1).subquery())
        return (await conn.execute(sa.select(sa.func.count()).select_from(dup))).scalar_one()


def all_hashes(doc: Document) -> set[bytes]:
    return {c.hash for c in doc.get_changes([])}


# -- idempotence -----------------------------------------------------------------------------


async def test_resending_the_same_changes_adds_no_rows(server, provision, store,
                                                      engine) -> None:
    """The change log is keyed by (household, hash): replaying an upload on a fresh
    connection, a second replica (a teammate's) holding identical changes, two connections
    creating the same household at once, and a direct re-append all leave it unchanged.

    Since sessions are encrypted, "replaying the exact frames" means re-sending the same
    plaintext frames through a new session of the same device (the sealed bytes of the old
    session cannot be replayed: the session layer refuses them, see ``test_session.py``).
    The household created twice at once is the device's own (its changes carry the
    device's registered actor id), over two sessions of that device."""
    a = await provision.tablet("a", "sw-1")
    hid = new_household(a)
    with a.edit(hid) as h:
        h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        h.set_notes("gate code 1234")
        h.append_activity("visit", "first visit")
    doc = a.household(hid).doc
    async with raw_peer(server.url, a) as first:
        await first.push(doc, hid)
        frames = list(first.sent[1:])  # plaintext of everything after the join
    count = await store.change_count(hid)
    assert count == len(all_hashes(doc)) == 4

    async with raw_peer(server.url, a) as replay:
        for frame in frames:
            await replay.send_frame(frame)
        await replay.push(doc, hid)  # processed in order: the replayed frames are done
    assert await store.change_count(hid) == count

    b = await provision.tablet("b", "sw-2")
    await provision.share(hid, a, b)
    b.track(hid)
    b.adopt(hid, Document.load(doc.save()))
    summary = await SyncClient(b, server.url).sync()
    assert summary.rejected == [] and summary.changes_sent == 0 and b.is_saved(hid)
    count += 1  # the team change share() made, on the server
    assert await store.change_count(hid) == count

    result = await store.append_changes(hid, stored(doc.get_changes([])))
    assert result.inserted == 0
    assert await store.change_count(hid) == count

    other = Household.create(locality="54975", county="CJ", address="Str. Scurta 1",
                             author="sw-1", actor_id=a.actor_id)
    async with raw_peer(server.url, a) as p1, raw_peer(server.url, a) as p2:
        copy = Document.load(other.doc.save())
        await asyncio.gather(p1.push(other.doc, other.household_id),
                             p2.push(copy, other.household_id))
    assert await store.change_count(other.household_id) == 1

    assert await duplicate_rows(engine, hid) == 0
    assert await duplicate_rows(engine, other.household_id) == 0


# -- snapshots -------------------------------------------------------------------------------


async def test_a_long_history_reloads_from_snapshot_plus_later_changes(
        server, provision, store, engine) -> None:
    """2,000 edits synced in batches get compacted: a snapshot row exists and a cold load
    reads far fewer than 2,000 change rows, yet the household reloads (after eviction, and
    on a second server over the same database) with identical heads and content. (The
    second server shares the first one's data directory, hence its identity key, so a
    teammate's tablet enrolled on the first syncs with it.)"""
    a = await provision.tablet("a", "sw-1")
    hid = new_household(a, -1)
    for batch in range(4):
        with a.edit(hid) as h:
            for i in range(250):
                n = batch * 250 + i
                h.set_address(f"Str. Lunga {n}")
                h.append_activity("visit", f"visit {n}")
        summary = await SyncClient(a, server.url).sync()
        assert summary.rejected == [] and summary.changes_sent == 500 + (batch == 0)
        assert a.is_saved(hid)
    expected = a.household(hid)
    heads = sorted(expected.doc.get_heads())
    assert await store.change_count(hid) == 2001

    async with engine.connect() as conn:
        snap = (await conn.execute(sa.select(snapshots.c.covers_seq, snapshots.c.heads)
                                   .where(snapshots.c.household_id == hid))).one()
    assert snap.covers_seq > 0
    loaded = await store.load(hid)
    assert loaded is not None and loaded.snapshot
    assert len(loaded.later_changes) < 2000

    await settled(server)
    registry = server.app[SYNCHRONIZER].registry
    registry.max_resident = 0
    try:
        registry.evict_idle()
    finally:
        registry.max_resident = server.settings.resident_households
    assert registry.resident(hid) is None
    loads = registry.loads
    actor = await registry.get(hid)
    assert actor is not None and registry.loads == loads + 1
    assert sorted(actor.doc.get_heads()) == heads
    assert Household(actor.doc, hid).to_dict() == expected.to_dict()

    b = await provision.tablet("b", "sw-2")
    await provision.share(hid, a, b)  # one change more, on the server
    assert (await SyncClient(a, server.url).sync()).changes_received == 1
    expected = a.household(hid)
    async with VatraServer(dataclasses.replace(server.settings)) as second:
        b.track(hid)
        got = await SyncClient(b, second.url).sync()
        assert got.changes_received == 2001 + 1
        assert b.household(hid).doc.get_heads() == expected.doc.get_heads()
        assert b.household(hid).to_dict() == expected.to_dict()
        assert second.app[SYNCHRONIZER].registry.loads == 1


# -- residency -------------------------------------------------------------------------------


@pytest.fixture
async def small_server(database_url, tmp_path) -> AsyncIterator[VatraServer]:
    """A server that keeps at most 2 idle households resident."""
    from sync_server.config import Settings

    settings = Settings(database_url=database_url, data_dir=tmp_path / "small", port=0,
                        max_frame_bytes=256 * 1024, resident_households=2,
                        master_key=TEST_MASTER_KEY)
    async with VatraServer(settings) as srv:
        yield srv


@pytest.fixture
def small_provision(small_server: VatraServer, tmp_path: Path) -> Provisioner:
    """``provision`` (conftest) for ``small_server``: tablets enrolled there pin its key."""

    class SmallProvisioner(Provisioner):
        async def tablet(self, name: str, user_id: str | None = None,  # type: ignore[override]
                         **kw) -> Replica:
            return await super().tablet(tmp_path / "devices" / name, user_id or name, **kw)

    return SmallProvisioner(small_server.app[IDENTITY], small_server.http_url,
                            small_server.app[SYNCHRONIZER])


async def test_idle_households_are_evicted_and_reload_transparently(
        small_server, small_provision) -> None:
    """With ``resident_households=2``, syncing 5 households leaves at most 2 resident; an
    evicted one is later edited, synced and fetched by a teammate as if it never left."""
    server = small_server
    registry = server.app[SYNCHRONIZER].registry
    devices = [await small_provision.tablet(f"d{i}") for i in range(5)]
    hids = [new_household(d, i) for i, d in enumerate(devices)]
    for d in devices:
        await SyncClient(d, server.url).sync()
        await settled(server)
        assert len(registry) <= 2
    assert registry.evictions >= 3
    assert registry.resident(hids[0]) is None

    with devices[0].edit(hids[0]) as h:
        h.set_notes("after eviction")
    summary = await SyncClient(devices[0], server.url).sync()
    assert summary.rejected == [] and summary.changes_sent == 1
    assert devices[0].is_saved(hids[0])
    mate = await small_provision.tablet("mate")
    await small_provision.share(hids[0], devices[0], mate)
    mate.track(hids[0])
    await SyncClient(mate, server.url).sync()
    assert mate.household(hids[0]).notes == "after eviction"
    await settled(server)
    assert len(registry) <= 2


async def test_a_household_admitted_over_the_bound_is_not_orphaned(small_server,
                                                                   small_provision) -> None:
    """Regression: with the bound reached by households that are in use, a newly created
    household was evicted the moment it was admitted (it had no subscriber yet), so its
    creator was subscribed to an orphaned copy; the next writer loaded a second copy and
    the creator never received that writer's changes. Now the admitted household stays.
    (Creator and writer are enrolled teammates; each one's changes carry its own actor id.)"""
    server = small_server
    registry = server.app[SYNCHRONIZER].registry
    creating = await small_provision.tablet("creator", "sw-1")
    writing = await small_provision.tablet("writer", "sw-2")
    busy = [Household.create(locality="54975", county="CJ", address=f"Str. {i}",
                             author="sw-1", actor_id=creating.actor_id) for i in range(2)]
    target = Household.create(locality="54975", county="CJ", address="Str. Noua",
                              author="sw-1", actor_id=creating.actor_id)
    async with contextlib.AsyncExitStack() as stack:
        for h in busy:  # two open connections keep the bound full of households in use
            p = await stack.enter_async_context(raw_peer(server.url, creating))
            await p.push(h.doc, h.household_id)
        creator = await stack.enter_async_context(raw_peer(server.url, creating))
        creator_state = SyncState()
        await creator.push(target.doc, target.household_id, creator_state)
        assert registry.resident(target.household_id) is not None

        await small_provision.share(target.household_id, creating, writing)
        writer_doc = Document.load(target.doc.save())
        writer_doc.set_actor(writing.actor_id)
        Household(writer_doc, target.household_id).set_notes("written by a teammate")
        writer = await stack.enter_async_context(raw_peer(server.url, writing))
        await writer.push(writer_doc, target.household_id)

        await creator.follow(target.doc, target.household_id, creator_state,
                             want=writer_doc.get_heads())
        assert Household(target.doc, target.household_id).notes == "written by a teammate"


# -- the bounded outbox ----------------------------------------------------------------------


class StuckChannel:
    """A peer that stopped reading: the first send never returns."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed_with: str | None = None

    async def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        await asyncio.Event().wait()

    async def receive(self) -> bytes | None:
        await asyncio.Event().wait()
        return None

    async def close(self, reason: str) -> None:
        self.closed_with = reason


class RecordingChannel(StuckChannel):
    async def send(self, frame: bytes) -> None:
        self.sent.append(frame)


async def test_a_full_outbox_closes_that_connection_only() -> None:
    """Fan-out to a peer whose send is stuck fills its bounded outbox; the next frame closes
    it with ``outbox-overflow`` (the stuck send is given up, the channel really closed),
    while a healthy connection fed the same frames receives every one of them."""
    stuck, healthy = StuckChannel(), RecordingChannel()
    slow = Connection(stuck, server_peer_id="srv", outbox_frames=4)
    fast = Connection(healthy, server_peer_id="srv", outbox_frames=4)
    for conn, name in ((slow, "slow"), (fast, "fast")):
        conn.start()
        conn.opened(name)
    frames = [wire.Sync("srv", "p", "doc", bytes([i])) for i in range(8)]
    for message in frames:
        slow.send(message)
        fast.send(message)
        await asyncio.sleep(0)  # let the writers run, as fan-out between messages does
    await asyncio.wait_for(slow.closed.wait(), TIMEOUT)
    assert slow.state is ConnectionState.CLOSED
    assert stuck.closed_with == ErrorCode.OUTBOX_OVERFLOW
    slow.send(frames[0])  # sending to a closed connection is a no-op
    await slow.close()

    await fast.close()
    assert healthy.sent == [wire.encode(m) for m in frames]
    assert healthy.closed_with == ""


async def test_the_outbox_gauges_show_a_peer_falling_behind() -> None:
    """Issue 14, part 2: an operator could see outbox overflows only after the fact. The
    gauges ``vatra_outbox_frames`` (all connections) and ``vatra_outbox_frames_max`` (the
    deepest one) show frames waiting for a peer whose send is stuck, and fall back when
    the connection is closed."""
    from prometheus_client import REGISTRY

    def gauge(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    base = gauge("vatra_outbox_frames")
    slow = Connection(StuckChannel(), server_peer_id="srv", outbox_frames=8)
    slow.start()
    slow.opened("slow")
    for i in range(5):
        slow.send(wire.Sync("srv", "p", "doc", bytes([i])))
        await asyncio.sleep(0)
    # the writer took one frame and is stuck sending it: four wait
    assert slow.outbox_depth == 4
    assert gauge("vatra_outbox_frames") - base == 4
    assert gauge("vatra_outbox_frames_max") >= 4
    slow.abort(ErrorCode.OUTBOX_OVERFLOW)
    await asyncio.wait_for(slow.closed.wait(), TIMEOUT)
    assert gauge("vatra_outbox_frames") == base


async def test_outbox_overflow_on_a_real_connection(server, provision) -> None:
    """On the real server, a connection whose outbox overflows is closed with a policy
    close ``outbox-overflow``, dropped from its household's subscribers, and a teammate on
    the same household keeps syncing."""
    a = await provision.tablet("a", "sw-1")
    slow = await provision.tablet("slow", "sw-2")
    hid = new_household(a)
    await SyncClient(a, server.url).sync()
    await provision.share(hid, a, slow)
    async with raw_peer(server.url, slow) as victim:
        await victim.push(Document(), hid, kind=wire.Request)
        conn = next(c for c in server.app[CONNECTIONS] if c.peer_id == victim.peer_id)
        actor = server.app[SYNCHRONIZER].registry.resident(hid)
        assert actor is not None and conn in actor.subscribers
        for _ in range(server.settings.outbox_frames + 1):
            conn.send(wire.Error("srv", "filler", "filler"))
        msg = await asyncio.wait_for(victim.ws.receive(), TIMEOUT)
        while msg.type is WSMsgType.BINARY:  # frames the writer got out before the abort
            msg = await asyncio.wait_for(victim.ws.receive(), TIMEOUT)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == WSCloseCode.POLICY_VIOLATION
        assert msg.extra == ErrorCode.OUTBOX_OVERFLOW
    await settled(server)
    assert conn not in actor.subscribers
    with a.edit(hid) as h:
        h.set_notes("still syncing")
    summary = await SyncClient(a, server.url).sync()
    assert summary.rejected == [] and a.is_saved(hid)


@pytest.mark.parametrize("seed", [18, 35])
async def test_changes_queued_behind_a_bloom_false_positive_are_kept(server, provision,
                                                                     seed) -> None:
    """Regression: a device's sync message can omit a change the server's Bloom filter
    falsely claims to have; the later changes then arrive before their dependency and
    Automerge queues them. The pipeline used to drop the fork when nothing *applied*,
    losing that queue, and device and server then exchanged the same messages forever
    (~2% of households in the bench). These seeds are byte-for-byte reproductions
    (fixed actor, ids and times) that hit the false positive."""
    at = "2026-01-01T00:00:00Z"
    tablet = await provision.tablet("tablet", "sw-1", actor_id=bytes([7]) * 16)
    h = tablet.create_household(locality="54975", county="CJ", address=f"a{seed}", at=at)
    h.add_member("Ana", "Pop", "2015-04-01", "F", "child",
                 person_id=f"00000000-0000-4000-8000-{seed:012d}")
    tablet.save(h.household_id)
    await SyncClient(tablet, server.url).sync()
    for e in range(10):
        h.append_activity("visit", f"v{e} {seed}", at=at)
    tablet.save(h.household_id)
    summary = await SyncClient(tablet, server.url, max_attempts=1, idle_timeout=10).sync()
    assert summary.changes_sent == 10
    assert tablet.is_saved(h.household_id)
