"""Team changes reach live sessions within a second: access follows a household's team.

A commit that sets a household's team (a registration, a team set while the household
is being registered, an approved ``change_team``) ``NOTIFY``s ``vatra_team`` with the
household id in the same transaction (``sync_server/store/group_commit.py``). Every
server listens and has its live sessions decide again (:meth:`Synchronizer.team_changed`):
a removed member's session stops receiving the household at once, a new member's
session may sync it, and finds it in the caseload of its next session. The server that
commits also tells its own sessions directly (``Synchronizer.on_team_change``), so they
follow whatever becomes of the notification. The listening connection is re-established
after an outage (``sync_server/gateway/listening.py``), and then every household a live
session holds is decided again, for the notifications missed meanwhile.

Start and stop it with ``async with TeamChanges(...).running()`` (the app owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection

from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.gateway.connection import Connection
from sync_server.gateway.listening import Listening
from sync_server.store.contract import TEAM_CHANGES
from sync_server.sync.pipeline import Synchronizer

log = logging.getLogger(__name__)


class TeamChanges:
    def __init__(self, engine: AsyncEngine, synchronizer: Synchronizer,
                 connections: Collection[Connection]) -> None:
        self._engine = engine
        self._synchronizer = synchronizer
        self._connections = connections
        self._pending: set[asyncio.Task[None]] = set()

    async def _apply(self, household_id: str) -> None:
        try:
            await self._synchronizer.team_changed(household_id, list(self._connections))
        except Exception:
            log.exception("household %s: applying a team change to live sessions failed",
                          household_id)

    def changed(self, household_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._apply(household_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def catch_up(self) -> None:
        """After an outage of the listening connection: every household a live session
        holds is decided again (a team change notified meanwhile was not heard)."""
        held = {hid for conn in self._connections
                for hid in (*conn.sync.documents, *conn.sync.watched)}
        for hid in sorted(held):
            await self._apply(hid)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        listening = Listening(self._engine, "teams", {TEAM_CHANGES: self.changed},
                              on_reconnect=self.catch_up)
        async with listening.running():
            self._synchronizer.on_team_change = self.changed
            try:
                yield
            finally:
                self._synchronizer.on_team_change = None
                for task in self._pending:
                    task.cancel()
