"""Scenes several functional test files start from (import: ``from _scenes import …``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from automerge.core import ROOT, ScalarType
from yarl import URL

from client_sdk import SyncClient
from client_sdk._transport import ClientChannel
from sync_server.protocol import wire
from sync_server.protocol.http_auth import sign
from sync_server.protocol.session import SecureChannel, open_session


async def active_household(server, provision, *mates, notes: str | None = None,
                           tablet_prefix: str = ""):
    """A household registered by tablet ``ana`` (user ``ana``), with a child, made active
    and synced; then every mate ``(name, provision.tablet kwargs)`` is enrolled, the
    workers among them put on the team, and each downloads it.
    Returns ``(household id, the child's person id, [ana, *mates' tablets])``."""
    ana = await provision.tablet(f"{tablet_prefix}ana", f"{tablet_prefix}ana")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    hid = h.household_id
    with ana.edit(hid) as e:
        pid = e.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        if notes is not None:
            e.set_notes(notes)
        e.set_status("active")
    await SyncClient(ana, server.url).sync()
    tablets = [ana]
    for name, kw in mates:
        tablets.append(await provision.tablet(name, name, **kw))
    await provision.share(hid, *[t for t in tablets if t.credentials.role == "worker"])
    for t in tablets[1:]:
        t.track(hid)
        await SyncClient(t, server.url).sync()
    return hid, pid, tablets


async def forge_write(provision, replica, hid: str, address: str) -> None:
    """Write ``address`` into the replica's copy under an actor id another device holds
    (what a tampered client would send, to pass its edits off as someone else's): the
    server must refuse and quarantine it."""
    other = await provision.tablet(f"owner-of-{replica.credentials.device_id}", "mallory")
    doc = replica.household(hid).doc
    doc.set_actor(other.actor_id)
    with doc.transaction() as tx:
        tx.put(ROOT, "address", ScalarType.Str, address)
    replica.save(hid)


async def until(check, what: str, patience: float = 10.0) -> None:
    """Poll the async ``check`` until it is true; fail naming ``what`` after ``patience``
    seconds (a bound on an effect that takes milliseconds, not a measurement)."""
    for _ in range(int(patience / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {patience} s: {what}")


@contextlib.asynccontextmanager
async def joined(server, replica) -> AsyncIterator[SecureChannel]:
    """A live session of ``replica``'s device: handshake, ``join``, the server's ``peer``
    read; yields the sealed channel (closed on exit)."""
    creds = replica.credentials
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        channel = await open_session(ClientChannel(ws), creds.device_id, creds.signing_key,
                                     creds.server_key)
        await channel.send(wire.encode(wire.Join("live")))
        assert isinstance(wire.decode(await channel.receive()), wire.Peer)
        yield channel


async def web_get(http_url: str, tablet, path: str, **params: Any) -> tuple[int, bytes, Any]:
    """A GET of the web tier's read API signed by ``tablet``'s device, as the web platform
    sends it: (status, body, headers)."""
    path_qs = path + ("?" + urlencode(params, quote_via=quote) if params else "")
    creds = tablet.credentials
    headers = {"Authorization": sign(creds.device_id, creds.signing_key, "GET", path_qs)}
    async with aiohttp.ClientSession() as session, session.get(
            URL(http_url + path_qs, encoded=True), headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers
