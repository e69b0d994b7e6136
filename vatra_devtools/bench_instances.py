"""How long a live edit takes to reach a teammate connected to another instance.

    python -m vatra_devtools.bench_instances [--edits 200]

Two servers run in this process on one embedded PostgreSQL (or ``DATABASE_URL``), with
one server identity key, as two ``vatra serve`` behind a load balancer would. A teammate
follows a household through a live session on instance B; a worker edits it and syncs
through instance A, one edit at a time. Measured per edit: from the worker's sync
starting (the edit leaving the tablet) to the teammate's session on B receiving heads
that include it: A merges and commits, ``NOTIFY vatra_changes`` reaches B, B reloads its
copy from the log and pushes (docs/instances.md). Issue 14's target: p99 < 1 s. The same
figure with both on instance A is the baseline of the same run. Results:
docs/instances.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from automerge.core import Message, SyncState

from client_sdk import Replica, SyncClient
from client_sdk._transport import ClientChannel
from sync_server.app import IDENTITY, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from sync_server.protocol import wire
from sync_server.protocol.session import open_session
from sync_server.store.database import database_url
from vatra_devtools.bench import percentile
from vatra_devtools.provision import Provisioner


class Follower:
    """A teammate's live session following one household: notes when heads arrive."""

    def __init__(self) -> None:
        self.seen: dict[bytes, float] = {}
        self.arrived = asyncio.Event()

    async def run(self, url: str, replica: Replica, hid: str) -> None:
        creds = replica.credentials
        assert creds is not None
        doc, state = replica.household(hid).doc.fork(), SyncState()
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            channel = await open_session(ClientChannel(ws), creds.device_id,
                                         creds.signing_key, creds.server_key)
            await channel.send(wire.encode(wire.Join("follower")))
            frame = await channel.receive()
            peer = wire.decode(frame) if frame is not None else None
            assert isinstance(peer, wire.Peer), peer
            first = doc.generate_sync_message(state)
            assert first is not None
            await channel.send(wire.encode(wire.Sync("follower", peer.sender_id, hid,
                                                     first.encode())))
            while (frame := await channel.receive()) is not None:
                msg = wire.decode(frame)
                if not isinstance(msg, wire.Sync) or msg.document_id != hid:
                    continue
                now = time.perf_counter()
                for head in wire.sync_message_heads(msg.data):
                    self.seen.setdefault(head, now)
                self.arrived.set()
                doc.receive_sync_message(state, Message.decode(msg.data))
                reply = doc.generate_sync_message(state)
                if reply is not None:
                    await channel.send(wire.encode(wire.Sync("follower", peer.sender_id, hid,
                                                             reply.encode())))

    async def wait_for(self, head: bytes) -> float:
        """When ``head`` arrived (waiting at most 10 s for it)."""
        async with asyncio.timeout(10):
            while head not in self.seen:
                self.arrived.clear()
                await self.arrived.wait()
        return self.seen[head]


@contextlib.asynccontextmanager
async def two_instances(settings: Settings, root: Path) -> AsyncIterator[list[VatraServer]]:
    key = root / "server_identity.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    if settings.master_key is None and settings.master_key_file is None:  # one for both
        settings = dataclasses.replace(
            settings, master_key=base64.b64encode(os.urandom(32)).decode())
    async with database_url(settings.database_url, root / "db") as url, \
            contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(VatraServer(dataclasses.replace(
            settings, database_url=url, data_dir=root / name, port=0,
            server_key_file=str(key)))) for name in ("a", "b")]


async def _latencies(worker: Replica, hid: str, writer_url: str, follower: Follower,
                     edits: int) -> list[float]:
    out = []
    for i in range(edits):
        with worker.edit(hid) as h:
            h.append_activity("visit", f"live edit {i}")
        head = worker.household(hid).doc.get_heads()[0]
        started = time.perf_counter()
        await SyncClient(worker, writer_url).sync([hid])
        out.append(await follower.wait_for(head) - started)
    return out


async def run(settings: Settings, edits: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vatra-bench-instances-") as tmp:
        root = Path(tmp)
        async with two_instances(settings, root) as (a, b):
            assert a.app is not None
            provision = Provisioner(a.app[IDENTITY], a.http_url, a.app[SYNCHRONIZER])
            ana = await provision.tablet(root / "ana", "sw-ana")
            ion = await provision.tablet(root / "ion", "sw-ion")
            h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
            ana.save(h.household_id)
            hid = h.household_id
            await SyncClient(ana, a.url).sync()
            await provision.share(hid, ana, ion)
            await SyncClient(ion, a.url).sync()
            figures = {}
            for name, follow_url in (("same instance (A, A)", a.url),
                                     ("other instance (A, B)", b.url)):
                follower = Follower()
                task = asyncio.create_task(follower.run(follow_url, ion, hid))
                await asyncio.wait_for(follower.arrived.wait(), 10)
                try:
                    lat = await _latencies(ana, hid, a.url, follower, edits)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                figures[name] = {"edits": edits, "p50_s": percentile(lat, 50),
                                 "p99_s": percentile(lat, 99), "max_s": max(lat)}
    return {"bench": "instances", "live_edit_to_teammate": figures}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_instances")
    p.add_argument("--edits", type=int, default=200)
    args = p.parse_args(argv)
    r = asyncio.run(run(Settings.from_env(), args.edits))
    for name, f in r["live_edit_to_teammate"].items():
        print(f"{name:22} {f['edits']} edits: p50 {f['p50_s'] * 1000:.1f} ms, "
              f"p99 {f['p99_s'] * 1000:.1f} ms, max {f['max_s'] * 1000:.1f} ms")
    print(json.dumps(r, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
