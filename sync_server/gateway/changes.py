"""Changes committed by any instance reach the sessions of every instance.

Several instances may serve one household (docs/instances.md). Every commit that logs
changes ``NOTIFY``s ``vatra_changes`` with the household id and its latest seq, in the
same transaction (``sync_server/store/group_commit.py``). Every instance listens: a copy
it holds that lacks those changes is marked behind and, when sessions follow the
household, reloaded from the log and answered from at once
(:meth:`Synchronizer.changed_elsewhere`). After an outage of the listening connection
every resident copy is marked behind, for the notifications missed meanwhile.

Start and stop it with ``async with Changes(...).running()`` (the app owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.gateway.listening import Listening
from sync_server.store.contract import CHANGES
from sync_server.sync.pipeline import Synchronizer

log = logging.getLogger(__name__)


class Changes:
    def __init__(self, engine: AsyncEngine, synchronizer: Synchronizer) -> None:
        self._engine = engine
        self._synchronizer = synchronizer
        self._pending: set[asyncio.Task[None]] = set()

    async def _apply(self, household_id: str, seq: int | None) -> None:
        try:
            await self._synchronizer.changed_elsewhere(household_id, seq)
        except Exception:
            log.exception("household %s: bringing a copy up to another instance's commit "
                          "failed", household_id)

    def changed(self, payload: str) -> None:
        household_id, _, seq = payload.partition(" ")
        task = asyncio.get_running_loop().create_task(
            self._apply(household_id, int(seq) if seq.isdigit() else None))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def catch_up(self) -> None:
        """After an outage: every resident copy may have missed a notification, and so
        may every household a session watches (the fast path): each is brought up to the
        log, and the sessions following it are answered if it moved."""
        registry = self._synchronizer.registry
        for actor in registry.actors():
            actor.stale = True
        for hid in sorted({a.id for a in registry.actors() if a.subscribers}
                          | registry.watched_households()):
            await self._apply(hid, None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        listening = Listening(self._engine, "changes", {CHANGES: self.changed},
                              on_reconnect=self.catch_up)
        async with listening.running():
            try:
                yield
            finally:
                for task in self._pending:
                    task.cancel()
