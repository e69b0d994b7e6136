"""A stock automerge-repo peer (samod, shipped in the ``automerge`` package) syncs with Vatra.

This pins that Vatra speaks the real automerge-repo vocabulary: the samod
``Repo`` knows nothing of Vatra beyond a WebSocket ``Transport``.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
import sqlalchemy as sa
from automerge import ImmutableString
from automerge.core import ROOT
from automerge.repo import InMemoryStorage, Repo

from client_sdk import RepoTransport, SyncClient
from sync_server.app import SYNCHRONIZER
from sync_server.store.tables import audit

pytestmark = pytest.mark.functional


async def find_when_synced(repo: Repo, url: str, ready) -> object:
    """samod's find() can return None until the join/peer handshake is done: poll, bounded."""
    for _ in range(100):
        handle = await repo.find(url)
        if handle is not None and ready(handle.doc()):
            return handle
        await asyncio.sleep(0.05)
    raise AssertionError("the samod peer never received the household")


async def wait_for(predicate, what: str) -> None:
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def samod_household(repo: Repo, address: str):
    """A schema v1 household, written with plain automerge in a stock samod Repo."""
    handle = await repo.create()
    with handle.change() as d:
        d["schema"] = 1
        for key, value in {"locality": "54975", "county": "CJ", "address": address,
                           "status": "registration"}.items():
            d[key] = ImmutableString(value)
        d["team"] = {"social_worker": ImmutableString("sw-ana")}  # who may sync it
        for key in ("members", "assessments", "service_plan", "change_requests",
                    "conflicts"):
            d[key] = {}
        d["activity"] = []
        d["notes"] = ""
    return handle


async def test_samod_repo_and_vatra_replica_exchange_edits(server, provision) -> None:
    """A stock samod Repo registers two households offline, then syncs them through an
    encrypting Transport built on the SDK's session code, as its own enrolled device,
    unmodified: samod makes a random actor id per document, and the server binds each to
    the device on first use (audited). Before, every change was refused
    ``actor-not-registered`` unless the device enrolled with the Repo's actor id. Edits
    flow samod -> Vatra -> SDK tablet and back (the latter pushed live by fan-out)."""
    from sync_server.app import IDENTITY

    repo = await Repo.load(InMemoryStorage())
    async with repo:
        handle = await samod_household(repo, "Str. Samod 1")
        second = await samod_household(repo, "Str. Samod 2")
        actors = {h.doc()._doc.get_last_local_change().actor_id for h in (handle, second)}
        hid = str(handle.document_id)
        samod_device = await provision.tablet("samod", "sw-ana")  # the SDK's own actor id
        assert not actors & {samod_device.actor_id}
        tablet = await provision.tablet("tablet", "sw-ana")

        async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
            transport = await RepoTransport.open(ws, samod_device.credentials)
            conn = asyncio.create_task(repo.connect(transport))
            try:
                await wait_for(lambda: _server_address(server, hid) == "Str. Samod 1",
                               "the samod household never reached the server")
                await wait_for(lambda: _server_address(server, str(second.document_id))
                               == "Str. Samod 2", "the second samod household never arrived")
                device = await server.app[IDENTITY].device(samod_device.credentials.device_id)
                assert actors <= device.actor_ids  # bound to the samod device
                async with server.app[SYNCHRONIZER].store.engine.connect() as db:
                    bound = [r.detail["actor_ids"] for r in await db.execute(
                        sa.select(audit.c.detail).where(audit.c.kind == "actors-bound",
                                                        audit.c.device_id == device.id))]
                assert sorted(a for ids in bound for a in ids) == sorted(a.hex() for a in actors)
                tablet.track(hid)
                await SyncClient(tablet, server.url).sync()
                assert tablet.household(hid).to_dict()["address"] == "Str. Samod 1"

                # tablet -> Vatra -> samod (pushed to the live samod connection)
                with tablet.edit(hid) as th:
                    th.set_notes("dog in the yard")
                await SyncClient(tablet, server.url).sync()
                await wait_for(lambda: str(handle.doc()["notes"]) == "dog in the yard",
                               "the tablet edit never reached the samod peer")

                # samod -> Vatra -> tablet
                with handle.change() as d:
                    d["address"] = ImmutableString("Str. Scurta 5")
                await wait_for(lambda: _server_address(server, hid) == "Str. Scurta 5",
                               "the samod edit never reached the server")
                await SyncClient(tablet, server.url).sync()
                assert tablet.household(hid).to_dict()["address"] == "Str. Scurta 5"
            finally:
                conn.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conn


def _server_address(server, hid: str) -> str | None:
    actor = server.app[SYNCHRONIZER].registry.resident(hid)
    if actor is None:
        return None
    got = actor.doc.get(ROOT, "address")
    return got[0][1] if got else None
