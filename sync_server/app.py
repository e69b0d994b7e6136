"""The aiohttp application and :class:`VatraServer`, the long-lived service around it.

Routes: ``GET /v1/sync`` (WebSocket, automerge-repo messages), ``GET /healthz``
(process up), ``GET /readyz`` (database reachable).

``VatraServer`` works as ``async with VatraServer(settings) as server`` or
with ``await start()`` / ``await stop()``; ``server.started`` is set once it
accepts connections and ``server.url`` says where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from nacl.signing import SigningKey, VerifyKey
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.api import approvals
from sync_server.api import read as webapi
from sync_server.auth.enrollment import IDENTITY, LIMITER, SERVER_KEY, FailureLimiter, enroll
from sync_server.auth.identity import REVOCATIONS, Device, IdentityStore, load_server_identity
from sync_server.config import Settings
from sync_server.gateway.connection import Connection
from sync_server.gateway.dispatch import TokenBucket, serve_connection
from sync_server.projection.projector import Projector
from sync_server.protocol.channel import WebSocketChannel
from sync_server.protocol.errors import ErrorCode, ProtocolError, VatraError
from sync_server.protocol.session import accept_session
from sync_server.store.database import database_url, make_engine, migrate
from sync_server.store.keys import load_keyring
from sync_server.store.nonces import NonceStore
from sync_server.store.postgres import PostgresStore
from sync_server.store.quarantine import Quarantine
from sync_server.sync.households import HouseholdRegistry
from sync_server.sync.pipeline import Synchronizer

log = logging.getLogger(__name__)

SYNCHRONIZER = web.AppKey("synchronizer", Synchronizer)
SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
CONNECTIONS = web.AppKey("connections", set)
STORE = web.AppKey("store", PostgresStore)
PROJECTOR = web.AppKey("projector", Projector)



async def sync_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    synchronizer = request.app[SYNCHRONIZER]
    identity = request.app[IDENTITY]
    ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes + 64 * 1024,
                               heartbeat=30)
    await ws.prepare(request)
    plain = WebSocketChannel(ws, settings.max_frame_bytes)
    devices: dict[str, Device] = {}

    async def lookup(device_id: str) -> VerifyKey | None:
        device = await identity.device(device_id)
        if device is None:
            return None
        devices[device_id] = device
        return VerifyKey(device.signing_key)

    try:
        channel, device_id = await accept_session(plain, request.app[SERVER_KEY], lookup)
    except ProtocolError as err:  # a refused handshake (SessionError), or e.g. a text frame
        log.info("session refused: %s", err.code)
        await plain.close(str(err.code))
        return ws
    device = devices[device_id]
    conn = Connection(channel, server_peer_id=synchronizer.server_peer_id,
                      outbox_frames=settings.outbox_frames, device=device)
    conn.start()
    # Revocation is a barrier. The connection is where the revocation listener and sweep
    # look before the flag is read again (the lookup at ``hello`` may be long past: a
    # thief can hold back ``auth``), so a revocation committed at any moment either shows
    # in this read or reaches the connection.
    request.app[CONNECTIONS].add(conn)
    try:
        if device.revoked or await identity.revoked_at(device.id) is not None:
            # The device proved it holds the key: tell it (sealed), so its SDK wipes itself.
            conn.revoke()
            await _refuse_revoked(conn)
            await synchronizer.record(conn, "session-refused",
                                      code=str(ErrorCode.DEVICE_REVOKED))
            return ws
        live = sum(1 for c in request.app[CONNECTIONS] if c.device and c.device.id == device.id)
        if live > settings.sessions_per_device:
            log.warning("device %s: too many concurrent sessions", device.id)
            conn.send_error(VatraError(f"at most {settings.sessions_per_device} sessions per "
                                       f"device", code=ErrorCode.TOO_MANY_SESSIONS))
            await conn.close(str(ErrorCode.TOO_MANY_SESSIONS))
            return ws
        await synchronizer.record(conn, "session-opened")
        await serve_connection(conn, synchronizer,
                               limit=TokenBucket(settings.messages_per_second,
                                                 settings.message_burst))
    finally:
        request.app[CONNECTIONS].discard(conn)
        synchronizer.registry.unsubscribe(conn)
    return ws


async def _refuse_revoked(conn: Connection) -> None:
    conn.send_error(VatraError("this device was revoked; its local data must be deleted",
                               code=ErrorCode.DEVICE_REVOKED))
    await conn.close(str(ErrorCode.DEVICE_REVOKED))


def _cut(app: web.Application, device_ids: set[str], pending: set[asyncio.Task[None]]) -> None:
    """Cut every live connection of ``device_ids``: at once nothing more is read, written
    or sent (``Connection.revoke``), then the sealed notice and the close."""
    for conn in list(app[CONNECTIONS]):
        if conn.device is not None and conn.device.id in device_ids and not conn.revoked:
            log.info("device %s revoked: closing connection %s", conn.device.id, conn.id)
            conn.revoke()
            task = asyncio.get_running_loop().create_task(_refuse_revoked(conn))
            pending.add(task)
            task.add_done_callback(pending.discard)


#: Seconds between sweeps for revoked devices among live connections (the backstop of
#: the NOTIFY listener: a notification lost with a database connection still cuts).
REVOCATION_SWEEP_SECONDS = 0.5


async def _revocations(app: web.Application) -> AsyncIterator[None]:
    """Listen for ``NOTIFY vatra_revocations`` (from any process on this database) and cut
    the revoked device's live sessions at once; sweep the live sessions for revoked devices
    every :data:`REVOCATION_SWEEP_SECONDS` as well."""
    pending: set[asyncio.Task[None]] = set()

    def on_revoked(_conn: object, _pid: int, _channel: str, device_id: str) -> None:
        _cut(app, {device_id}, pending)

    async def sweep() -> None:
        identity = app[IDENTITY]
        while True:
            await asyncio.sleep(REVOCATION_SWEEP_SECONDS)
            live = {c.device.id for c in app[CONNECTIONS] if c.device is not None}
            try:
                revoked = await identity.revoked_among(live)
            except Exception:
                log.warning("revocation sweep: the database did not answer; retrying")
                continue
            _cut(app, revoked, pending)

    async with app[ENGINE].connect() as sa_conn:
        raw = (await sa_conn.get_raw_connection()).driver_connection
        await raw.add_listener(REVOCATIONS, on_revoked)
        sweeper = asyncio.create_task(sweep(), name="vatra-revocation-sweep")
        try:
            yield
        finally:
            sweeper.cancel()
            await raw.remove_listener(REVOCATIONS, on_revoked)
            for task in pending:
                task.cancel()


async def _projecting(app: web.Application) -> AsyncIterator[None]:
    """The in-process projector: woken by every commit of changes (sync_server/projector.py)."""
    projector = app[PROJECTOR]
    app[STORE].on_commit(projector.notify)
    task = asyncio.create_task(projector.run(), name="vatra-projector")
    try:
        yield
    finally:
        await projector.stopped(task)  # the pass in progress ends; its commit is not cut


async def metrics(_: web.Request) -> web.Response:
    """Prometheus metrics (no personal data in names or labels)."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[ENGINE].connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception:
        return web.json_response({"status": "database unavailable"}, status=503)
    return web.json_response({"status": "ready"})


def build_app(settings: Settings, engine: AsyncEngine, server_key: SigningKey) -> web.Application:
    # master keys: sync_server/store/keys.py; every resident household's data key cached
    store = PostgresStore(engine, load_keyring(
        settings, cache_size=max(4096, 2 * settings.resident_households)))
    registry = HouseholdRegistry(store, max_resident=settings.resident_households,
                                 max_bytes=settings.resident_bytes)
    app = web.Application(client_max_size=settings.max_frame_bytes)
    app[SETTINGS] = settings
    app[ENGINE] = engine
    identity = IdentityStore(engine, store.audit)
    app[SYNCHRONIZER] = Synchronizer(registry, store, f"vatra-{uuid.uuid4().hex[:12]}", identity,
                                     store.audit, Quarantine(store, settings.quarantine),
                                     limits=settings.limits)
    app[CONNECTIONS] = set()
    app.router.add_get("/v1/sync", sync_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app[IDENTITY] = identity
    app[SERVER_KEY] = server_key
    app[LIMITER] = FailureLimiter()
    app.router.add_post("/v1/enroll", enroll)
    approvals.add_routes(app, NonceStore(engine))
    webapi.add_routes(app)
    app.cleanup_ctx.append(_revocations)
    app[STORE] = store
    app[PROJECTOR] = Projector(engine, store, registry=registry)
    if settings.projector:
        app.cleanup_ctx.append(_projecting)
    app.router.add_get("/metrics", metrics)
    app.on_shutdown.append(_close_connections)
    app.on_cleanup.append(_close_store)
    return app


async def _close_store(app: web.Application) -> None:
    await app[STORE].close()


async def _close_connections(app: web.Application) -> None:
    for conn in list(app[CONNECTIONS]):
        conn.send_error(VatraError("server is shutting down; reconnect later",
                                   code=ErrorCode.SERVER_SHUTTING_DOWN))
        await conn.close(str(ErrorCode.SERVER_SHUTTING_DOWN))


class AccessLogger(AbstractAccessLogger):
    """One line per HTTP request: method, path without its query string (a list filter
    may hold a name), status, duration. No headers, no client address."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1f ms", request.method, request.path, response.status,
                         time * 1000)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; with port 0 the OS picks a free one (tests, demo, bench)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(512)
    sock.setblocking(False)
    return sock


class VatraServer:
    """The sync server as a service: database (embedded or given), migrations, HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = asyncio.Event()
        self.port: int | None = None
        self.app: web.Application | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/v1/sync"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        try:
            await self._stack.enter_async_context(self._run())
        except BaseException:
            await self._stack.aclose()
            raise
        self.started.set()

    async def stop(self) -> None:
        await self._stack.aclose()
        self.started.clear()

    async def __aenter__(self) -> VatraServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        async with database_url(self.settings.database_url, self.settings.data_dir) as url:
            engine = make_engine(url)
            try:
                await migrate(engine)
                server_key = load_server_identity(self.settings.data_dir,
                                                  self.settings.server_key_file)
                self.app = build_app(self.settings, engine, server_key)
                # A wrong master key must stop the server before it listens, not at first use.
                await self.app[STORE].verify_master_key()
                runner = web.AppRunner(self.app, handle_signals=False, access_log_class=AccessLogger)
                await runner.setup()
                try:
                    sock = bind_socket(self.settings.host, self.settings.port)
                    self.port = sock.getsockname()[1]
                    await web.SockSite(runner, sock).start()
                    yield
                finally:
                    await runner.cleanup()
            finally:
                await engine.dispose()
