"""``GET /v1/sync``: one peer from its socket to the pipeline.

The WebSocket is upgraded, the end-to-end session is run (sync_server/protocol/session.py;
an unknown device and a bad signature get the same refusal), the device is checked
against revocation again and against its session limit, its grants are made, and its
frames are handed to the dispatch loop (sync_server/gateway/dispatch.py) until it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web
from nacl.signing import SigningKey, VerifyKey
from prometheus_client import Counter, Gauge, Histogram

from sync_server.auth.identity import Device, IdentityStore
from sync_server.gateway.channel import WebSocketChannel
from sync_server.gateway.connection import Connection
from sync_server.gateway.dispatch import TokenBucket, serve_connection
from sync_server.gateway.revocations import refuse_revoked
from sync_server.protocol.errors import ErrorCode, ProtocolError, StorageError, VatraError
from sync_server.protocol.session import HANDSHAKE_TIMEOUT, accept_session
from sync_server.sync.pipeline import Synchronizer

log = logging.getLogger(__name__)


#: Seconds the handshake's device lookup may take: half the handshake's own bound.
LOOKUP_SECONDS = HANDSHAKE_TIMEOUT / 2

# Labels are error codes only: never a device, a user or a household.
SESSIONS_OPENED = Counter("vatra_sessions_opened_total", "Sessions opened (handshake done)")
SESSIONS_REFUSED = Counter("vatra_sessions_refused_total",
                           "Sessions refused or not opened, by code", ["code"])
SESSIONS_ACTIVE = Gauge("vatra_sessions_active", "Sessions open now")
SESSION_SECONDS = Histogram("vatra_session_seconds", "How long sessions lasted",
                            buckets=(.1, .5, 1, 5, 15, 60, 300, 1800, 3600, 14400))

@dataclass(frozen=True, slots=True)
class PeerLimits:
    """What one peer may use (settings: ``VATRA_MAX_FRAME_BYTES`` …, sync_server/config.py)."""

    max_frame_bytes: int
    outbox_frames: int
    messages_per_second: float
    message_burst: int
    sessions_per_device: int
    heartbeat_seconds: float = 30.0
    fast_path: bool = True  # take the reconnect fast path when a device offers it


@dataclass
class Gateway:
    """The sync endpoint and the set of live connections (revocation and shutdown reach
    them through it)."""

    pipeline: Synchronizer
    identity: IdentityStore
    server_key: SigningKey
    limits: PeerLimits
    connections: set[Connection] = field(default_factory=set)
    #: Sockets still in the session handshake (not yet connections): closed at shutdown,
    #: which would otherwise wait for their handshake to time out.
    handshaking: set[WebSocketChannel] = field(default_factory=set)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/sync", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        lim = self.limits
        ws = web.WebSocketResponse(max_msg_size=lim.max_frame_bytes + 64 * 1024,
                                   heartbeat=lim.heartbeat_seconds)
        await ws.prepare(request)
        plain = WebSocketChannel(ws, lim.max_frame_bytes)
        devices: dict[str, Device] = {}

        async def lookup(device_id: str) -> VerifyKey | None:
            # Bounded well within the handshake's own time: a database slow enough to run
            # the handshake out of time must be answered storage-failure (retry), not the
            # handshake-failed that tells a device its identity is refused.
            try:
                async with asyncio.timeout(LOOKUP_SECONDS):
                    device = await self.identity.device(device_id)
            except TimeoutError as exc:
                log.warning("session: the device lookup took over %.0f s", LOOKUP_SECONDS)
                raise StorageError("the server's database is slow; retry later") from exc
            if device is None:
                return None
            devices[device_id] = device
            return VerifyKey(device.signing_key)

        self.handshaking.add(plain)
        try:
            channel, device_id = await accept_session(plain, self.server_key, lookup)
        except ProtocolError as err:  # a refused handshake (SessionError), or a text frame
            log.info("session refused: %s", err.code, extra={"code": str(err.code)})
            SESSIONS_REFUSED.labels(str(err.code)).inc()
            await plain.close(str(err.code))
            return ws
        except StorageError as err:  # the device lookup's database did not answer: the
            # device was told storage-failure (retry), never that its identity is refused
            log.info("session not opened: %s", err.code, extra={"code": str(err.code)})
            SESSIONS_REFUSED.labels(str(err.code)).inc()
            await plain.close(str(err.code))
            return ws
        finally:
            self.handshaking.discard(plain)
        device = devices[device_id]
        transport = request.transport
        conn = Connection(channel, server_peer_id=self.pipeline.server_peer_id,
                          outbox_frames=lim.outbox_frames, device=device,
                          cut=transport.abort if transport is not None else None)
        conn.start()
        # Revocation is a barrier. The connection is where revocations are delivered
        # before the flag is read again (the lookup at ``hello`` may be long past: a thief
        # can hold back ``auth``), so a revocation committed at any moment either shows in
        # this read or reaches the connection.
        self.connections.add(conn)
        try:
            try:
                revoked = device.revoked or await self.identity.revoked_at(device.id) is not None
            except StorageError as err:  # the database went away since the lookup: retry
                conn.send_error(err)
                await conn.close(str(err.code))
                return ws
            if revoked:
                # The device proved it holds the key: tell it (sealed), so its SDK wipes.
                SESSIONS_REFUSED.labels(str(ErrorCode.DEVICE_REVOKED)).inc()
                conn.revoke()
                await refuse_revoked(conn)
                await self.pipeline.record(conn, "session-refused",
                                           code=str(ErrorCode.DEVICE_REVOKED))
                return ws
            live = sum(1 for c in self.connections if c.device and c.device.id == device.id)
            if live > lim.sessions_per_device:
                log.warning("device %s: too many concurrent sessions", device.id)
                SESSIONS_REFUSED.labels(str(ErrorCode.TOO_MANY_SESSIONS)).inc()
                conn.send_error(VatraError(f"at most {lim.sessions_per_device} sessions per "
                                           f"device", code=ErrorCode.TOO_MANY_SESSIONS))
                await conn.close(str(ErrorCode.TOO_MANY_SESSIONS))
                return ws
            conn.grants = self.pipeline.grants(device)
            await self.pipeline.record(conn, "session-opened")
            opened = time.monotonic()
            SESSIONS_OPENED.inc()
            SESSIONS_ACTIVE.inc()
            log.info("session opened", extra={"device_id": device.id, "connection": conn.id})
            try:
                await serve_connection(conn, self.pipeline, limit=TokenBucket(
                    lim.messages_per_second, lim.message_burst), fast_path=lim.fast_path)
            finally:
                seconds = time.monotonic() - opened
                SESSIONS_ACTIVE.dec()
                SESSION_SECONDS.observe(seconds)
                log.info("session closed", extra={
                    "device_id": device.id, "connection": conn.id,
                    "seconds": round(seconds, 3), "bytes_in": conn.bytes_in,
                    "bytes_out": conn.bytes_out, "households": len(conn.sync.documents)})
        finally:
            self.connections.discard(conn)
            self.pipeline.registry.unsubscribe(conn)
        return ws

    async def close_all(self) -> None:
        """Tell every live peer the server is stopping, and close it; a socket still in
        its handshake is closed with the same reason (it has no session to tell). All at
        once: each close waits (at most 5 s) for its peer, so one after the other, n
        peers that do not answer would hold the stop n times as long."""
        reason = str(ErrorCode.SERVER_SHUTTING_DOWN)
        connections = list(self.connections)
        for conn in connections:
            conn.send_error(VatraError("server is shutting down; reconnect later",
                                       code=ErrorCode.SERVER_SHUTTING_DOWN))
        await asyncio.gather(*(plain.close(reason) for plain in list(self.handshaking)),
                             *(conn.close(reason) for conn in connections))
