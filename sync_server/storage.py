"""Where households live: the store interface and its PostgreSQL implementation.

The contract (``HouseholdStore``) is small on purpose, like automerge-repo's
storage adapters, and ``tests/test_storage_contract.py`` runs one contract
suite against every implementation.

- ``changes`` is the append-only log: one row per Automerge change, keyed by
  (household, change hash), so re-sending a change is a no-op. Rows are never
  updated or deleted (a trigger refuses it): the log is the audit trail.
- ``snapshots`` holds one compacted ``save()`` per household with the heads
  and the log position (``covers_seq``) it covers. A cold load is the snapshot
  plus the changes logged after it, in one ``Document.load``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

metadata = sa.MetaData()

households = sa.Table(
    "households", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("locality", sa.Text, nullable=False),
    sa.Column("county", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

changes = sa.Table(
    "changes", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("deps", postgresql.ARRAY(sa.LargeBinary), nullable=False),
    sa.Column("actor", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("household_id", "hash"),
    sa.Index("changes_household_seq", "household_id", "seq"),
)

snapshots = sa.Table(
    "snapshots", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
    sa.Column("heads", postgresql.ARRAY(sa.LargeBinary), nullable=False),
    sa.Column("covers_seq", sa.BigInteger, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)


@dataclass(frozen=True, slots=True)
class HouseholdRecord:
    """A household in the registry (no content: that is in the change log)."""

    id: str
    locality: str
    county: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredChange:
    """One Automerge change as logged: its hash, dependencies, author actor and bytes."""

    hash: bytes
    deps: tuple[bytes, ...]
    actor: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    inserted: int        # rows new to the log (0 when everything was a re-send)
    inserted_bytes: int  # their body bytes
    last_seq: int        # highest log position among the inserted rows (0 if none inserted)


@dataclass(frozen=True, slots=True)
class LoadedHousehold:
    """What a cold load reads: the latest snapshot and the changes logged after it."""

    record: HouseholdRecord
    snapshot: bytes
    snapshot_heads: tuple[bytes, ...]
    later_changes: tuple[bytes, ...]
    last_seq: int

    @property
    def bytes_since_snapshot(self) -> int:
        return sum(len(c) for c in self.later_changes)

    def document_bytes(self) -> bytes:
        """Input for one ``Document.load``: snapshot chunk followed by change chunks."""
        return self.snapshot + b"".join(self.later_changes)


class HouseholdStore(Protocol):
    """The storage contract the server relies on."""

    async def create_household(self, record: HouseholdRecord,
                               first_changes: Sequence[StoredChange]) -> AppendResult:
        """Register ``record`` and log its first changes in one transaction.

        Registering an id that exists already only appends the changes (idempotent)."""
        ...

    async def household(self, household_id: str) -> HouseholdRecord | None: ...

    async def append_changes(self, household_id: str,
                             new: Sequence[StoredChange]) -> AppendResult:
        """Log ``new`` in one transaction; changes already logged are skipped."""
        ...

    async def load(self, household_id: str) -> LoadedHousehold | None: ...

    async def save_snapshot(self, household_id: str, body: bytes,
                            heads: Sequence[bytes], covers_seq: int) -> None:
        """Replace the household's snapshot with ``body``, covering the log up to ``covers_seq``."""
        ...

    async def change_count(self, household_id: str) -> int: ...


#: One statement for a whole batch, whatever its size and however many households it
#: spans: the rows travel as five array parameters, so the statement is prepared once
#: and cached (a multi-row VALUES list would be a new statement per batch size).
#: ``deps`` arrive as comma-joined hex because PostgreSQL arrays cannot be ragged.
#: Re-sent changes hit the primary key and are skipped.
_APPEND = sa.text("""
    INSERT INTO changes (household_id, hash, deps, actor, body)
    SELECT u.household_id, u.hash,
           ARRAY(SELECT decode(d, 'hex') FROM unnest(string_to_array(u.deps, ',')) AS d),
           u.actor, u.body
    FROM unnest(:household_ids, :hashes, :deps, :actors, :bodies)
         AS u(household_id, hash, deps, actor, body)
    ON CONFLICT (household_id, hash) DO NOTHING
    RETURNING household_id, seq, length(body)
""").bindparams(
    sa.bindparam("household_ids", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("hashes", type_=postgresql.ARRAY(sa.LargeBinary)),
    sa.bindparam("deps", type_=postgresql.ARRAY(sa.Text)),
    sa.bindparam("actors", type_=postgresql.ARRAY(sa.LargeBinary)),
    sa.bindparam("bodies", type_=postgresql.ARRAY(sa.LargeBinary)),
)


async def _insert_changes(conn: AsyncConnection,
                          batches: Sequence[tuple[str, Sequence[StoredChange]]]
                          ) -> dict[str, AppendResult]:
    """Insert every batch with one statement; an AppendResult per household."""
    params: dict[str, list[Any]] = {k: [] for k in
                                    ("household_ids", "hashes", "deps", "actors", "bodies")}
    for household_id, new in batches:
        for c in new:
            params["household_ids"].append(household_id)
            params["hashes"].append(c.hash)
            params["deps"].append(",".join(d.hex() for d in c.deps))
            params["actors"].append(c.actor)
            params["bodies"].append(c.body)
    results = {household_id: AppendResult(0, 0, 0) for household_id, _ in batches}
    if not params["hashes"]:
        return results
    for household_id, seq, size in (await conn.execute(_APPEND, params)).all():
        r = results[household_id]
        results[household_id] = AppendResult(r.inserted + 1, r.inserted_bytes + size,
                                             max(r.last_seq, seq))
    return results


class _GroupCommit:
    """Commits the appends of concurrent merges together: one transaction, one statement.

    While one commit is in flight, the appends that arrive queue up and go into the next
    one, so under load many households share each WAL flush; alone, an append waits for
    exactly one commit, as before. Every caller still gets its result only after the
    commit, so the pipeline's rule (advertise only what is committed) holds. If the
    commit fails, every caller in it gets the error and nothing of it is stored.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: list[tuple[str, Sequence[StoredChange], asyncio.Future[AppendResult]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    async def append(self, household_id: str, new: Sequence[StoredChange]) -> AppendResult:
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.append((household_id, new, fut))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="vatra-group-commit")
        return await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, _, fut in self._queue:
            if not fut.done():
                fut.set_exception(RuntimeError("store closed"))
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            group, self._queue = self._queue, []
            if not group:
                continue
            try:
                async with self._engine.begin() as conn:
                    results = await _insert_changes(conn, [(h, new) for h, new, _ in group])
            except Exception as exc:
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.commits += 1
            for household_id, _, fut in group:
                if not fut.done():  # a caller cancelled meanwhile: its rows are stored anyway
                    fut.set_result(results[household_id])


class PostgresStore:
    """:class:`HouseholdStore` on PostgreSQL through SQLAlchemy Core and asyncpg."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._group = _GroupCommit(engine)

    async def close(self) -> None:
        """Stop the group-commit writer (pending appends fail with an error)."""
        await self._group.close()

    async def create_household(self, record: HouseholdRecord,
                               first_changes: Sequence[StoredChange]) -> AppendResult:
        async with self._engine.begin() as conn:
            await conn.execute(
                postgresql.insert(households)
                .values(id=record.id, locality=record.locality, county=record.county)
                .on_conflict_do_nothing(index_elements=["id"]))
            return (await _insert_changes(conn, [(record.id, first_changes)]))[record.id]

    async def household(self, household_id: str) -> HouseholdRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                sa.select(households).where(households.c.id == household_id))).first()
        if row is None:
            return None
        return HouseholdRecord(row.id, row.locality, row.county, row.created_at)

    async def append_changes(self, household_id: str,
                             new: Sequence[StoredChange]) -> AppendResult:
        if not new:
            return AppendResult(0, 0, 0)
        return await self._group.append(household_id, new)

    async def load(self, household_id: str) -> LoadedHousehold | None:
        async with self._engine.connect() as conn:
            rec = (await conn.execute(
                sa.select(households).where(households.c.id == household_id))).first()
            if rec is None:
                return None
            snap = (await conn.execute(
                sa.select(snapshots.c.body, snapshots.c.heads, snapshots.c.covers_seq)
                .where(snapshots.c.household_id == household_id))).first()
            covers = snap.covers_seq if snap is not None else 0
            later = (await conn.execute(
                sa.select(changes.c.body, changes.c.seq)
                .where(changes.c.household_id == household_id, changes.c.seq > covers)
                .order_by(changes.c.seq))).all()
        return LoadedHousehold(
            record=HouseholdRecord(rec.id, rec.locality, rec.county, rec.created_at),
            snapshot=snap.body if snap is not None else b"",
            snapshot_heads=tuple(snap.heads) if snap is not None else (),
            later_changes=tuple(r.body for r in later),
            last_seq=later[-1].seq if later else covers,
        )

    async def save_snapshot(self, household_id: str, body: bytes,
                            heads: Sequence[bytes], covers_seq: int) -> None:
        stmt = postgresql.insert(snapshots).values(
            household_id=household_id, body=body, heads=list(heads), covers_seq=covers_seq)
        stmt = stmt.on_conflict_do_update(
            index_elements=["household_id"],
            set_={"body": stmt.excluded.body, "heads": stmt.excluded.heads,
                  "covers_seq": stmt.excluded.covers_seq, "created_at": sa.func.now()},
            # Never move a snapshot backwards (two writers racing: the newer wins).
            where=snapshots.c.covers_seq < stmt.excluded.covers_seq)
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def change_count(self, household_id: str) -> int:
        async with self._engine.connect() as conn:
            return (await conn.execute(
                sa.select(sa.func.count()).select_from(changes)
                .where(changes.c.household_id == household_id))).scalar_one()
