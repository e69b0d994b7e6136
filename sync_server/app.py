"""Where Vatra is put together: every service built and wired, every long-lived task owned.

Nothing else builds a service or starts a task that outlives a request: the store and
its group commit, the resident households, the pipeline, the gateway and its live
connections, revocations, the projector, and the HTTP faces, each given what it needs.
The typed keys below let tests and developer tools reach the services of a running
server; the HTTP handlers never use them (each face gets its dependencies through its
``routes(...)`` function).

Routes: ``GET /v1/sync`` (WebSocket, sync_server/gateway), ``POST /v1/enroll``, the
supervisors' and the web tier's APIs, ``/v1/openapi.json``, ``/healthz``, ``/readyz``,
``/metrics`` (sync_server/api).

``VatraServer`` works as ``async with VatraServer(settings) as server`` or with
``await start()`` / ``await stop()``; ``server.started`` is set once it accepts
connections and ``server.url`` says where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from nacl.signing import SigningKey
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.api import approvals, directory, enrollment, openapi, ops, read
from sync_server.api.auth import SignedRequests
from sync_server.auth.enrollment import FailureLimiter
from sync_server.auth.identity import IdentityStore, load_server_identity
from sync_server.config import Settings
from sync_server.gateway.changes import Changes
from sync_server.gateway.connection import Connection
from sync_server.gateway.endpoint import Gateway, PeerLimits
from sync_server.gateway.revocations import Revocations
from sync_server.gateway.teams import TeamChanges
from sync_server.projection.projector import Projector
from sync_server.store.database import open_database
from sync_server.store.keys import load_keyring
from sync_server.store.nonces import NonceStore
from sync_server.store.postgres import PostgresStore
from sync_server.store.quarantine import Quarantine
from sync_server.sync import cpu
from sync_server.sync.households import HouseholdRegistry
from sync_server.sync.pipeline import Synchronizer

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
STORE = web.AppKey("store", PostgresStore)
IDENTITY = web.AppKey("identity", IdentityStore)
SERVER_KEY = web.AppKey("server_key", SigningKey)
SYNCHRONIZER = web.AppKey("synchronizer", Synchronizer)
GATEWAY = web.AppKey("gateway", Gateway)
CONNECTIONS = web.AppKey("connections", set[Connection])
PROJECTOR = web.AppKey("projector", Projector)


#: Connections of the server's database pool in use (the latest server of this process).
POOL_IN_USE = Gauge("vatra_db_pool_in_use", "Database connections checked out of the pool")


def build_app(settings: Settings, engine: AsyncEngine, server_key: SigningKey) -> web.Application:
    POOL_IN_USE.set_function(lambda: float(_checked_out(engine)))
    # master keys: sync_server/store/keys.py; every resident household's data key cached
    store = PostgresStore(engine, load_keyring(
        settings, cache_size=max(4096, 2 * settings.resident_households)))
    registry = HouseholdRegistry(store, max_resident=settings.resident_households,
                                 max_bytes=settings.resident_bytes)
    identity = IdentityStore(engine, store.audit)
    pipeline = Synchronizer(registry, store, f"vatra-{uuid.uuid4().hex[:12]}", identity,
                            store.audit, Quarantine(store, settings.quarantine),
                            limits=settings.limits)
    gateway = Gateway(pipeline, identity, server_key, PeerLimits(
        max_frame_bytes=settings.max_frame_bytes, outbox_frames=settings.outbox_frames,
        messages_per_second=settings.messages_per_second, message_burst=settings.message_burst,
        sessions_per_device=settings.sessions_per_device,
        heartbeat_seconds=settings.heartbeat_seconds, fast_path=settings.fast_path))
    revocations = Revocations(engine, identity, gateway.connections)
    teams = TeamChanges(engine, pipeline, gateway.connections)
    changes = Changes(engine, pipeline)
    projector = Projector(engine, store, registry=registry)
    signed = SignedRequests(identity, NonceStore(engine))

    app = web.Application(client_max_size=settings.max_frame_bytes)
    app[SETTINGS], app[ENGINE], app[STORE], app[IDENTITY] = settings, engine, store, identity
    app[SERVER_KEY], app[SYNCHRONIZER], app[GATEWAY] = server_key, pipeline, gateway
    app[CONNECTIONS], app[PROJECTOR] = gateway.connections, projector
    app.add_routes([
        *gateway.routes(),
        *enrollment.routes(identity, server_key, FailureLimiter(), settings.trusted_proxies),
        *approvals.routes(pipeline, engine, signed),
        *read.routes(engine, signed),
        *directory.routes(engine, signed),
        *openapi.routes(),
        *ops.routes(engine),
    ])

    async def revoking(_: web.Application) -> AsyncIterator[None]:
        async with revocations.running(), teams.running(), changes.running():
            yield

    async def projecting(_: web.Application) -> AsyncIterator[None]:
        """The in-process projector, woken by every commit of changes."""
        store.on_commit(projector.notify)
        task = asyncio.create_task(projector.run(), name="vatra-projector")
        try:
            yield
        finally:
            await projector.stopped(task)  # the pass in progress ends; its commit is not cut

    async def closing_connections(_: web.Application) -> None:
        await gateway.close_all()

    async def closing_store(_: web.Application) -> None:
        await store.close()

    app.cleanup_ctx.append(revoking)
    if settings.projector:
        app.cleanup_ctx.append(projecting)
    app.on_shutdown.append(closing_connections)
    app.on_cleanup.append(closing_store)
    return app


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
        # Work on big households runs in worker threads (sync_server/sync/cpu.py); the
        # event loop gets the GIL back within this interval (Python's default is 5 ms).
        sys.setswitchinterval(cpu.SWITCH_INTERVAL)
        async with open_database(self.settings.database_url, self.settings.data_dir,
                                 database_timeout=self.settings.database_timeout) as engine:
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


def _checked_out(engine: AsyncEngine) -> int:
    checked_out = getattr(engine.sync_engine.pool, "checkedout", None)
    return int(checked_out()) if callable(checked_out) else 0
