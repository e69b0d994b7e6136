"""Revocation as a barrier: a revoked device's live sessions are cut within a second.

Two ways reach every server on the database: ``vatra device revoke`` commits the flag and
``NOTIFY vatra_revocations``, which this service hears and acts on at once; and every
:data:`SWEEP_SECONDS` it asks the database which of its live devices are revoked, so a
notification lost with its connection still cuts (and the listening connection is
re-established after an outage: ``sync_server/gateway/listening.py``). A cut connection sends nothing more
but the sealed ``device-revoked`` (its SDK wipes the replica) and the pipeline stores
none of its batches.

Start and stop it with ``async with Revocations(...)`` (the app owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection

from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.auth.identity import REVOCATIONS, IdentityStore
from sync_server.gateway.connection import Connection
from sync_server.gateway.listening import Listening
from sync_server.protocol.errors import ErrorCode, VatraError

log = logging.getLogger(__name__)

#: Seconds between sweeps for revoked devices among live connections.
SWEEP_SECONDS = 0.5


async def refuse_revoked(conn: Connection) -> None:
    """Tell a revoked device so (sealed) and close its connection."""
    conn.send_error(VatraError("this device was revoked; its local data must be deleted",
                               code=ErrorCode.DEVICE_REVOKED))
    await conn.close(str(ErrorCode.DEVICE_REVOKED))


class Revocations:
    def __init__(self, engine: AsyncEngine, identity: IdentityStore,
                 connections: Collection[Connection]) -> None:
        self._engine = engine
        self._identity = identity
        self._connections = connections
        self._pending: set[asyncio.Task[None]] = set()

    def cut(self, device_ids: Collection[str]) -> None:
        """Cut every live connection of ``device_ids``: at once nothing more is read,
        written or sent (``Connection.revoke``), then the sealed notice and the close."""
        for conn in list(self._connections):
            if conn.device is not None and conn.device.id in device_ids and not conn.revoked:
                log.info("device %s revoked: closing connection %s", conn.device.id, conn.id)
                conn.revoke()
                task = asyncio.get_running_loop().create_task(refuse_revoked(conn))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def sweep_once(self) -> None:
        live = {c.device.id for c in self._connections if c.device is not None}
        self.cut(await self._identity.revoked_among(live))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep_once()
            except Exception:
                log.warning("revocation sweep: the database did not answer; retrying")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        listening = Listening(self._engine, "revocations",
                              {REVOCATIONS: lambda device_id: self.cut({device_id})},
                              on_reconnect=self.sweep_once)
        async with listening.running():
            sweeper = asyncio.create_task(self._sweep(), name="vatra-revocation-sweep")
            try:
                yield
            finally:
                sweeper.cancel()
                for task in self._pending:
                    task.cancel()
