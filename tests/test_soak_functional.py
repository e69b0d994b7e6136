"""Soak and fault suite (issue 13): tablets sync in a loop while the server restarts,
PostgreSQL stops and freezes, and a reader stalls. Nothing a tablet saw as saved is lost,
and every tablet converges with the server.

Four enrolled tablets share one household and append to its feed in a loop, each entry
with its own token, and sync after every entry (the SDK retries as it does in the field).
A token counts as saved once the tablet's sync ends with the server's heads covering it
(``Replica.is_saved``). Meanwhile a cycle of faults runs: a server restart (a new process
object on the same port and data directory), PostgreSQL stopped (``pg_ctl stop -m fast``)
and started, PostgreSQL frozen (SIGSTOP) and thawed, and a device that stops reading while
the others write large notes to the household it follows. Then the tablets sync until
they converge, the household is read back from the database, and every saved token must
be there exactly once.

CI runs one cycle (``VATRA_SOAK_ROUNDS=1``, about half a minute). ``VATRA_SOAK_ROUNDS=N``
runs N cycles; ``VATRA_SOAK_REPORT=path`` writes the figures as JSON. The latest long
run's figures are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _faults import Postgres
from _rawpeer import raw_peer
from _scenes import active_household
from automerge.core import Document
from conftest import TEST_MASTER_KEY

from client_sdk import Replica, ServerRejected, SyncClient, SyncFailed
from conflict import Household
from sync_server.app import CONNECTIONS, IDENTITY, STORE, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional

ROUNDS = int(os.environ.get("VATRA_SOAK_ROUNDS", "1"))
#: Seconds of ordinary syncing before and after each fault.
CALM_S = 1.5


@dataclass
class Figures:
    syncs: int = 0
    failed_syncs: int = 0
    entries_written: int = 0
    entries_saved: int = 0
    lost: int = 0
    faults: list[str] = field(default_factory=list)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    converged: bool = False
    seconds: float = 0.0


@dataclass
class Tablet:
    replica: Replica
    name: str
    written: list[str] = field(default_factory=list)
    saved: set[str] = field(default_factory=set)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """The server under test, restartable on the same port and data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: VatraServer | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/v1/sync"

    async def start(self) -> VatraServer:
        self.server = VatraServer(self.settings)
        await self.server.start()
        return self.server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


async def _work(t: Tablet, hid: str, service: Service, stop: asyncio.Event,
                figures: Figures) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        token = f"soak {t.name} {n}"
        with t.replica.edit(hid) as h:
            h.append_activity("visit", token)
        t.written.append(token)
        figures.entries_written += 1
        try:
            summary = await SyncClient(t.replica, service.url, max_attempts=2,
                                       backoff_base=0.05, idle_timeout=10).sync()
            figures.syncs += 1
            figures.codes.update(r.code for r in summary.rejected)
            if t.replica.is_saved(hid):
                t.saved.update(t.written)
            await asyncio.sleep(0.02)
        except SyncFailed as exc:
            figures.failed_syncs += 1
            last = exc.last
            figures.codes[getattr(last, "code", None) or type(last).__name__] += 1
            await asyncio.sleep(0.3)  # a tablet that could not sync waits a little
        except ServerRejected as exc:
            figures.failed_syncs += 1
            figures.codes[exc.code] += 1
            await asyncio.sleep(0.3)


async def _stalled_reader(service: Service, reader: Replica, writer: Replica,
                          hid: str) -> None:
    """A device that stops reading while another appends long entries to the household it
    follows: its outbox overflows and the server cuts it; everyone else goes on."""
    server = service.server
    assert server is not None
    async with raw_peer(service.url, reader, peer_id="stalled-reader") as peer:
        sock = peer.ws.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow link's window
        conn = next(c for c in server.app[CONNECTIONS] if c.peer_id == "stalled-reader")
        # (subscribes it; on a slow window it may be cut already, by the others' fan-out)
        await peer.push(reader.household(hid).doc.fork(), hid, strict=False)
        for i in range(60):  # up to 24 MB of fan-out to a peer that reads nothing
            with writer.edit(hid) as h:
                h.attach(f"scan-{i}.bin", os.urandom(400_000))
            summary = await SyncClient(writer, service.url, max_attempts=3).sync()
            assert summary.rejected == []
            if conn not in server.app[CONNECTIONS]:
                break
        for _ in range(200):  # released (before: never)
            if conn not in server.app[CONNECTIONS]:
                break
            await asyncio.sleep(0.05)
        assert conn not in server.app[CONNECTIONS], "the stalled reader was never released"


async def test_nothing_saved_is_lost_through_restarts_outages_and_stalls(
        postgres: Postgres, tmp_path) -> None:
    started = time.monotonic()
    service = Service(Settings(database_url=postgres.url, data_dir=tmp_path / "srv",
                               port=_free_port(), master_key=TEST_MASTER_KEY,
                               database_timeout=2, outbox_frames=16))
    server = await service.start()
    figures = Figures()
    try:
        base = Provisioner(server.app[IDENTITY], server.http_url, server.app[SYNCHRONIZER])

        class Here(Provisioner):
            async def tablet(self, name, user_id=None, **kw):  # type: ignore[override]
                return await super().tablet(tmp_path / name, user_id or name, **kw)

        provision = Here(base.identity, base.http_url, base.synchronizer)
        hid, _, replicas = await active_household(
            server, provision, ("nurse", {}), ("counsellor", {}), ("case", {}))
        tablets = [Tablet(r, r.credentials.user_id) for r in replicas]  # type: ignore[union-attr]
        reader = await provision.tablet("reader", "ana")  # another device of ana's
        reader.track(hid)
        await SyncClient(reader, service.url).sync()

        stop = asyncio.Event()
        workers = [asyncio.create_task(_work(t, hid, service, stop, figures))
                   for t in tablets[1:]]  # ana's tablet writes the large notes below
        for _ in range(ROUNDS):
            await asyncio.sleep(CALM_S)
            figures.faults.append("server restart")
            await service.stop()
            await asyncio.sleep(0.5)
            await service.start()
            await asyncio.sleep(CALM_S)
            figures.faults.append("postgres stopped 2 s")
            await postgres.stop()
            await asyncio.sleep(2)
            await postgres.start()
            await asyncio.sleep(CALM_S)
            figures.faults.append("postgres frozen 2 s")
            postgres.freeze()
            try:
                await asyncio.sleep(2)
            finally:
                postgres.thaw()
            await asyncio.sleep(CALM_S)
            figures.faults.append("a reader stalls")
            await _stalled_reader(service, reader, tablets[0].replica, hid)
        await asyncio.sleep(CALM_S)
        stop.set()
        await asyncio.gather(*workers)

        for _ in range(10):  # converge: everyone syncs until all hold the server's heads
            for t in tablets:
                with contextlib.suppress(SyncFailed):
                    await SyncClient(t.replica, service.url, max_attempts=3).sync()
                if t.replica.is_saved(hid):
                    t.saved.update(t.written)
            live = service.server.app[SYNCHRONIZER].registry  # type: ignore[union-attr]
            actor = await live.get(hid)
            assert actor is not None
            heads = sorted(actor.doc.get_heads())
            if all(sorted(t.replica.household(hid).doc.get_heads()) == heads for t in tablets):
                figures.converged = True
                break
        stored = await service.server.app[STORE].load(hid)  # type: ignore[union-attr]
        feed = Household(Document.load(stored.document_bytes()), hid).activity()
        texts = collections.Counter(e.get("text") for e in feed)
        saved = set().union(*(t.saved for t in tablets))
        figures.entries_saved = len(saved)
        figures.lost = sum(1 for token in saved if texts[token] != 1)
    finally:
        figures.seconds = round(time.monotonic() - started, 1)
        report = {**figures.__dict__, "codes": dict(figures.codes)}
        print("soak:", json.dumps(report))
        path = os.environ.get("VATRA_SOAK_REPORT")
        if path:
            await asyncio.to_thread(Path(path).write_text, json.dumps(report, indent=2))
        await service.stop()

    assert figures.lost == 0, figures
    assert figures.converged, figures
    assert figures.entries_saved > 0 and figures.syncs > 0, figures
