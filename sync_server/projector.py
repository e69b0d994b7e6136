"""The projector: keeps the ``proj`` tables (:mod:`sync_server.projection`) in step with
the change log.

It reads the projection outbox (one row per household whose projection is behind,
written by the statement that logs the changes, :mod:`sync_server.storage`), loads
each such household once however many batches it received meanwhile (bursts
coalesce into that one row), and writes the household's rows in one transaction:

1. take the household's advisory lock (two projectors, say the server's own and a
   ``vatra projector`` process, never write one household at the same time; neither
   blocks the sync path, which never takes it);
2. read the outbox row and its version (``xmin``: the transaction that last wrote it);
3. lock the household's data key row ``FOR SHARE`` (an erasure waits, or has won:
   then the rows go instead of being written);
4. load the household from the store (snapshot plus later changes), read it with
   ``keys()`` / ``values()``, compute its rows;
5. compare them with the rows stored: delete the ones gone, upsert the ones new or
   changed, leave the rest;
6. delete the outbox row only if its version is the one read in step 2. A batch
   logged meanwhile changed it, so the row stays and the household is projected again.

Every step is in the one transaction, so a projector killed anywhere leaves either
the old rows and the outbox row, or the new rows and no outbox row: after a restart
it resumes from the outbox with nothing lost and nothing applied twice (writing the
same rows again changes nothing). ``rebuild`` runs the same code for households
whether queued or not.

The lag of a household is the time from the oldest change it had pending (the
outbox row's ``enqueued_at``) to the commit of its projection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from automerge.core import Document
from prometheus_client import Counter, Gauge
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conflict import Household
from conflict.catalogue import Catalogue, load_catalogue

from .identity import devices
from .projection import TABLES, LogFacts, primary_key, project
from .storage import PostgresStore, changes, household_keys, households
from .storage import projection_outbox as outbox

log = logging.getLogger(__name__)

#: The author recorded for the server's own changes (status restores, conflict records).
SERVER_AUTHOR = "vatra"
#: Advisory-lock namespace of the projector (first key of the two-key form).
_LOCK_SPACE = 0x7661_7472  # "vatr"

LAG = Gauge("vatra_projection_lag_seconds",
            "Age of the oldest change not yet in the projection (0 when none is pending)")
PENDING = Gauge("vatra_projection_pending_households",
                "Households whose projection is behind their change log")
PROJECTED = Counter("vatra_projections_total", "Household projections committed")


@dataclass(frozen=True, slots=True)
class Projected:
    """One household projected: rows written and deleted, and its lag (None on a rebuild
    of a household that had nothing pending)."""

    household_id: str
    upserted: int
    deleted: int
    lag_seconds: float | None
    erased: bool = False


class Projector:
    """Drains the outbox into the ``proj`` tables; see the module docstring.

    ``run()`` is the long-lived loop (the server runs one in-process; ``vatra
    projector`` runs one on its own). ``notify()`` wakes it early: the server calls it
    after every commit of changes, so a quiet projector reacts within ``coalesce``
    seconds; without notifications it polls every ``poll`` seconds.
    """

    def __init__(self, engine: AsyncEngine, store: PostgresStore,
                 catalogue: Catalogue | None = None, *, batch: int = 64,
                 coalesce: float = 0.02, poll: float = 0.25) -> None:
        self.engine = engine
        self.store = store
        self.catalogue = catalogue if catalogue is not None else load_catalogue()
        self.batch = batch
        self.coalesce = coalesce
        self.poll = poll
        self.lags: collections.deque[float] = collections.deque(maxlen=100_000)
        self.projected = 0
        self.failures = 0
        self._wake = asyncio.Event()

    def notify(self) -> None:
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Project until cancelled. An error on one household is logged and retried on
        the next pass; the loop itself does not stop."""
        while True:
            try:
                done = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("projection pass failed; retrying")
                done = 0
            if done:
                continue  # more may have arrived meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()
            await asyncio.sleep(self.coalesce)  # let a burst of commits gather

    async def drain(self, limit: int | None = None) -> int:
        """Project every household pending now (up to ``limit``); how many were."""
        entries = await self.store.outbox_pending(limit or self.batch)
        count = 0
        for entry in entries:
            try:
                if await self.project_household(entry.household_id) is not None:
                    count += 1
            except Exception:
                self.failures += 1
                log.exception("projection of household %s failed; it stays queued",
                              entry.household_id)
        await self.refresh_gauges()
        return count

    async def drain_all(self) -> int:
        """Project until the outbox is empty (tests, ``vatra projector --once``)."""
        total = 0
        while True:
            failures = self.failures
            n = await self.drain()
            total += n
            if n == 0:
                if self.failures > failures:
                    raise RuntimeError("projection failed; see the log")
                pending = await self.store.outbox_pending(1)
                if not pending:
                    return total
                await asyncio.sleep(self.coalesce)  # another projector holds it

    async def refresh_gauges(self) -> None:
        status = await projection_status(self.engine)
        LAG.set(status["lag_seconds"])
        PENDING.set(status["pending"])

    # -- one household --------------------------------------------------------------------

    async def project_household(self, household_id: str, *, force: bool = False
                                ) -> Projected | None:
        """Project one household. Without ``force`` only if it is queued in the outbox;
        None if it was not, or another projector holds it right now."""
        async with self.engine.begin() as conn:
            got = (await conn.execute(
                sa.select(sa.func.pg_try_advisory_xact_lock(
                    _LOCK_SPACE, sa.func.hashtext(household_id))))).scalar_one()
            if not got:
                return None
            queued = (await conn.execute(
                sa.select(outbox.c.enqueued_at, sa.literal_column("xmin::text").label("version"))
                .where(outbox.c.household_id == household_id))).first()
            if queued is None and not force:
                return None
            key = (await conn.execute(
                sa.select(household_keys.c.wrapped)
                .where(household_keys.c.household_id == household_id)
                .with_for_update(read=True))).first()
            if key is None:
                await _forget_outbox(conn, household_id)
                return None
            if key.wrapped is None:
                deleted = await delete_household_rows(conn, household_id)
                await _forget_outbox(conn, household_id)
                return Projected(household_id, 0, deleted, None, erased=True)
            # The key row is share-locked: an erasure cannot happen before the commit.
            loaded = await self.store.load(household_id)
            if loaded is None:
                return None
            doc = Household(Document.load(loaded.document_bytes()), household_id).to_dict()
            facts = await _log_facts(conn, household_id, loaded.last_seq)
            rows = project(household_id, doc, locality=loaded.record.locality,
                           county=loaded.record.county, log=facts, catalogue=self.catalogue)
            upserted, deleted = await write_rows(conn, household_id, rows)
            lag = None
            if queued is not None:
                gone = (await conn.execute(
                    sa.delete(outbox).where(outbox.c.household_id == household_id,
                                            sa.literal_column("xmin::text") == queued.version)
                    .returning(sa.func.clock_timestamp() - outbox.c.enqueued_at))).first()
                if gone is not None:
                    lag = gone[0].total_seconds()
        if lag is not None:
            self.lags.append(lag)
        self.projected += 1
        PROJECTED.inc()
        return Projected(household_id, upserted, deleted, lag)

    async def rebuild(self, household_ids: Iterable[str] | None = None) -> list[Projected]:
        """Re-project households from the change log, queued or not (every registered
        household if none is given)."""
        if household_ids is None:
            async with self.engine.connect() as conn:
                household_ids = (await conn.execute(
                    sa.select(households.c.id).order_by(households.c.id))).scalars().all()
        done = []
        for hid in household_ids:
            while True:
                got = await self.project_household(hid, force=True)
                if got is not None:
                    done.append(got)
                    break
                if await _registered(self.engine, hid) is False:
                    break
                await asyncio.sleep(self.coalesce)  # another projector holds it: wait
        return done


async def _registered(engine: AsyncEngine, household_id: str) -> bool:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(households.c.id)
                                   .where(households.c.id == household_id))).first() is not None


async def _forget_outbox(conn: AsyncConnection, household_id: str) -> None:
    await conn.execute(sa.delete(outbox).where(outbox.c.household_id == household_id))


async def _log_facts(conn: AsyncConnection, household_id: str, last_seq: int) -> LogFacts:
    """When the newest change the document holds was received, and from whom."""
    row = (await conn.execute(
        sa.select(changes.c.received_at, changes.c.device_id, devices.c.user_id)
        .select_from(changes.outerjoin(devices, devices.c.id == changes.c.device_id))
        .where(changes.c.household_id == household_id, changes.c.seq <= last_seq)
        .order_by(changes.c.seq.desc()).limit(1))).first()
    if row is None:
        return LogFacts(last_seq, None, None)
    by = SERVER_AUTHOR if row.device_id is None else row.user_id
    return LogFacts(last_seq, row.received_at, by)


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "projected_at"}


async def write_rows(conn: AsyncConnection, household_id: str,
                     rows: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
    """Make the stored rows of ``household_id`` equal to ``rows``: delete the ones gone,
    upsert the ones new or changed. (rows upserted, rows deleted)."""
    upserted = deleted = 0
    for table in TABLES:
        pk = primary_key(table)
        wanted = {tuple(r[c] for c in pk): r for r in rows[table.name]}
        stored = {tuple(r[c] for c in pk): _comparable(dict(r)) for r in (await conn.execute(
            sa.select(table).where(table.c.household_id == household_id))).mappings()}
        gone = [k for k in stored if k not in wanted]
        if gone:
            deleted += (await conn.execute(sa.delete(table).where(
                table.c.household_id == household_id,
                sa.tuple_(*(table.c[c] for c in pk)).in_(gone)))).rowcount
        changed = [r for k, r in wanted.items() if stored.get(k) != r]
        if changed:
            await conn.execute(_upsert(table, changed))
            upserted += len(changed)
    return upserted, deleted


def _upsert(table: sa.Table, rows: Sequence[dict[str, Any]]) -> sa.Executable:
    stmt = postgresql.insert(table).values(list(rows))
    pk = primary_key(table)
    update = {c.name: stmt.excluded[c.name] for c in table.columns
              if c.name not in pk and c.name != "projected_at"}
    if "projected_at" in table.c:
        update["projected_at"] = sa.func.now()
    return stmt.on_conflict_do_update(index_elements=list(pk), set_=update)


async def delete_household_rows(conn: AsyncConnection, household_id: str) -> int:
    """Delete every projection row of one household; how many."""
    total = 0
    for table in TABLES:
        total += (await conn.execute(
            sa.delete(table).where(table.c.household_id == household_id))).rowcount
    return total


async def projection_status(engine: AsyncEngine) -> dict[str, Any]:
    """Households pending, the lag now (age of the oldest pending change, seconds), and
    households projected (for ``vatra status`` and the gauges)."""
    from .projection import households as projected

    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(
            sa.select(sa.func.count()).select_from(outbox).scalar_subquery().label("pending"),
            sa.select(sa.func.extract("epoch", sa.func.clock_timestamp()
                                      - sa.func.min(outbox.c.enqueued_at)))
            .scalar_subquery().label("lag"),
            sa.select(sa.func.count()).select_from(projected).scalar_subquery()
            .label("projected"),
            sa.select(sa.func.max(projected.c.projected_at)).scalar_subquery()
            .label("last_projected_at")))).one()
    return {"pending": row.pending, "lag_seconds": float(row.lag or 0.0),
            "households_projected": row.projected,
            "last_projected_at": row.last_projected_at.isoformat()
            if row.last_projected_at else None}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]
