"""Several instances on one PostgreSQL, any device on any instance (issue 14, part 1):
three real servers on one real database, enrolled tablets, real sessions."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _rawpeer import raw_peer
from automerge.core import Document, SyncState
from conftest import TEST_MASTER_KEY

from client_sdk import Replica, SyncClient
from conflict import Household
from sync_server.app import ENGINE, IDENTITY, PROJECTOR, STORE, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from sync_server.store.tables import proj_activity
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional


def instance(database_url: str, root: Path, name: str) -> VatraServer:
    """A server on the shared database, with the shared server key (tablets pin it)."""
    key = root / "server_identity.key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    return VatraServer(Settings(database_url=database_url, data_dir=root / name, port=0,
                                max_frame_bytes=256 * 1024, master_key=TEST_MASTER_KEY,
                                server_key_file=str(key)))


@contextlib.asynccontextmanager
async def instances(database_url: str, root: Path, n: int = 3
                    ) -> AsyncIterator[list[VatraServer]]:
    """``n`` servers on one database."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(instance(database_url, root, f"instance-{i}"))
               for i in range(n)]


def provisioner(server: VatraServer) -> Provisioner:
    assert server.app is not None
    return Provisioner(server.app[IDENTITY], server.http_url, server.app[SYNCHRONIZER])


async def teammates(a: VatraServer, teammate_url: str, tmp_path: Path
                    ) -> tuple[Replica, Replica, str]:
    """Ana registers a household through ``a``, shares it with Ion, and Ion syncs it
    through ``teammate_url``: (ana, ion, household id)."""
    provision = provisioner(a)
    ana = await provision.tablet(tmp_path / "ana", "ana")
    ion = await provision.tablet(tmp_path / "ion", "ion")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    ana.save(h.household_id)
    assert not (await SyncClient(ana, a.url).sync()).rejected
    await provision.share(h.household_id, ana, ion)
    assert not (await SyncClient(ion, teammate_url).sync()).rejected
    return ana, ion, h.household_id


def feed(replica: Replica, hid: str) -> list[str]:
    return [e["text"] for e in replica.household(hid).to_dict()["activity"]]


async def stored_feed(server: VatraServer, hid: str) -> list[str]:
    """The household as the log and its snapshot give it now (what a restart loads)."""
    assert server.app is not None
    loaded = await server.app[STORE].load(hid)
    doc = Household(Document.load(loaded.document_bytes()), hid).to_dict()
    return [e["text"] for e in doc["activity"]]


async def test_a_change_confirmed_by_one_instance_is_served_by_every_instance(
        database_url: str, tmp_path: Path) -> None:
    """Issue 14: with two ``vatra serve`` on one PostgreSQL, instance 2's copy of a
    household lacked what instance 1 had confirmed as saved, a tablet on instance 2 did
    not get it, and instance 2's snapshot, written from that copy, hid it from every
    later load (a fresh tablet, ``vatra projections rebuild``).

    Reproduced: instance B holds the household in memory; a change is confirmed through
    A; a teammate then syncs through B (and must get it), and writes a big entry through
    B, big enough for B to snapshot the household. Every instance then serves both, and
    the log and snapshot, loaded as after a restart, hold both."""
    async with instances(database_url, tmp_path) as (a, b, c):
        ana, ion, hid = await teammates(a, b.url, tmp_path)  # B holds a copy now

        with ana.edit(hid) as mine:
            mine.append_activity("visit", "confirmed through A")
        assert not (await SyncClient(ana, a.url).sync()).rejected
        assert not (await SyncClient(ion, b.url).sync()).rejected
        assert "confirmed through A" in feed(ion, hid)  # served by B at once

        with ion.edit(hid) as theirs:
            theirs.append_activity("visit", "through B " + "x" * 20_000)  # B snapshots
        assert not (await SyncClient(ion, b.url).sync()).rejected
        for server in (a, b, c):
            fresh = await provisioner(a).tablet(tmp_path / f"fresh-{server.port}", "ion")
            assert not (await SyncClient(fresh, server.url).sync()).rejected
            got = feed(fresh, hid)
            assert "confirmed through A" in got and any(t.startswith("through B") for t in got)
        for server in (a, b, c):
            got = await stored_feed(server, hid)
            assert "confirmed through A" in got and any(t.startswith("through B") for t in got)
    async with instance(database_url, tmp_path, "restarted") as restarted:  # nothing resident
        late = await provisioner(restarted).tablet(tmp_path / "late", "ion")
        assert not (await SyncClient(late, restarted.url).sync()).rejected
        got = feed(late, hid)
        assert "confirmed through A" in got and any(t.startswith("through B") for t in got)
        assert restarted.app is not None
        await restarted.app[PROJECTOR].rebuild([hid])  # `vatra projections rebuild`
        async with restarted.app[ENGINE].connect() as conn:
            texts = list((await conn.execute(sa.select(proj_activity.c.text).where(
                proj_activity.c.household_id == hid))).scalars())
        assert "confirmed through A" in texts and any(t.startswith("through B") for t in texts)


async def test_a_teammate_on_another_instance_receives_a_live_edit(
        database_url: str, tmp_path: Path) -> None:
    """A live session on instance B follows a household; an edit confirmed through A
    reaches it without the teammate syncing again (cross-instance fan-out)."""
    async with instances(database_url, tmp_path, 2) as (a, b):
        ana, ion, hid = await teammates(a, a.url, tmp_path)

        doc, state = ion.household(hid).doc.fork(), SyncState()
        async with raw_peer(b.url, ion) as peer:
            await peer.push(doc, hid, state)  # following the household on B
            with ana.edit(hid) as mine:
                mine.append_activity("visit", "live through A")
            assert not (await SyncClient(ana, a.url).sync()).rejected
            want = ana.household(hid).doc.get_heads()
            await asyncio.wait_for(peer.follow(doc, hid, state, want), timeout=10)
        assert "live through A" in [e["text"] for e in Household(doc, hid).to_dict()["activity"]]


async def test_concurrent_batches_through_two_instances_both_land_and_converge(
        database_url: str, tmp_path: Path) -> None:
    """Two teammates edit one household offline and sync at the same moment, one through
    each instance. Commits for one household run one at a time across instances; the
    one that finds its copy behind reloads it and takes the batch again. Both land, and
    every copy converges."""
    async with instances(database_url, tmp_path, 2) as (a, b):
        ana, ion, hid = await teammates(a, b.url, tmp_path)
        for round_ in range(5):
            with ana.edit(hid) as mine:
                mine.append_activity("visit", f"ana {round_}")
            with ion.edit(hid) as theirs:
                theirs.append_activity("visit", f"ion {round_}")
            done = await asyncio.gather(SyncClient(ana, a.url).sync(),
                                        SyncClient(ion, b.url).sync())
            assert not any(s.rejected for s in done)
        for _ in range(2):  # each fetches what the other sent
            await SyncClient(ana, a.url).sync()
            await SyncClient(ion, b.url).sync()
        want = {f"{who} {r}" for who in ("ana", "ion") for r in range(5)}
        assert want <= set(feed(ana, hid)) and want <= set(feed(ion, hid))
        assert sorted(ana.household(hid).doc.get_heads()) == \
            sorted(ion.household(hid).doc.get_heads())
        assert want <= set(await stored_feed(a, hid))


async def test_a_household_changed_through_another_instance_is_found_different(
        database_url: str, tmp_path: Path) -> None:
    """The reconnect fast path across instances: Ion's edit is stored through B while A
    holds the household resident; Ana's reconnect to A finds it different (the heads the
    log keeps, not A's copy, are compared), and A serves it from the log."""
    async with instances(database_url, tmp_path, 2) as (a, b):
        ana, ion, hid = await teammates(a, a.url, tmp_path)
        await SyncClient(ana, a.url).sync()  # the team Ion joined: the share's change
        assert (await SyncClient(ana, a.url).sync()).households_unchanged == 1  # resident on A
        with ion.edit(hid) as theirs:
            theirs.append_activity("visit", "through B")
        assert not (await SyncClient(ion, b.url).sync()).rejected
        summary = await SyncClient(ana, a.url).sync()
        assert summary.households_unchanged == 0 and summary.changes_received == 1
        assert "through B" in feed(ana, hid)
        assert (await SyncClient(ana, b.url).sync()).households_unchanged == 1
