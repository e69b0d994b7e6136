"""Where households live: :class:`~sync_server.store.contract.HouseholdStore` on PostgreSQL.

- ``changes`` is the append-only log: one row per Automerge change, keyed by
  (household, change hash), so re-sending a change is a no-op. Rows are never
  updated or deleted (a trigger refuses it): the log is the audit trail.
- ``snapshots`` holds one compacted ``save()`` per household with the heads
  and the log position (``covers_seq``) it covers. A cold load is the snapshot
  plus the changes logged after it, in one ``Document.load``.
- ``household_keys`` holds each household's data key, wrapped by the master key.
  Change and snapshot bodies are sealed with it (:mod:`sync_server.store.keys`);
  hashes, deps, actors and log positions stay plaintext (they reveal no content).
  Erasing a household destroys its data key: its log rows stay, unreadable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync_server.store import aggregates
from sync_server.store.audit import AuditEvent, AuditLog
from sync_server.store.contract import (
    AppendResult,
    Author,
    ErasureResult,
    HouseholdErased,
    HouseholdIdTaken,
    HouseholdRecord,
    LoadedHousehold,
    OutboxEntry,
    StoredChange,
    UnknownHousehold,
)
from sync_server.store.group_commit import GroupCommit, insert_changes, replace_team
from sync_server.store.keys import (
    CHANGE,
    SNAPSHOT,
    DataKey,
    KeyRing,
    KeyRingError,
    MissingDataKey,
    WrappedKey,
)
from sync_server.store.tables import changes, household_keys, households, projection_outbox, snapshots

log = logging.getLogger(__name__)


class PostgresStore:
    """:class:`HouseholdStore` on PostgreSQL through SQLAlchemy Core and asyncpg.

    Every change body and snapshot body is sealed with its household's data key
    (``keyring``) before it is written and opened when it is read.
    """

    def __init__(self, engine: AsyncEngine, keyring: KeyRing) -> None:
        self._engine = engine
        self.keyring = keyring
        self.audit = AuditLog(engine, keyring)
        self._group = GroupCommit(engine, self.data_keys_in, self.audit, self.committed)
        self._verified: BaseException | bool = False
        self._verify_lock = asyncio.Lock()
        self._on_commit: list[Callable[[], None]] = []

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every commit that may have logged changes (the
        in-process projector wakes on it)."""
        self._on_commit.append(callback)

    def committed(self) -> None:
        for callback in self._on_commit:
            try:
                callback()
            except Exception:  # the commit stands: a listener's fault is not the writer's
                log.exception("store: an on_commit listener failed")

    async def close(self) -> None:
        """Stop the group-commit writer: the commit in flight and what is queued are
        committed, later appends refused (:class:`StoreClosed`)."""
        await self._group.close()

    # -- keys -----------------------------------------------------------------------------

    async def verify_master_key(self) -> None:
        """Check that the configured master keys open the stored data keys: one per master
        version in use. Raises :class:`keys.MasterKeyError` (wrong key, missing version).
        Run once before the first read or write; a failure is remembered, so with a wrong
        key the store returns no data at all."""
        if self._verified is True:
            return
        async with self._verify_lock:
            if isinstance(self._verified, BaseException):
                raise self._verified
            if self._verified:
                return
            async with self._engine.connect() as conn:
                rows = (await conn.execute(
                    sa.select(household_keys.c.household_id, household_keys.c.wrapped,
                              household_keys.c.master_version)
                    .where(household_keys.c.wrapped.is_not(None))
                    .ext(postgresql.distinct_on(household_keys.c.master_version))
                    .order_by(household_keys.c.master_version))).all()
            try:
                for row in rows:
                    self.keyring.rewrap(row.household_id,
                                        WrappedKey(row.wrapped, row.master_version))
            except KeyRingError as exc:
                self._verified = exc
                raise
            self._verified = True

    async def data_keys_in(self, conn: AsyncConnection, household_ids: Collection[str]
                         ) -> tuple[dict[str, DataKey], dict[str, BaseException]]:
        """The data keys of ``household_ids`` (cache, else unwrapped from the table), and an
        error for each household that has none to use (erased, or not registered)."""
        keys: dict[str, DataKey] = {}
        errors: dict[str, BaseException] = {}
        missing = []
        for hid in household_ids:
            key = self.keyring.cached(hid)
            if key is not None:
                keys[hid] = key
            else:
                missing.append(hid)
        if missing:
            rows = {r.household_id: r for r in (await conn.execute(
                sa.select(household_keys.c.household_id, household_keys.c.wrapped,
                          household_keys.c.master_version)
                .where(household_keys.c.household_id.in_(missing)))).all()}
            for hid in missing:
                row = rows.get(hid)
                if row is None:
                    errors[hid] = UnknownHousehold(hid)  # not registered (no key row)
                elif row.wrapped is None:
                    errors[hid] = HouseholdErased(hid)
                else:
                    keys[hid] = self.keyring.unwrap(hid, WrappedKey(row.wrapped,
                                                                    row.master_version))
        return keys, errors

    async def data_key(self, household_id: str, conn: AsyncConnection | None = None) -> DataKey:
        """The household's data key, to seal or open any household-scoped blob (purposes in
        :mod:`sync_server.store.keys`). Raises :class:`HouseholdErased` or
        :class:`UnknownHousehold`."""
        await self.verify_master_key()
        if conn is None:
            async with self._engine.connect() as own:
                keys, errors = await self.data_keys_in(own, [household_id])
        else:
            keys, errors = await self.data_keys_in(conn, [household_id])
        if household_id in errors:
            raise errors[household_id]
        return keys[household_id]

    # -- the contract ---------------------------------------------------------------------

    async def create_household(self, record: HouseholdRecord,
                               first_changes: Sequence[StoredChange],
                               author: Author | None = None,
                               team: Sequence[str] = ()) -> AppendResult:
        """Register ``record``, its data key, its first changes and its team (the users of
        ``team`` that exist) in one transaction.

        An id registered already (by another connection a moment ago, or erased) stores
        nothing and raises :class:`HouseholdIdTaken` (:class:`HouseholdErased` for an
        erased one): a creation never writes into someone else's household."""
        await self.verify_master_key()
        new_key, wrapped = self.keyring.new_data_key(record.id)
        async with self._engine.begin() as conn:
            registered = (await conn.execute(
                postgresql.insert(households)
                .values(id=record.id, locality=record.locality, county=record.county)
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(households.c.id))).first()
            if registered is None:
                self.keyring.forget(record.id)  # read what is stored now, not a cached copy
                _, errors = await self.data_keys_in(conn, [record.id])
                if isinstance(errors.get(record.id), HouseholdErased):
                    raise errors[record.id]
                raise HouseholdIdTaken(record.id)
            await conn.execute(household_keys.insert().values(
                household_id=record.id, wrapped=wrapped.wrapped,
                master_version=wrapped.master_version))
            if team:  # who may sync it is known the moment it exists
                await replace_team(conn, record.id, team)
            results, _ = await insert_changes(conn, [(record.id, first_changes, author)],
                                              {record.id: new_key}, self.audit)
            result = results[record.id]
        self.keyring.remember(new_key)  # only once committed
        self.committed()
        return result

    async def move_household(self, record: HouseholdRecord, new: Sequence[StoredChange],
                             author: Author | None = None,
                             team: Sequence[str] | None = None) -> AppendResult:
        """Log ``new`` (the server's change applying an approved ``move_household``) and
        set the household's locality and county to ``record``'s, in one transaction: the
        registry row and the document never disagree about where a household is."""
        await self.verify_master_key()
        key = await self.data_key(record.id)
        async with self._engine.begin() as conn:
            await conn.execute(sa.update(households).where(households.c.id == record.id)
                               .values(locality=record.locality, county=record.county))
            results, erased = await insert_changes(conn, [(record.id, new, author)],
                                                   {record.id: key}, self.audit)
            if erased:  # erased by another process since the key was read: roll back
                self.keyring.forget(record.id)
                raise HouseholdErased(record.id)
            if team is not None:
                await replace_team(conn, record.id, team)
            result = results[record.id]
        self.committed()
        return result

    async def household(self, household_id: str) -> HouseholdRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                sa.select(households).where(households.c.id == household_id))).first()
        if row is None:
            return None
        return HouseholdRecord(row.id, row.locality, row.county, row.created_at)

    async def heads(self, household_ids: Collection[str]
                    ) -> dict[str, tuple[HouseholdRecord, list[bytes]]]:
        if not household_ids:
            return {}
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(households).select_from(households.join(household_keys))
                .where(households.c.id.in_(sorted(household_ids)),
                       household_keys.c.wrapped.is_not(None)))).all()
        return {r.id: (HouseholdRecord(r.id, r.locality, r.county, r.created_at),
                       sorted(r.heads)) for r in rows}

    async def append_changes(self, household_id: str, new: Sequence[StoredChange],
                             author: Author | None = None,
                             team: Sequence[str] | None = None,
                             expected_seq: int | None = None) -> AppendResult:
        if not new:
            return AppendResult(0, 0, 0)
        await self.verify_master_key()
        try:
            return await self._group.append(household_id, new, author, team, expected_seq)
        except HouseholdErased:  # by another process: this one's cached key is stale
            self.keyring.forget(household_id)
            raise

    async def last_seq(self, household_id: str) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(changes.c.seq), 0))
                .where(changes.c.household_id == household_id))).scalar_one())

    async def load(self, household_id: str) -> LoadedHousehold | None:
        """Snapshot and later changes, opened. ``None`` for an unknown household;
        :class:`HouseholdErased` for an erased one."""
        await self.verify_master_key()
        async with self._engine.connect() as conn:
            rec = (await conn.execute(
                sa.select(households, household_keys.c.wrapped, household_keys.c.master_version)
                .select_from(households.outerjoin(household_keys))
                .where(households.c.id == household_id))).first()
            if rec is None:
                return None
            if rec.wrapped is None:
                self.keyring.forget(household_id)
                if rec.master_version is None:
                    raise MissingDataKey(household_id)
                raise HouseholdErased(household_id)
            key = self.keyring.unwrap(household_id, WrappedKey(rec.wrapped, rec.master_version))
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
            snapshot=key.open(SNAPSHOT, snap.body) if snap is not None else b"",
            snapshot_heads=tuple(snap.heads) if snap is not None else (),
            later_changes=tuple(key.open(CHANGE, r.body) for r in later),
            last_seq=later[-1].seq if later else covers,
        )

    async def save_snapshot(self, household_id: str, body: bytes,
                            heads: Sequence[bytes], covers_seq: int) -> None:
        await self.verify_master_key()
        async with self._engine.begin() as conn:
            # FOR SHARE: an erasure running now either finishes first (and this refuses)
            # or waits for this snapshot and then deletes it.
            row = (await conn.execute(
                sa.select(household_keys.c.wrapped, household_keys.c.master_version)
                .where(household_keys.c.household_id == household_id)
                .with_for_update(read=True))).first()
            if row is None:
                raise UnknownHousehold(household_id)
            if row.wrapped is None:
                self.keyring.forget(household_id)
                raise HouseholdErased(household_id)
            key = self.keyring.unwrap(household_id, WrappedKey(row.wrapped, row.master_version))
            stmt = postgresql.insert(snapshots).values(
                household_id=household_id, body=key.seal(SNAPSHOT, body), heads=list(heads),
                covers_seq=covers_seq)
            stmt = stmt.on_conflict_do_update(
                index_elements=["household_id"],
                set_={"body": stmt.excluded.body, "heads": stmt.excluded.heads,
                      "covers_seq": stmt.excluded.covers_seq, "created_at": sa.func.now()},
                # Never move a snapshot backwards (two writers racing: the newer wins).
                where=snapshots.c.covers_seq < stmt.excluded.covers_seq)
            await conn.execute(stmt)

    async def change_count(self, household_id: str) -> int:
        async with self._engine.connect() as conn:
            return (await conn.execute(
                sa.select(sa.func.count()).select_from(changes)
                .where(changes.c.household_id == household_id))).scalar_one()

    async def change_origins(self, household_id: str, hashes: Collection[bytes]
                             ) -> dict[bytes, tuple[str | None, datetime]]:
        if not hashes:
            return {}
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(changes.c.hash, changes.c.device_id, changes.c.received_at)
                .where(changes.c.household_id == household_id,
                       changes.c.hash.in_(list(hashes))))
            return {r.hash: (r.device_id, r.received_at) for r in rows}

    # -- the projection outbox ---------------------------------------------------------------

    async def outbox_pending(self, limit: int = 100) -> list[OutboxEntry]:
        """Households whose projection is behind, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(projection_outbox).order_by(projection_outbox.c.enqueued_at)
                .limit(limit))
            return [OutboxEntry(r.household_id, r.last_seq, r.enqueued_at) for r in rows]

    # -- erasure and rotation -------------------------------------------------------------

    async def erase_household(self, household_id: str, *, by: str | None = None) -> ErasureResult:
        """Crypto-shred a household: destroy its data key and delete its rows outside the
        change log (every table with a foreign key to ``households`` but ``changes``,
        ``household_keys`` and ``household_team``; the snapshot among them). The log keeps
        its rows, sealed with the destroyed key; the ``households`` row stays as the
        tombstone the log refers to, and the team rows (user ids, no content) so that the
        members' tablets are told to discard their copies. ``by`` (who erased it) goes to
        the audit log. Idempotent. Raises :class:`UnknownHousehold` for an unknown
        household."""
        async with self._engine.begin() as conn:
            if (await conn.execute(sa.select(households.c.id)
                                   .where(households.c.id == household_id))).first() is None:
                raise UnknownHousehold(household_id)
            key = (await conn.execute(
                sa.select(household_keys.c.wrapped)
                .where(household_keys.c.household_id == household_id)
                .with_for_update())).first()
            already = key is not None and key.wrapped is None
            if key is None:
                await conn.execute(household_keys.insert().values(
                    household_id=household_id, wrapped=None, master_version=0,
                    destroyed_at=sa.func.now()))
            elif not already:
                await conn.execute(
                    household_keys.update()
                    .where(household_keys.c.household_id == household_id)
                    .values(wrapped=None, destroyed_at=sa.func.now()))
            await aggregates.forget(conn, household_id)  # its rows leave the summaries too
            deleted = {}
            prep = conn.dialect.identifier_preparer
            for schema, table, column in await _tables_referencing_households(conn):
                if table in ("changes", "household_keys", "household_team") \
                        and schema == "public":
                    continue
                done = await conn.execute(
                    sa.text(f"DELETE FROM {prep.quote_schema(schema)}.{prep.quote(table)} "
                            f"WHERE {prep.quote(column)} = :h"), {"h": household_id})
                name = table if schema == "public" else f"{schema}.{table}"
                deleted[name] = done.rowcount
            kept = (await conn.execute(
                sa.select(sa.func.count()).select_from(changes)
                .where(changes.c.household_id == household_id))).scalar_one()
            if not already:
                await self.audit.append(conn, [AuditEvent(
                    "household-erased", household_id, user_id=by,
                    detail={"rows_deleted": sum(deleted.values()), "log_rows_kept": kept})])
        self.keyring.forget(household_id)
        return ErasureResult(household_id, deleted, kept, already)

    async def rotate_master_key(self) -> int:
        """Rewrap every live data key under the keyring's current master version, in one
        transaction; the number of keys rewrapped. The data keys themselves (and so every
        sealed body) are unchanged."""
        target = self.keyring.current_version
        async with self._engine.begin() as conn:
            rows = (await conn.execute(
                sa.select(household_keys.c.household_id, household_keys.c.wrapped,
                          household_keys.c.master_version)
                .where(household_keys.c.wrapped.is_not(None),
                       household_keys.c.master_version != target)
                .with_for_update())).all()
            updates = []
            for row in rows:
                new = self.keyring.rewrap(row.household_id,
                                          WrappedKey(row.wrapped, row.master_version), target)
                updates.append({"h": row.household_id, "w": new.wrapped, "v": new.master_version})
            if updates:
                await conn.execute(
                    household_keys.update()
                    .where(household_keys.c.household_id == sa.bindparam("h"))
                    .values(wrapped=sa.bindparam("w"), master_version=sa.bindparam("v")),
                    updates)
        return len(updates)

    async def key_versions(self) -> dict[int, int]:
        """Live data keys per master key version (destroyed keys are not counted)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(household_keys.c.master_version, sa.func.count())
                .where(household_keys.c.wrapped.is_not(None))
                .group_by(household_keys.c.master_version))).all()
        return {v: n for v, n in rows}


async def _tables_referencing_households(conn: AsyncConnection) -> list[tuple[str, str, str]]:
    """(schema, table, column) of every single-column foreign key to ``households.id``."""
    rows = (await conn.execute(sa.text("""
        SELECT n.nspname AS sch, t.relname AS tbl, a.attname AS col
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.confrelid = 'households'::regclass
          AND array_length(c.conkey, 1) = 1
        ORDER BY 1, 2, 3
    """))).all()
    return [(r.sch, r.tbl, r.col) for r in rows]
