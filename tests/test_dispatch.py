"""The per-connection scheduler (pure logic: a fake channel and a fake synchronizer).

One household's messages run in order; different households run at once, bounded.
"""

from __future__ import annotations

import asyncio

import cbor2

from sync_server.gateway.connection import Connection, ConnectionState
from sync_server.gateway.dispatch import serve_connection
from sync_server.protocol import wire
from sync_server.protocol.errors import DocumentError, ErrorCode

A, B, C = "2fiH6LVoDnXEUsYNHowu3UTBwJqk", "28aAsRt3GrXQfsoyNe34HFwh2NPZ", "2Y2USbTKGw3Q6MpUr1iuXstdBAb4"


class FakeChannel:
    def __init__(self, frames: list[bytes]) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        for f in frames:
            self.inbox.put_nowait(f)
        self.sent: list[dict] = []
        self.closed_with: str | None = None

    async def send(self, frame: bytes) -> None:
        self.sent.append(cbor2.loads(frame))

    async def receive(self) -> bytes | None:
        return await self.inbox.get()

    async def close(self, reason: str) -> None:
        self.closed_with = reason
        self.inbox.put_nowait(None)


class FakeSynchronizer:
    server_peer_id = "vatra-test"

    def __init__(self) -> None:
        self.log: list[tuple[str, str, bytes]] = []
        self.audited: list[tuple[str, str | None, dict]] = []
        self.release: dict[bytes, asyncio.Event] = {}
        self.fail_on: bytes | None = None

    async def record(self, conn: Connection, kind: str, household_id: str | None = None,
                     **detail) -> None:
        self.audited.append((kind, household_id, detail))

    async def handle(self, conn: Connection, msg: wire.Sync) -> None:
        self.log.append(("start", msg.document_id, msg.data))
        await self.release.setdefault(msg.data, asyncio.Event()).wait()
        if msg.data == self.fail_on:
            raise DocumentError("bad sync data", code=ErrorCode.MALFORMED_SYNC_DATA,
                                document_id=msg.document_id)
        self.log.append(("end", msg.document_id, msg.data))


def frames(*msgs: tuple[str, bytes]) -> list[bytes]:
    out = [wire.encode(wire.Join("device-1"))]
    out += [wire.encode(wire.Sync("device-1", "vatra-test", hid, data)) for hid, data in msgs]
    return out


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def start(channel: FakeChannel, sync: FakeSynchronizer, **kw) -> tuple[Connection, asyncio.Task]:
    conn = Connection(channel, server_peer_id=sync.server_peer_id, outbox_frames=64)
    conn.start()
    task = asyncio.create_task(serve_connection(conn, sync, **kw))
    await settle()
    return conn, task


async def test_one_household_in_order_others_concurrently() -> None:
    sync = FakeSynchronizer()
    channel = FakeChannel(frames((A, b"a1"), (A, b"a2"), (B, b"b1")))
    _, task = await start(channel, sync)
    assert ("start", A, b"a1") in sync.log and ("start", B, b"b1") in sync.log
    assert ("start", A, b"a2") not in sync.log  # waits for a1
    sync.release[b"b1"].set()
    await settle()
    assert ("end", B, b"b1") in sync.log and ("start", A, b"a2") not in sync.log
    sync.release[b"a1"].set()
    await settle()
    assert ("start", A, b"a2") in sync.log
    sync.release[b"a2"].set()
    channel.inbox.put_nowait(None)
    await task
    starts_a = [d for kind, h, d in sync.log if kind == "start" and h == A]
    assert starts_a == [b"a1", b"a2"]


async def test_the_in_flight_limit_stops_reading() -> None:
    sync = FakeSynchronizer()
    channel = FakeChannel(frames((A, b"a1"), (B, b"b1"), (C, b"c1")))
    _, task = await start(channel, sync, max_in_flight=2)
    assert {d for kind, _, d in sync.log if kind == "start"} == {b"a1", b"b1"}
    sync.release[b"a1"].set()
    await settle()
    assert ("start", C, b"c1") in sync.log
    for key in (b"b1", b"c1"):
        sync.release[key].set()
    channel.inbox.put_nowait(None)
    await task


async def test_a_document_error_closes_only_after_sending_it() -> None:
    sync = FakeSynchronizer()
    sync.fail_on = b"bad"
    channel = FakeChannel(frames((A, b"bad"), (B, b"b1")))
    conn, task = await start(channel, sync)
    sync.release[b"b1"].set()
    sync.release[b"bad"].set()
    await asyncio.wait_for(task, timeout=5)
    await conn.closed.wait()
    errors = [m for m in channel.sent if m["type"] == "error"]
    assert [(e["code"], e["documentId"]) for e in errors] == [("malformed-sync-data", A)]
    assert channel.closed_with == "malformed-sync-data"
    assert conn.state is ConnectionState.CLOSED
    assert ("end", B, b"b1") in sync.log  # the other household was not disturbed
    assert sync.audited == [("session-closed", A, {"code": "malformed-sync-data"})]
