"""Group commit: the appends of concurrent merges committed together, with the outbox.

One statement inserts every change of a group (the rows travel as array parameters) and
queues each household that logged something for projection; the audit rows go in the
same transaction. The pipeline's rule holds: a caller learns its result only after the
commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Histogram
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync_server.store.audit import AuditEvent, AuditLog
from sync_server.store.contract import (
    CHANGES,
    TEAM_CHANGES,
    AppendResult,
    Author,
    HouseholdErased,
    HouseholdStale,
    StoreClosed,
    StoredChange,
)
from sync_server.store.keys import CHANGE, SEAL_OVERHEAD, DataKey
from sync_server.store.tables import household_team

log = logging.getLogger(__name__)

GROUP_BATCHES = Histogram("vatra_group_commit_batches", "Batches committed together",
                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
FAILURES = Counter("vatra_group_commit_failures_total",
                   "Group commits that failed: every batch in them was answered storage-failure")

#: One caller's append waiting for a commit: household, changes, author, its result.
#: (household, changes, author, team, expected seq, the caller's future)
_Pending = tuple[str, Sequence[StoredChange], "Author | None", "Sequence[str] | None",
                 "int | None", "asyncio.Future[AppendResult]"]

#: What the group commit needs of the store: the data keys of some households, and an
#: error for each one that has none (erased, or never registered).
DataKeys = Callable[[AsyncConnection, Collection[str]],
                    Awaitable[tuple[dict[str, DataKey], dict[str, BaseException]]]]


#: One statement for a whole batch, whatever its size and however many households it
#: spans: the rows travel as five array parameters, so the statement is prepared once
#: and cached (a multi-row VALUES list would be a new statement per batch size).
#: ``deps`` arrive as comma-joined hex because PostgreSQL arrays cannot be ragged.
#: Re-sent changes hit the primary key and are skipped. Each household's ``heads`` follow
#: its log: a trigger on ``changes`` updates them in the same statement (migration 0011),
#: on the households locked first (:func:`lock_households`). Bodies arrive sealed; nothing is
#: written for a household whose data key was destroyed (erased by another process, while
#: this one still held the key): such a household comes back as one row without a seq.
#: The same statement queues each household that logged something for projection, its
#: outbox rows written (so locked) in household order, as the projector locks them.
_APPEND = sa.text("""
    WITH inserted AS (
        INSERT INTO changes (household_id, hash, deps, actor, body, device_id)
        SELECT u.household_id, u.hash,
               ARRAY(SELECT decode(d, 'hex') FROM unnest(string_to_array(u.deps, ',')) AS d),
               u.actor, u.body, u.device_id
        FROM unnest(:household_ids, :hashes, :deps, :actors, :bodies, :devices)
             AS u(household_id, hash, deps, actor, body, device_id)
        WHERE EXISTS (SELECT 1 FROM household_keys k
                      WHERE k.household_id = u.household_id AND k.wrapped IS NOT NULL)
        ON CONFLICT (household_id, hash) DO NOTHING
        RETURNING household_id, seq, length(body) AS size, hash
    ), queued AS (
        INSERT INTO projection_outbox (household_id, last_seq)
        SELECT household_id, max(seq) FROM inserted GROUP BY household_id
        ORDER BY household_id  -- the projector's order too: no deadlock between them
        ON CONFLICT (household_id) DO UPDATE
            SET last_seq = GREATEST(projection_outbox.last_seq, EXCLUDED.last_seq)
    )
    SELECT household_id, seq, size, hash FROM inserted
    UNION ALL  -- households whose data key is destroyed: nothing of theirs was written
    SELECT DISTINCT u.household_id, NULL::bigint, NULL::integer, NULL::bytea
    FROM unnest(:household_ids) AS u(household_id)
    WHERE NOT EXISTS (SELECT 1 FROM household_keys k
                      WHERE k.household_id = u.household_id AND k.wrapped IS NOT NULL)
""").bindparams(
    sa.bindparam("household_ids", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("hashes", type_=postgresql.ARRAY(sa.LargeBinary)),
    sa.bindparam("deps", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("actors", type_=postgresql.ARRAY(sa.LargeBinary)),
    sa.bindparam("bodies", type_=postgresql.ARRAY(sa.LargeBinary)),
    sa.bindparam("devices", type_=postgresql.ARRAY(sa.Text)),
)

#: Every instance hears, at commit, which households logged changes (sync_server/gateway/
#: changes.py): its copies of them may be behind.
#: The payload is "<household id> <latest seq logged>".
_TELL = sa.text("""
    SELECT pg_notify(:channel, t.h || ' ' || t.s)
    FROM unnest(CAST(:ids AS text[]), CAST(:seqs AS bigint[])) AS t(h, s)
""")

#: A new household's first team: the named users that exist.
TEAM = sa.text("""
    INSERT INTO household_team (household_id, user_id)
    SELECT :household, u.id FROM users u WHERE u.id = ANY(:users)
""").bindparams(sa.bindparam("users", type_=postgresql.ARRAY(sa.Text)))


async def replace_team(conn: AsyncConnection, household_id: str, team: Sequence[str]) -> None:
    """The household's team becomes ``team`` (its users that exist), and every server hears
    of it when the transaction commits (``NOTIFY`` is transactional)."""
    await conn.execute(sa.delete(household_team).where(household_team.c.household_id
                                                        == household_id))
    if team:
        await conn.execute(TEAM, {"household": household_id, "users": sorted(set(team))})
    await conn.execute(sa.select(sa.func.pg_notify(TEAM_CHANGES, household_id)))


#: Bodies sealed on the event loop at most; more are sealed in a worker thread.
SEAL_INLINE = 200


def _sealed(batches: Sequence[tuple[str, Sequence[StoredChange], Author | None]],
            keys: dict[str, DataKey]) -> list[bytes]:
    return [keys[household_id].seal(CHANGE, c.body)
            for household_id, new, _ in batches for c in new]


#: Lock the households a group commit writes, in id order: two instances' commits for
#: one household run one after the other, and never deadlock. ``FOR NO KEY UPDATE`` is
#: the lock the ``heads`` update takes anyway; unlike ``FOR UPDATE`` it lets the
#: projector's ``FOR KEY SHARE`` (its foreign keys' lock) through, so a sync batch never
#: waits for a projector pass.
_LOCK = sa.text("""
    SELECT id FROM households WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id
    FOR NO KEY UPDATE
""")
#: The latest change each has logged. A statement of its own, after the lock: a statement
#: reads the rows committed when it started, so one that waited for the lock would not
#: see the changes the other instance committed meanwhile.
_LATEST = sa.text("""
    SELECT h AS id, COALESCE((SELECT max(c.seq) FROM changes c WHERE c.household_id = h), 0)
           AS last_seq
    FROM unnest(CAST(:ids AS text[])) AS h
""")


async def lock_households(conn: AsyncConnection, household_ids: Collection[str]) -> None:
    """Lock the households a commit writes (their ``heads``), in id order, to the end of
    the transaction."""
    if household_ids:
        await conn.execute(_LOCK, {"ids": sorted(household_ids)})


async def stale_households(conn: AsyncConnection, expected: dict[str, int]) -> set[str]:
    """Of the households whose caller's copy holds the log up to ``expected[h]``, those
    whose log holds more: another instance committed since the copy was read. The caller
    holds their locks (:func:`lock_households`), so none commits in between."""
    if not expected:
        return set()
    rows = await conn.execute(_LATEST, {"ids": sorted(expected)})
    return {r.id for r in rows if r.last_seq > expected[r.id]}


async def insert_changes(conn: AsyncConnection,
                          batches: Sequence[tuple[str, Sequence[StoredChange], Author | None]],
                          keys: dict[str, DataKey], audit: AuditLog
                          ) -> tuple[dict[str, AppendResult], set[str]]:
    """Seal every body with its household's key, insert every batch with one statement,
    and append one audit row per batch that logged something (same transaction). Returns
    an AppendResult per household, and the households found erased meanwhile (by another
    process, while this one still held their key): nothing of theirs was written, and
    their callers must not be told otherwise."""
    params: dict[str, list[Any]] = {k: [] for k in ("household_ids", "hashes", "deps",
                                                    "actors", "devices")}
    for household_id, new, author in batches:
        for c in new:
            params["household_ids"].append(household_id)
            params["hashes"].append(c.hash)
            params["deps"].append(",".join(d.hex() for d in c.deps))
            params["actors"].append(c.actor)
            params["devices"].append(author.device_id if author else None)
    if len(params["hashes"]) > SEAL_INLINE:  # 2,000 changes: ~50 ms, off the event loop
        params["bodies"] = await asyncio.to_thread(_sealed, batches, keys)
    else:
        params["bodies"] = _sealed(batches, keys)
    results = {household_id: AppendResult(0, 0, 0) for household_id, _, _ in batches}
    erased: set[str] = set()
    if not params["hashes"]:
        return results, erased
    logged: dict[str, list[str]] = {}
    for household_id, seq, size, digest in (await conn.execute(_APPEND, params)).all():
        if seq is None:
            erased.add(household_id)
            continue
        r = results[household_id]
        # length(body) is the sealed size; the overhead is fixed, so this is the plaintext's.
        results[household_id] = AppendResult(r.inserted + 1,
                                             r.inserted_bytes + size - SEAL_OVERHEAD,
                                             max(r.last_seq, seq))
        logged.setdefault(household_id, []).append(digest.hex())
    if logged:
        told = sorted(logged)
        await conn.execute(_TELL, {"channel": CHANGES, "ids": told,
                                   "seqs": [results[h].last_seq for h in told]})
    authors = {household_id: author for household_id, _, author in batches}
    events = []
    for household_id, hashes in sorted(logged.items()):
        author = authors[household_id]
        events.append(AuditEvent(
            "changes-accepted", household_id,
            user_id=author.user_id if author is not None else None,
            device_id=author.device_id if author is not None else None,
            detail={"changes": len(hashes), "hashes": sorted(hashes)}))
    await audit.append(conn, events)
    return results, erased


class GroupCommit:
    """Commits the appends of concurrent merges together: one transaction, one statement.

    While one commit is in flight, the appends that arrive queue up and go into the next
    one, so under load many households share each WAL flush; alone, an append waits for
    exactly one commit. Every caller gets its result only after the commit, so the
    pipeline's rule (advertise only what is committed) holds. If the commit fails, every
    caller in it gets the error and nothing of it is stored.

    :meth:`close` lets the commit in flight finish and commits what is queued, then
    refuses new appends; a caller whose commit cannot finish (the writer cancelled or
    failed) gets :class:`StoreClosed`. No caller is left waiting on a future nobody will
    resolve.
    """

    def __init__(self, engine: AsyncEngine, data_keys: DataKeys, audit: AuditLog,
                 committed: Callable[[], None]) -> None:
        self._engine = engine
        self._data_keys = data_keys
        self._audit = audit
        self._committed = committed
        self._queue: list[_Pending] = []
        self._inflight: list[_Pending] = []  # the group being committed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.healthy = True  # the last commit succeeded


    async def append(self, household_id: str, new: Sequence[StoredChange],
                     author: Author | None, team: Sequence[str] | None = None,
                     expected_seq: int | None = None) -> AppendResult:
        if self._closing:
            raise StoreClosed("the store is closing; retry later")
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.append((household_id, new, author, team, expected_seq, fut))
        self._wake.set()
        if self._task is None or self._task.done():
            self._start_writer()
        return await fut

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task})  # never raises: _writer_done fails its callers
        _fail(self._queue, "the store closed before this was stored; retry later")
        self._queue.clear()

    def _start_writer(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vatra-group-commit")
        self._task.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """The writer ended. Normally with nothing in flight; cancelled (even before it
        first ran) or killed by a bug, its callers are failed here, not left waiting.
        Whether a group in flight committed is then unknown; a resend is idempotent."""
        if not task.cancelled() and task.exception() is None:
            return
        if not task.cancelled():
            log.error("group commit: the writer failed", exc_info=task.exception())
        _fail(self._inflight, "the store stopped while this was being stored; retry later")
        _fail(self._queue, "the store stopped before this was stored; retry later")
        self._inflight, self._queue = [], []

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._inflight, self._queue = self._queue, []
            if not self._inflight:
                if self._closing:
                    return
                continue
            await self._commit(self._inflight)
            self._inflight = []
            if self._closing and not self._queue:
                return

    async def _commit(self, group: list[_Pending]) -> None:
        GROUP_BATCHES.observe(len(group))
        try:
            async with self._engine.begin() as conn:
                keys, missing = await self._data_keys(conn, {g[0] for g in group})
                await lock_households(conn, keys)
                stale = await stale_households(
                    conn, {h: seq for h, _, _, _, seq, _ in group if seq is not None and h in keys})
                results, erased = await insert_changes(
                    conn, [(h, new, author) for h, new, author, _, _, _ in group
                           if h in keys and h not in stale],
                    keys, self._audit)
                for h, _, _, team, _, _ in group:
                    if team is not None and h in keys and h not in erased | stale:
                        await replace_team(conn, h, team)
        except Exception as exc:
            FAILURES.inc()
            if self.healthy:  # the first of a run of failures, in a line (no values)
                log.warning("group commit: %d batch(es) not stored (%s); their devices retry",
                            len(group), type(exc).__name__)
            self.healthy = False
            for *_, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        if not self.healthy:
            log.warning("group commit: commits succeed again")
        self.healthy = True
        self.commits += 1
        try:
            self._committed()
        except Exception:  # a listener's fault must not keep the callers from their results
            log.exception("group commit: the committed() callback failed")
        for household_id, _, _, _, _, fut in group:
            if fut.done():  # a caller cancelled meanwhile: its rows are stored anyway
                continue
            if household_id in erased:  # one erased household fails only its own callers
                fut.set_exception(HouseholdErased(household_id))
            elif household_id in stale:  # changed by another instance: nothing stored
                fut.set_exception(HouseholdStale(household_id))
            elif household_id in keys:
                fut.set_result(results[household_id])
            else:
                fut.set_exception(missing[household_id])


def _fail(pending: Sequence[_Pending], message: str) -> None:
    for *_, fut in pending:
        if not fut.done():
            fut.set_exception(StoreClosed(message))
