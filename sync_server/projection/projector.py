"""The projector: keeps the ``proj`` tables (:mod:`sync_server.projection.rows`) in step with
the change log.

It reads the projection outbox (one row per household whose projection is behind,
written by the statement that logs the changes, :mod:`sync_server.store.postgres`), takes up
to ``batch`` households at a time, reads each once however many sync batches it
received meanwhile (bursts coalesce into its one outbox row), and writes the whole
batch in one transaction:

1. take each household's advisory lock, skipping the ones another projector holds
   (the server's own and a ``vatra projector`` process may run side by side; the
   sync path never takes these locks, so it never waits for a projector);
2. read their outbox rows and each row's version (``xmin``: the transaction that
   last wrote it);
3. lock their data key rows ``FOR SHARE`` (an erasure waits, or has won: then the
   household's rows are deleted instead of written);
4. read each household: the server's resident copy when it holds every change
   queued (it only ever holds committed changes), else snapshot plus later changes
   from the store; walk it once with ``keys()`` / ``values()`` and compute its rows;
5. compare them with the rows stored (one query per table for the batch): delete
   the rows gone, upsert the rows new or changed, leave the rest;
6. lock the outbox rows in household order (the order in which the group commit
   writes them, so the two never deadlock), then delete each one whose version is
   still the one read in step 2. A row a sync batch wrote meanwhile stays, with
   ``enqueued_at`` moved to the oldest change not yet projected, and the household is
   projected again on the next pass.

Everything is in the one transaction, so a projector killed anywhere leaves either
the old rows and the outbox rows, or the new rows and no outbox rows: after a
restart it resumes from the outbox with nothing lost and nothing applied twice
(writing the same rows again changes nothing). If a batch fails, its households are
retried one per transaction, so one household that cannot be projected (logged,
left queued) does not hold back the others. ``rebuild`` runs the same code for
households whether queued or not.

The lag of a household is the time from the oldest change it had pending (its
outbox row's ``enqueued_at``) to the end of the transaction that projected it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from automerge.core import Document
from prometheus_client import Counter, Gauge
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conflict import SERVER_AUTHOR, Household
from conflict.catalogue import Catalogue, load_catalogue
from sync_server.projection.rows import LogFacts, Rows, primary_key, project
from sync_server.store import aggregates
from sync_server.store.postgres import PostgresStore
from sync_server.store.tables import PROJ_TABLES as TABLES
from sync_server.store.tables import household_keys, households, proj_households
from sync_server.store.tables import projection_outbox as outbox
from sync_server.sync import cpu
from sync_server.sync.households import HouseholdRegistry

log = logging.getLogger(__name__)

#: Advisory-lock namespace of the projector (first key of the two-key form).
_LOCK_SPACE = 0x7661_7472  # "vatr"

LAG = Gauge("vatra_projection_lag_seconds",
            "Age of the oldest change not yet in the projection (0 when none is pending)")
PENDING = Gauge("vatra_projection_pending_households",
                "Households whose projection is behind their change log")
#: Seconds a stopping projector's pass may take before it is cancelled.
STOP_GRACE = 10.0
#: Seconds between refreshes of the gauges by a busy projector.
GAUGE_PERIOD = 1.0
PROJECTED = Counter("vatra_projections_total", "Household projections committed")
PROJECTOR_UP = Gauge("vatra_projector_up",
                     "1 while projection passes succeed, 0 after one failed (the database?)")
PASS_FAILURES = Counter("vatra_projector_pass_failures_total",
                        "Projection passes that failed and were retried")


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
    after every commit of changes. Between passes the projector waits ``coalesce``
    seconds for the next burst to gather (fewer, larger passes: what this costs the
    sync path is in docs/performance.md), except while a backlog fills whole batches.
    Without notifications it polls every ``poll`` seconds.
    """

    def __init__(self, engine: AsyncEngine, store: PostgresStore,
                 catalogue: Catalogue | None = None, *, registry: HouseholdRegistry | None = None,
                 batch: int = 64, coalesce: float = 0.1, poll: float = 0.25) -> None:
        self.engine = engine
        self.store = store
        self.registry = registry  # the server's resident households, when in-process
        self.catalogue = catalogue if catalogue is not None else load_catalogue()
        self.batch = batch
        self.coalesce = coalesce
        self.poll = poll
        self.healthy = True  # the last pass succeeded (vatra_projector_up)
        self.lags: collections.deque[float] = collections.deque(maxlen=100_000)
        self.projected = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._gauges_at = -math.inf

    def notify(self) -> None:
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the pass in progress (its transaction is
        never cut in the middle)."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Project until :meth:`stop` (or cancelled). An error on one household is logged
        and retried on the next pass; the loop itself does not stop."""
        while not self._stop.is_set():
            try:
                done = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                PASS_FAILURES.inc()
                if self.healthy:  # the first failure in full; later ones in a line
                    log.exception("projection pass failed; retrying")
                else:
                    log.info("projection pass failed again (%s)", type(exc).__name__)
                self.healthy = False
                PROJECTOR_UP.set(0)
                done = 0
            else:
                if not self.healthy:
                    log.warning("projection passes succeed again")
                self.healthy = True
                PROJECTOR_UP.set(1)
            if done >= self.batch:
                continue  # a backlog: the next batch at once
            if done == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
                self._wake.clear()
            # Let the next burst gather: a household written continuously is projected
            # once per `coalesce`, not after every commit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.coalesce)

    async def stopped(self, task: asyncio.Task[None]) -> None:
        """Stop the projector running as ``task`` and wait for it; cancel it only if its
        pass does not end within :data:`STOP_GRACE` seconds."""
        self.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
        except TimeoutError:
            log.warning("projector did not stop within %.0f s; cancelling it", STOP_GRACE)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self, limit: int | None = None) -> int:
        """Project the households pending now (up to ``limit``, default ``batch``) in one
        transaction; how many were projected."""
        entries = await self.store.outbox_pending(limit or self.batch)
        ids = [e.household_id for e in entries]
        try:
            done = await self.project(ids)
        except Exception as exc:
            log.warning("projection of a batch of %d households failed (%s); one at a time",
                        len(ids), type(exc).__name__)
            done = []
            for hid in ids:
                try:
                    done += await self.project([hid])
                except Exception:
                    self.failures += 1
                    log.exception("projection of household %s failed; it stays queued", hid)
        if time.monotonic() - self._gauges_at >= GAUGE_PERIOD:
            await self.refresh_gauges()
        return len(done)

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
        """Set the lag and backlog gauges (from the outbox only: a small table)."""
        status = await projection_status(self.engine, projected=False)
        LAG.set(status["lag_seconds"])
        PENDING.set(status["pending"])
        self._gauges_at = time.monotonic()

    # -- a batch of households --------------------------------------------------------------

    async def project(self, household_ids: Sequence[str], *, force: bool = False
                      ) -> list[Projected]:
        """Project ``household_ids`` in one transaction (see the module docstring). Without
        ``force`` only the ones queued in the outbox; households another projector holds
        right now are skipped. What was projected, one entry per household."""
        ids = list(dict.fromkeys(household_ids))
        if not ids:
            return []
        async with self.engine.begin() as conn:
            locked = set((await conn.execute(_LOCK, {"ids": ids})).scalars())
            queued = {r.household_id: r for r in (await conn.execute(
                sa.select(outbox.c.household_id, outbox.c.last_seq, outbox.c.enqueued_at,
                          sa.literal_column("xmin::text").label("version"))
                .where(outbox.c.household_id.in_(locked))))}
            targets = [h for h in ids if h in locked and (force or h in queued)]
            if not targets:
                return []
            keys = {r.household_id: r.wrapped for r in (await conn.execute(
                sa.select(household_keys.c.household_id, household_keys.c.wrapped)
                .where(household_keys.c.household_id.in_(targets))
                .with_for_update(read=True)))}
            results: dict[str, Projected] = {}
            rows: dict[str, Rows] = {}
            seqs: dict[str, int] = {}
            docs = {}
            unreadable = set()  # no data key: nothing can be read (not a household)
            erased = set()
            for hid in targets:
                if hid not in keys:  # its outbox row goes with the others, in order
                    unreadable.add(hid)
                    continue
                if keys[hid] is None:  # erased: its rows go (written as none, below)
                    erased.add(hid)
                    rows[hid] = {}
                    continue
                got = await self._read(hid, queued.get(hid))
                if got is not None:
                    docs[hid] = got
                    seqs[hid] = got[3]
            facts = await _log_facts(conn, seqs)
            for hid, (doc, locality, county, _) in docs.items():
                rows[hid] = await cpu.offload(project, hid, doc, locality=locality, county=county,
                                          log=facts[hid], catalogue=self.catalogue)
            # The rows written below reference their households (a foreign key), and
            # PostgreSQL checks it by locking each household's registry row (FOR KEY
            # SHARE), in the order written. A group commit used to lock the same rows FOR
            # UPDATE in household order (sync_server/store/group_commit.py): taken in any
            # other order, the two deadlocked (three instances under load, issue 14). It
            # now takes FOR NO KEY UPDATE, which KEY SHARE does not wait for; the rows are
            # still locked here, all at once, in that order, before the outbox rows.
            await conn.execute(_KEY_SHARE, {"ids": sorted(rows)})
            written, change = await write_rows(conn, rows)
            lags = await _settle_outbox(conn, {h: queued[h] for h in
                                               results.keys() | rows.keys() | unreadable
                                               if h in queued}, seqs)
            # Last: the aggregate rows a locality's projectors share stay locked only
            # while this transaction commits (never while it waits for the outbox rows).
            await aggregates.apply(conn, change)
        for hid, (upserted, deleted) in written.items():
            results[hid] = Projected(hid, upserted, deleted,
                                     None if hid in erased else lags.get(hid), erased=hid in erased)
        self.lags.extend(lags.values())
        self.projected += len(results)
        PROJECTED.inc(len(results))
        return [results[h] for h in targets if h in results]

    async def _read(self, household_id: str, queued: Any
                    ) -> tuple[dict[str, Any], str, str, int] | None:
        """(document as plain values, locality, county, last change seq it holds), read in
        a worker thread (sync_server/sync/cpu.py)."""
        actor = self.registry.resident(household_id) if self.registry is not None else None
        if actor is not None and queued is not None and actor.last_seq >= queued.last_seq:
            # one committed copy and its facts, taken together (a swap replaces the copy)
            doc, record, seq = actor.doc, actor.record, actor.last_seq
            plain = await cpu.offload(_plain, doc, household_id)
            return plain, record.locality, record.county, seq
        loaded = await self.store.load(household_id)
        if loaded is None:
            return None
        data = loaded.document_bytes()
        plain = await cpu.offload(_plain_from_bytes, data, household_id)
        return plain, loaded.record.locality, loaded.record.county, loaded.last_seq

    async def project_household(self, household_id: str, *, force: bool = False
                                ) -> Projected | None:
        """Project one household (see :meth:`project`); None if it was not projected."""
        done = await self.project([household_id], force=force)
        return done[0] if done else None

    async def rebuild(self, household_ids: Iterable[str] | None = None) -> list[Projected]:
        """Re-project households from the change log, queued or not (every registered
        household if none is given), ``batch`` at a time."""
        if household_ids is None:
            async with self.engine.connect() as conn:
                household_ids = (await conn.execute(
                    sa.select(households.c.id).order_by(households.c.id))).scalars().all()
        todo = list(household_ids)
        done: list[Projected] = []
        while todo:
            chunk, todo = todo[:self.batch], todo[self.batch:]
            got = await self.project(chunk, force=True)
            done += got
            held = [h for h in chunk if h not in {p.household_id for p in got}]
            if held:  # held by another projector right now, or not registered
                known = await registered(self.engine, held)
                todo = [h for h in held if h in known] + todo
                if known:
                    await asyncio.sleep(self.coalesce)
        return done


def _plain(doc: Document, household_id: str) -> dict[str, Any]:
    return Household(doc, household_id).to_dict()


def _plain_from_bytes(data: bytes, household_id: str) -> dict[str, Any]:
    return _plain(Document.load(data), household_id)


#: The registry rows of the households about to be written, locked as a foreign key check
#: locks them, in household order (see Projector.project).
_KEY_SHARE = sa.text("""
    SELECT id FROM households WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR KEY SHARE
""")


#: Try each household's projector lock; the ones obtained (held until the transaction ends).
_LOCK = sa.text(f"""
    SELECT h FROM unnest(CAST(:ids AS text[])) AS h
    WHERE pg_try_advisory_xact_lock({_LOCK_SPACE}, hashtext(h))
""")


async def registered(engine: AsyncEngine, household_ids: Sequence[str]) -> set[str]:
    """Which of ``household_ids`` are registered households."""
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(households.c.id)
                                       .where(households.c.id.in_(household_ids)))).scalars())


#: When the newest change each document holds was received, and its author's user.
_FACTS = sa.text("""
    SELECT q.h AS household_id, c.received_at, c.device_id, d.user_id
    FROM unnest(CAST(:ids AS text[]), CAST(:seqs AS bigint[])) AS q(h, seq)
    LEFT JOIN LATERAL (
        SELECT received_at, device_id FROM changes
        WHERE household_id = q.h AND seq <= q.seq ORDER BY seq DESC LIMIT 1
    ) AS c ON true
    LEFT JOIN devices d ON d.id = c.device_id
""")


async def _log_facts(conn: AsyncConnection, last_seqs: dict[str, int]) -> dict[str, LogFacts]:
    if not last_seqs:
        return {}
    ids = list(last_seqs)
    facts = {}
    for r in await conn.execute(_FACTS, {"ids": ids, "seqs": [last_seqs[h] for h in ids]}):
        by = None if r.received_at is None else \
            SERVER_AUTHOR if r.device_id is None else r.user_id
        facts[r.household_id] = LogFacts(last_seqs[r.household_id], r.received_at, by)
    return facts


#: Lock the outbox rows to settle in household order, the order in which the group commit
#: writes them: two transactions that lock several rows in different orders can each hold
#: one the other waits for ("deadlock detected", and one of them is rolled back).
_LOCK_ROWS = sa.text("""
    SELECT 1 FROM projection_outbox
    WHERE household_id = ANY(CAST(:ids AS text[]))
    ORDER BY household_id FOR UPDATE
""")
#: Remove the outbox rows no sync batch wrote since they were read; for the others, move
#: ``enqueued_at`` to the oldest change the projection did not include (never backwards).
_DONE = sa.text("""
    DELETE FROM projection_outbox o
    USING unnest(CAST(:ids AS text[]), CAST(:versions AS text[])) AS v(h, version)
    WHERE o.household_id = v.h AND o.xmin::text = v.version
    RETURNING o.household_id
""")
_LEFT = sa.text("""
    UPDATE projection_outbox o
    SET enqueued_at = GREATEST(o.enqueued_at, COALESCE(
        (SELECT min(c.received_at) FROM changes c
         WHERE c.household_id = o.household_id AND c.seq > v.seq), o.enqueued_at))
    FROM unnest(CAST(:ids AS text[]), CAST(:seqs AS bigint[])) AS v(h, seq)
    WHERE o.household_id = v.h
""")


async def _settle_outbox(conn: AsyncConnection, queued: dict[str, Any],
                         seqs: dict[str, int]) -> dict[str, float]:
    """Settle the outbox rows of the households projected; their lags (seconds)."""
    if not queued:
        return {}
    ids = list(queued)
    await conn.execute(_LOCK_ROWS, {"ids": ids})
    gone = set((await conn.execute(
        _DONE, {"ids": ids, "versions": [queued[h].version for h in ids]})).scalars())
    left = [h for h in ids if h not in gone and h in seqs]
    if left:
        await conn.execute(_LEFT, {"ids": left, "seqs": [seqs[h] for h in left]})
    now = (await conn.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
    return {h: (now - queued[h].enqueued_at).total_seconds() for h in ids}


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "projected_at"}


#: Rows per upsert statement: PostgreSQL takes at most 32,767 parameters per statement.
_MAX_PARAMS = 30_000


def _compare(pk: Sequence[str], stored: Sequence[Any], wanted: Sequence[dict[str, Any]]
             ) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    """(keys of the stored rows not wanted, wanted rows new or different)."""
    have = {tuple(r[c] for c in pk): _comparable(dict(r)) for r in stored}
    want = {tuple(r[c] for c in pk): r for r in wanted}
    return [k for k in have if k not in want], [r for k, r in want.items() if have.get(k) != r]


async def write_rows(conn: AsyncConnection, rows: dict[str, Rows]
                     ) -> tuple[dict[str, tuple[int, int]], aggregates.Totals]:
    """Make the stored rows of each household in ``rows`` equal to its rows there: delete
    the ones gone, upsert the ones new or changed. ``{household: (upserted, deleted)}``,
    and what the per-locality aggregates change by (for the caller to apply,
    :func:`sync_server.store.aggregates.apply`, in the same transaction)."""
    counts = {hid: [0, 0] for hid in rows}
    if not rows:
        return {}, {}
    ids = list(rows)
    before: Rows = {}  # the rows the per-locality aggregates count, as stored and as wanted
    after: Rows = {}
    for table in TABLES:
        pk = primary_key(table)
        stored = (await conn.execute(
            sa.select(table).where(table.c.household_id.in_(ids)))).mappings().all()
        wanted = [r for hid in ids for r in rows[hid].get(table.name, ())]
        if table in aggregates.COUNTED:
            before[table.name], after[table.name] = [dict(r) for r in stored], wanted
        # a big household has tens of thousands of feed rows: compared off the event loop
        gone, changed = await cpu.offload(_compare, pk, stored, wanted)
        if gone:
            await conn.execute(sa.delete(table).where(
                sa.tuple_(*(table.c[c] for c in pk)).in_(gone)))
            for k in gone:
                counts[k[0]][1] += 1
        step = max(1, _MAX_PARAMS // len(table.columns))
        for i in range(0, len(changed), step):
            await conn.execute(_upsert(table, changed[i:i + step]))
        for r in changed:
            counts[r["household_id"]][0] += 1
    change = await cpu.offload(aggregates.delta, before, after)
    return {hid: (u, d) for hid, (u, d) in counts.items()}, change


def _upsert(table: sa.Table, rows: Sequence[dict[str, Any]]) -> sa.Executable:
    stmt = postgresql.insert(table).values(list(rows))
    pk = primary_key(table)
    update: dict[str, Any] = {c.name: stmt.excluded[c.name] for c in table.columns
                              if c.name not in pk and c.name != "projected_at"}
    if "projected_at" in table.c:
        update["projected_at"] = sa.func.now()
    return stmt.on_conflict_do_update(index_elements=list(pk), set_=update)


async def projection_status(engine: AsyncEngine, *, projected: bool = True) -> dict[str, Any]:
    """Households pending and the lag now (age of the oldest pending change, seconds);
    with ``projected``, also households projected and the last projection's time (for
    ``vatra status``: these read the whole ``proj.households`` table)."""

    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(
            sa.func.count().label("pending"),
            sa.func.extract("epoch", sa.func.clock_timestamp()
                            - sa.func.min(outbox.c.enqueued_at)).label("lag"))
            .select_from(outbox))).one()
        status: dict[str, Any] = {"pending": row.pending, "lag_seconds": float(row.lag or 0.0)}
        if projected:
            more = (await conn.execute(sa.select(
                sa.func.count().label("n"), sa.func.max(proj_households.c.projected_at)
                .label("last")).select_from(proj_households))).one()
            status["households_projected"] = more.n
            status["last_projected_at"] = more.last.isoformat() if more.last else None
    return status


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]
