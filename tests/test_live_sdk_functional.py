"""The SDK's live mode and progress events, against a real server (issue 15, part 2):
a tablet that stays connected gets teammates' edits as they are stored, sends its own at
once, reconnects when the link drops (resuming with the fast path), and says how far a
sync is, n of m households."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _scenes import until

from client_sdk import Progress, Replica, ServerRejected, SyncClient
from sync_server.app import IDENTITY
from vatra_devtools.bench_reconnect import DelayProxy
from vatra_devtools.provision import SIMULATED_PIN

pytestmark = pytest.mark.functional


async def shared_household(server, provision) -> tuple[Replica, Replica, str]:
    """Ana registers a household, shares it with Ion, and both hold it."""
    ana, ion = await provision.tablet("ana"), await provision.tablet("ion")
    hid = ana.create_household(locality="54975", county="CJ",
                               address="Str. Lunga 3").household_id
    await SyncClient(ana, server.url).sync()
    await provision.share(hid, ana, ion)
    await SyncClient(ana, server.url).sync()
    ion.track(hid)
    await SyncClient(ion, server.url).sync()
    return ana, ion, hid


def activity(replica: Replica, hid: str) -> list[str]:
    return [a["text"] for a in replica.household(hid).to_dict()["activity"]]


@contextlib.asynccontextmanager
async def live(replica: Replica, url: str, **kw) -> AsyncIterator[tuple[object, list, list]]:
    """A live session of ``replica``, its first exchange done; with the remote-change and
    saved events it fires."""
    remote: list[tuple[str, int]] = []
    saved: list[str] = []
    client = SyncClient(replica, url, on_remote_change=lambda h, n: remote.append((h, n)),
                        on_saved=lambda h, heads: saved.append(h), backoff_base=0.05,
                        backoff_cap=0.5, **kw)
    async with client.live() as session:
        await asyncio.wait_for(session.connected.wait(), 10)
        yield session, remote, saved


async def test_a_connected_tablet_gets_a_teammates_edit_without_syncing(
        server, provision, tmp_path: Path) -> None:
    """Ion edits and syncs; Ana, connected, gets the edit in her replica (and on disk),
    with a remote-change event, without calling sync."""
    ana, ion, hid = await shared_household(server, provision)
    async with live(ana, server.url) as (_, remote, _saved):
        with ion.edit(hid) as e:
            e.append_activity("visit", "by ion, while ana is online")
        assert not (await SyncClient(ion, server.url).sync()).rejected

        async def arrived() -> bool:
            return "by ion, while ana is online" in activity(ana, hid)
        await until(arrived, "ion's edit in ana's replica")
        await until(lambda: asyncio.sleep(0, bool(remote)), "a remote-change event")
        assert remote[0][0] == hid
    reopened = Replica(tmp_path / "devices" / "ana", pin=SIMULATED_PIN)
    assert "by ion, while ana is online" in activity(reopened, hid)


async def test_each_local_edit_is_sent_at_once_and_saved(server, provision) -> None:
    """Three edits one after the other, each announced with ``changed``: each one gets its
    own saved-to-server event. (Before: only the first did; the household's copy was
    still marked saved from the edit before.)"""
    ana, ion, hid = await shared_household(server, provision)
    async with live(ana, server.url) as (session, _remote, saved):
        for i in range(3):
            with ana.edit(hid) as e:
                e.append_activity("visit", f"by ana, live {i}")
            session.changed(hid)
            await until(lambda n=i: asyncio.sleep(0, len(saved) == n + 1),
                        f"the saved-to-server event of edit {i}")
            assert ana.is_saved(hid)
    await SyncClient(ion, server.url).sync()
    assert {f"by ana, live {i}" for i in range(3)} <= set(activity(ion, hid))


async def test_a_dropped_link_is_reconnected_and_what_happened_meanwhile_syncs(
        server, provision) -> None:
    """The link is cut twice (the proxy drops every connection): the live session
    reconnects with backoff, an edit made here while it was down is uploaded, and a
    teammate's edit stored meanwhile arrives through the fast path."""
    ana, ion, hid = await shared_household(server, provision)
    async with DelayProxy(server.port, 0.0) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/v1/sync"
        async with live(ana, url) as (session, remote, saved):
            for round_no in (1, 2):
                proxy.cut(stay_down=True)
                await until(lambda: asyncio.sleep(0, not session.connected.is_set()),
                            "the live session notices the cut")
                with ion.edit(hid) as e:
                    e.append_activity("visit", f"by ion during cut {round_no}")
                assert not (await SyncClient(ion, server.url).sync()).rejected
                with ana.edit(hid) as e:
                    e.append_activity("visit", f"by ana during cut {round_no}")
                session.changed(hid)
                await asyncio.sleep(0.3)  # a few refused tries
                proxy.restore()
                await asyncio.wait_for(session.connected.wait(), 10)

                async def both(n: int = round_no) -> bool:
                    texts = activity(ana, hid)
                    return (f"by ion during cut {n}" in texts and ana.is_saved(hid))
                await until(both, f"the edits of cut {round_no} synced")
            assert session.sessions == 3
            assert {h for h, _ in remote} == {hid} and hid in saved
    await SyncClient(ion, server.url).sync()
    assert {"by ana during cut 1", "by ana during cut 2"} <= set(activity(ion, hid))


async def test_a_revoked_device_s_live_session_ends_with_the_refusal(
        server, provision) -> None:
    ana, _ion, _hid = await shared_household(server, provision)
    async with live(ana, server.url) as (session, _remote, _saved):
        assert await server.app[IDENTITY].revoke_device(ana.credentials.device_id)
        with pytest.raises(ServerRejected) as err:
            await asyncio.wait_for(session.wait(), 10)
        assert err.value.code == "device-revoked"
    assert ana.household_ids() == []  # the replica was wiped


async def test_progress_says_n_of_m_households_and_bytes_so_far(server, provision) -> None:
    """Six households registered elsewhere arrive on a new tablet: one progress event to
    start, then one per household, counting up to six of six with growing bytes."""
    ion = await provision.tablet("ion")
    hids = []
    for i in range(6):
        hids.append(ion.create_household(locality="54975", county="CJ",
                                         address=f"Str. Lunga {i}").household_id)
    await SyncClient(ion, server.url).sync()
    ana = await provision.tablet("ana")
    for hid in hids:
        await provision.share(hid, ion, ana)
    events: list[Progress] = []
    summary = await SyncClient(ana, server.url, on_progress=events.append).sync()
    assert summary.households_synced == 6
    assert [(p.done, p.total) for p in events] == [(i, 6) for i in range(7)]
    received = [p.bytes_received for p in events]
    assert received == sorted(received) and received[-1] > received[0]


async def test_a_refused_live_edit_is_rebuilt_and_uploaded_without_waiting(
        server, provision) -> None:
    """A live edit the server refuses for its content (a protected path, written past the
    SDK's guard) is rebuilt on the server's copy with the allowed edits re-applied, and
    uploaded by a fresh session at once: the allowed edit reaches a teammate while the
    live session stays up."""
    from _scenes import active_household

    from conflict import Household

    hid, pid, (ana, ion) = await active_household(server, provision, ("ion", {}))
    async with live(ana, server.url) as (session, _remote, _saved):
        raw = Household(ana.household(hid).doc, hid, author="ana")  # past the guard
        raw.set_member_field(pid, "presence", "moved")
        raw.append_activity("home_visit", "allowed, and re-applied")
        ana.save(hid)
        session.changed(hid)

        async def uploaded() -> bool:
            await SyncClient(ion, server.url).sync()
            return "allowed, and re-applied" in activity(ion, hid)
        await until(uploaded, "the re-applied edit at the teammate's")
        assert session.sessions >= 2  # the fresh session that uploaded it
    members = ion.household(hid).to_dict()["members"]
    assert members[pid]["presence"] != "moved"  # refiled as a change request, not applied
