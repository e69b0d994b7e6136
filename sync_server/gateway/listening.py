"""A ``LISTEN`` connection that survives the database: revocations and team changes.

PostgreSQL delivers ``NOTIFY`` only to connections that are listening when it is sent,
and a connection closed by a database restart or a network cut listens no more: before,
nothing noticed, and live revocation and team changes went quiet after the first outage
(issue 13, fault 2). A :class:`Listening` holds one connection for its channels, checks
every :data:`CHECK_SECONDS` that it is open, and when it is not, connects again with
backoff, logs the outage and its end, and calls ``on_reconnect`` so the owner can catch
up with what was notified meanwhile (a sweep). Its state is a metric:
``vatra_listener_up{listener}`` (1 listening, 0 not) and
``vatra_listener_reconnects_total{listener}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

#: Seconds between checks that the listening connection is still open.
CHECK_SECONDS = 0.5
#: The longest wait between two attempts to listen again.
MAX_BACKOFF_SECONDS = 5.0

LISTENER_UP = Gauge("vatra_listener_up",
                    "1 while the server listens for its notifications, 0 during an outage",
                    ["listener"])
LISTENER_RECONNECTS = Counter("vatra_listener_reconnects_total",
                              "times a notification listener connected again after an outage",
                              ["listener"])


class Listening:
    def __init__(self, engine: AsyncEngine, name: str,
                 channels: Mapping[str, Callable[[str], None]],
                 on_reconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        self._engine = engine
        self.name = name
        self._channels = channels
        self._on_reconnect = on_reconnect
        self._conn: AsyncConnection | None = None
        self._raw: Any = None

    @property
    def listening(self) -> bool:
        return self._raw is not None and not self._raw.is_closed()

    async def _listen(self) -> None:
        conn = await self._engine.connect()
        try:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None  # asyncpg's connection, open while we hold it
            for channel, callback in self._channels.items():
                await raw.add_listener(channel, _adapter(callback))
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()
            raise
        self._conn, self._raw = conn, raw
        LISTENER_UP.labels(self.name).set(1)

    async def _drop(self) -> None:
        conn, self._conn, self._raw = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()  # the pool must not hand out a dead connection
                await conn.close()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            if self.listening:
                continue
            LISTENER_UP.labels(self.name).set(0)
            log.warning("listener %s: connection lost; listening again", self.name)
            await self._drop()
            delay = CHECK_SECONDS
            while True:
                try:
                    await self._listen()
                    break
                # (the driver's own state errors too: a connection handed out while the
                # database restarts can fail "another operation is in progress")
                except Exception as exc:  # DATABASE_ERRORS, and the driver's own
                    log.info("listener %s: the database did not answer (%s); retrying in "
                             "%.1f s", self.name, type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            LISTENER_RECONNECTS.labels(self.name).inc()
            log.warning("listener %s: listening again", self.name)
            if self._on_reconnect is not None:
                try:
                    await self._on_reconnect()
                except Exception:
                    log.exception("listener %s: catching up after the outage failed",
                                  self.name)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        await self._listen()  # at start the database answers (the migrations just ran)
        keeper = asyncio.create_task(self._keep(), name=f"vatra-listener-{self.name}")
        try:
            yield
        finally:
            keeper.cancel()
            try:
                await keeper
            except asyncio.CancelledError:
                pass
            except Exception:  # never raised to the server's shutdown: logged
                log.exception("listener %s: the listening task failed", self.name)
            await self._drop()
            LISTENER_UP.labels(self.name).set(0)


def _adapter(callback: Callable[[str], None]) -> Callable[[Any, int, str, str], None]:
    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)
    return on_notify
