"""The nonces of signed HTTP requests, in PostgreSQL: a replay is refused by every
instance on the database, before and after a restart.

A signed request (:mod:`sync_server.protocol.http_auth`) names its device and carries a random
nonce and a timestamp; the server accepts a timestamp within ``WINDOW`` seconds of its
clock. The first request with a (device, nonce) pair claims it here; any later one
with the same pair is a replay, whatever its signature. A claim is kept until it could
no longer pass the timestamp check anywhere (its timestamp plus twice the window, which
leaves room for clocks of two instances that disagree by up to one window), then
pruned.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.protocol.http_auth import WINDOW
from sync_server.store.tables import http_nonces

log = logging.getLogger(__name__)


#: Claims pruned at most this often (by the request that finds the time has come).
PRUNE_EVERY = timedelta(minutes=5)


class NonceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pruned = datetime.min.replace(tzinfo=UTC)

    async def claim(self, device_id: str, nonce: str, ts: int) -> bool:
        """Record the request's nonce; False if the device used it before (a replay)."""
        expires = datetime.fromtimestamp(ts, UTC) + timedelta(seconds=2 * WINDOW)
        async with self._engine.begin() as conn:
            claimed = (await conn.execute(
                postgresql.insert(http_nonces)
                .values(device_id=device_id, nonce=nonce, expires_at=expires)
                .on_conflict_do_nothing().returning(http_nonces.c.nonce))).first()
            now = datetime.now(UTC)
            if now - self._pruned > PRUNE_EVERY:
                self._pruned = now
                await conn.execute(sa.delete(http_nonces).where(http_nonces.c.expires_at < now))
        return claimed is not None
