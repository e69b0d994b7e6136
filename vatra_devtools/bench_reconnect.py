"""What a tablet's reconnect costs on a field network: bytes and round trips.

    python -m vatra_devtools.bench_reconnect [--households 50] [--rtt 0.2]

A real server runs in this process on the embedded PostgreSQL (or ``DATABASE_URL``);
one enrolled tablet (``client_sdk``) keeps ``--households`` households. Its syncs go
through a TCP proxy in this process that counts the bytes each way and holds every
chunk back by half of ``--rtt`` in each direction, so a sync's wall time divided by the
round-trip time counts its round trips (TCP connect, the WebSocket upgrade and its
closing handshake included). For a sync that can be repeated unchanged (nothing new),
the same sync first runs with no delay, and only the difference is counted, so the
client's and server's CPU time is not.

For young households (33 changes each) and old ones (500 changes each):

* **nothing new**: the tablet syncs again with nothing changed on either side, with
  the reconnect fast path (``SyncClient()``) and without it (``fast_path=False``, what a
  plain automerge-repo peer does), in the same run;
* **a return with offline edits**: 10 edits on each household (500 in all at 50
  households), then a sync; the bytes uploaded are set against the changes' own bytes
  (``Change.raw_bytes``, what Automerge's sync message carries).

Issue 15's targets: nothing new < 5 KB both ways and one round trip after the session,
whatever the histories; the return uploads < 1.3x the raw change bytes. Results:
docs/performance.md, "Reconnect fast path".
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

from client_sdk import Replica, SyncClient
from sync_server.app import IDENTITY, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from sync_server.store.database import database_url
from sync_server.store.postgres import PostgresStore
from vatra_devtools.provision import Provisioner


class DelayProxy:
    """A TCP proxy that counts bytes and delays every chunk by ``one_way`` seconds."""

    def __init__(self, target_port: int, one_way: float) -> None:
        self.target_port, self.one_way = target_port, one_way
        self.up = self.down = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.down_now = False  # refusing connections (cut(stay_down=True))

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        self.up = self.down = 0

    def cut(self, *, stay_down: bool = False) -> None:
        """Drop every connection now (a dead zone): both ends see the link close.
        ``stay_down``: refuse new connections too, until :meth:`restore`."""
        self.down_now = stay_down
        for writer in list(self._links):
            writer.transport.abort()

    def restore(self) -> None:
        self.down_now = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down_now:
            writer.transport.abort()
            return
        if self.one_way:
            await asyncio.sleep(self.one_way * 2)  # the TCP handshake's round trip
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer, "up"),
                                 self._pump(up_reader, writer, "down"),
                                 return_exceptions=True)
        finally:
            self._links -= {writer, up_writer}

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                if direction == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
                queue.put_nowait((loop.time() + self.one_way, data))
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await delivering
            writer.close()


def households(replica: Replica, n: int, changes: int) -> list[str]:
    """``n`` households of ``changes`` changes each (a creation, then activity entries)."""
    hids = []
    for i in range(n):
        h = replica.create_household(locality="54975", county="CJ", address=f"Str. Lunga {i}")
        for j in range(changes - 1):
            with replica.edit(h.household_id) as e:
                e.append_activity("visit", f"visit {j}")
        hids.append(h.household_id)
    return hids


def offline_edits(replica: Replica, hids: list[str], per_household: int) -> int:
    """Edit every household; returns the raw bytes of the new changes."""
    raw = 0
    for hid in hids:
        before = replica.document(hid).get_heads()
        for j in range(per_household):
            with replica.edit(hid) as e:
                e.append_activity("visit", f"offline visit {j} with a few words of synthesis")
        raw += sum(len(c.raw_bytes) for c in replica.document(hid).get_changes(before))
    return raw


async def timed(proxy: DelayProxy, client: SyncClient) -> tuple[float, Any]:
    proxy.reset()
    started = time.perf_counter()
    summary = await client.sync()
    assert not summary.rejected, summary.rejected
    return time.perf_counter() - started, summary


async def measured(proxy: DelayProxy, rtt: float, client: SyncClient, *,
                   repeatable: bool = False) -> dict[str, Any]:
    """One sync through the proxy at ``rtt``. ``repeatable`` (nothing changes between
    two runs): the same sync first runs with no delay, and the round trips are the
    difference of the two wall times over ``rtt``, so that CPU time is not counted."""
    local = None
    if repeatable:
        proxy.one_way = 0.0
        local, _ = await timed(proxy, client)
        proxy.one_way = rtt / 2
    wall, summary = await timed(proxy, client)
    return {"tcp_up": proxy.up, "tcp_down": proxy.down,
            "session_up": summary.bytes_sent, "session_down": summary.bytes_received,
            "wall_s": round(wall, 3),
            "round_trips": None if local is None else round((wall - local) / rtt, 1),
            "unchanged": summary.households_unchanged, "synced": summary.households_synced}


async def settled(server: VatraServer) -> None:
    """Until the in-process projector has projected everything (it shares the server's
    event loop and CPU: measuring while it works would time it too)."""
    assert server.app is not None
    store = server.app[SYNCHRONIZER].store
    assert isinstance(store, PostgresStore)
    for _ in range(3000):  # ten minutes at most
        if not await store.outbox_pending():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the projector did not catch up within ten minutes")


@contextlib.asynccontextmanager
async def serving(settings: Settings, root: Path) -> AsyncIterator[VatraServer]:
    if settings.master_key is None and settings.master_key_file is None:
        settings = dataclasses.replace(
            settings, master_key=base64.b64encode(os.urandom(32)).decode())
    async with database_url(settings.database_url, root / "db") as url, VatraServer(
            dataclasses.replace(settings, database_url=url, data_dir=root / "srv",
                                port=0)) as server:
        yield server


async def run(settings: Settings, n: int, rtt: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vatra-bench-reconnect-") as tmp:
        root = Path(tmp)
        async with serving(settings, root) as server:
            assert server.app is not None and server.port is not None
            provision = Provisioner(server.app[IDENTITY], server.http_url,
                                    server.app[SYNCHRONIZER])
            async with DelayProxy(server.port, rtt / 2) as proxy:
                url = f"ws://127.0.0.1:{proxy.port}/v1/sync"
                for name, changes in (("young", 33), ("old", 500)):
                    tablet = await provision.tablet(root / name, f"sw-{name}")
                    hids = households(tablet, n, changes)
                    await SyncClient(tablet, server.url).sync()  # untimed, no proxy
                    await settled(server)
                    fast, plain = SyncClient(tablet, url), SyncClient(tablet, url,
                                                                      fast_path=False)
                    row: dict[str, Any] = {
                        "nothing_new_fast": await measured(proxy, rtt, fast, repeatable=True),
                        "nothing_new_plain": await measured(proxy, rtt, plain,
                                                            repeatable=True)}
                    for label, client in (("return_fast", fast), ("return_plain", plain)):
                        raw = offline_edits(tablet, hids, 10)
                        await settled(server)
                        r = await measured(proxy, rtt, client)
                        r["raw_change_bytes"] = raw
                        r["tcp_up_per_raw"] = round(r["tcp_up"] / raw, 3)
                        r["session_up_per_raw"] = round(r["session_up"] / raw, 3)
                        row[label] = r
                    figures[name] = row
    return {"bench": "reconnect", "households": n, "rtt_s": rtt, "figures": figures}


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} KB"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_reconnect")
    p.add_argument("--households", type=int, default=50)
    p.add_argument("--rtt", type=float, default=0.2, help="round-trip time, seconds")
    args = p.parse_args(argv)
    r = asyncio.run(run(Settings.from_env(), args.households, args.rtt))
    for history, row in r["figures"].items():
        for label, f in row.items():
            rtts = "" if "raw_change_bytes" in f else f" = {f['round_trips']} RTT"
            extra = (f", up/raw changes {f['tcp_up_per_raw']} (session {f['session_up_per_raw']})"
                     if "raw_change_bytes" in f else "")
            print(f"{history:6} {label:18} up {_kb(f['tcp_up']):>9} down {_kb(f['tcp_down']):>9}"
                  f"  {f['wall_s']:.2f} s{rtts}{extra}")
    print(json.dumps(r, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
