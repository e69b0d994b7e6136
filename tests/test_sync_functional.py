"""Replicas syncing through a real server: convergence, idempotence, events."""

from __future__ import annotations

import itertools

import pytest

from client_sdk import Replica, SyncClient
from sync_server.app import SYNCHRONIZER

pytestmark = pytest.mark.functional


def new_household(replica: Replica) -> str:
    h = replica.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    return h.household_id


async def test_a_household_created_offline_reaches_a_teammate(server, provision) -> None:
    a, b = await provision.tablet("a"), await provision.tablet("b")
    hid = new_household(a)
    with a.edit(hid) as h:
        pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    summary = await SyncClient(a, server.url).sync()
    assert summary.households_synced == 1 and summary.changes_sent == 2
    assert a.is_saved(hid)

    await provision.share(hid, a, b)  # one server change: b joins the team
    b.track(hid)
    got = await SyncClient(b, server.url).sync()
    assert got.changes_received == 3
    assert b.household(hid).members()[pid]["first_name"] == "Ana"


def edit_set(replica: Replica, hid: str, who: str) -> None:
    """Each device edits its own field and one field in common (notes)."""
    with replica.edit(hid) as h:
        h.append_activity("visit", f"visit by {who}")
        h.set_address(f"address according to {who}")


@pytest.mark.parametrize("n", [2, 3])
async def test_replicas_converge_in_every_sync_order(server, provision, n: int) -> None:
    origin = await provision.tablet("origin")
    hid = new_household(origin)
    await SyncClient(origin, server.url).sync()
    for order_no, order in enumerate(itertools.permutations(range(n))):
        devices = [await provision.tablet(f"o{order_no}-d{i}") for i in range(n)]
        await provision.share(hid, origin, *devices)
        for d in devices:
            d.track(hid)
            await SyncClient(d, server.url).sync()
        for i, d in enumerate(devices):
            edit_set(d, hid, f"worker-{order_no}-{i}")
        for i in order:  # upload in this order...
            await SyncClient(devices[i], server.url).sync()
        for d in devices:  # ...then everyone catches up
            await SyncClient(d, server.url).sync()
        heads = {tuple(d.household(hid).doc.get_heads()) for d in devices}
        assert len(heads) == 1, f"order {order} did not converge"
        server_doc = (await server.app[SYNCHRONIZER].registry.get(hid)).doc
        assert tuple(server_doc.get_heads()) in heads
        texts = {d.household(hid).to_dict()["address"] for d in devices}
        assert len(texts) == 1


async def test_saved_and_remote_change_events(server, provision) -> None:
    a, b = await provision.tablet("a"), await provision.tablet("b")
    hid = new_household(a)
    saved: list[str] = []
    await SyncClient(a, server.url, on_saved=lambda h, heads: saved.append(h)).sync()
    assert saved == [hid]
    await provision.share(hid, a, b)
    b.track(hid)
    await SyncClient(b, server.url).sync()
    with b.edit(hid) as h:
        h.set_notes("gate code 1234")
    await SyncClient(b, server.url).sync()
    arrived: list[tuple[str, int]] = []
    await SyncClient(a, server.url, on_remote_change=lambda h, n: arrived.append((h, n))).sync()
    assert arrived == [(hid, 2)]  # the team change that shared it, and b's notes
    assert a.household(hid).notes == "gate code 1234"
