"""Quarantine: sync data the server refused, kept sealed for review, never dropped.

A refused batch (a rule broken: read-only user, foreign actor id, creation
outside one's localities, not a valid household, malformed Automerge bytes)
merges nothing; its raw sync message is stored here with the device, the
rule's code and a reason without content. The body is sealed:

- for a household that exists, with its data key (purpose ``quarantine``), so
  erasing the household shreds its quarantined data too (the row goes with the
  household's other rows);
- for an id the server does not know (a refused creation), with a key derived
  from the master key and bound to that id (``key_version`` says which).

A device must not be able to fill the disk by sending refused data again and
again, so each input is kept **once** (a BLAKE2b digest of household, device,
rule and bytes is unique) and within **quotas** (:class:`Quotas`: bytes and
rows per device, bytes of the whole table). Beyond them the refusal is still
answered and audited, but its data is not stored: the counter
``vatra_quarantine_dropped_total{reason}`` and a log line say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import nacl.encoding
import nacl.hash
import sqlalchemy as sa
from prometheus_client import Counter, Gauge

from sync_server.store.contract import HouseholdErased, UnknownHousehold
from sync_server.store.keys import QUARANTINE, DataKey
from sync_server.store.postgres import PostgresStore
from sync_server.store.tables import quarantine

log = logging.getLogger(__name__)

STORED = Counter("vatra_quarantine_stored_total", "Refused inputs kept in the quarantine",
                 ["code"])
SIZE = Gauge("vatra_quarantine_bytes",
             "The quarantine table's size on disk, as measured when an input was last refused")
DROPPED = Counter("vatra_quarantine_dropped_total",
                  "Refused inputs not kept: a copy is kept already (duplicate) or a quota "
                  "is full (device-bytes, device-rows, total-bytes)", ["reason"])


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    received_at: datetime
    document_id: str
    household_id: str | None
    device_id: str | None
    user_id: str | None
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Quotas:
    """How much refused data the quarantine keeps (settings ``VATRA_QUARANTINE_*``)."""

    device_bytes: int = 64 * 1024 * 1024
    device_rows: int = 1000
    total_bytes: int = 2 * 1024 * 1024 * 1024



class Quarantine:
    def __init__(self, store: PostgresStore, quotas: Quotas | None = None) -> None:
        self._store = store
        self._engine = store._engine
        self.quotas = quotas or Quotas()

    def _orphan_key(self, document_id: str, version: int) -> DataKey:
        key = nacl.hash.blake2b(document_id.encode(), digest_size=32,
                                key=self._store.keyring.master_key(version),
                                person=b"vatra-quarant-v1", encoder=nacl.encoding.RawEncoder)
        return DataKey(document_id, key)

    def _digest_key(self) -> bytes:
        keyring = self._store.keyring
        return nacl.hash.blake2b(b"quarantine digests", digest_size=32,
                                 key=keyring.master_key(keyring.current_version),
                                 person=b"vatra-qdkey-v1", encoder=nacl.encoding.RawEncoder)

    async def keep(self, document_id: str, data: bytes, *, code: str, reason: str,
                   device_id: str | None, user_id: str | None) -> int | None:
        """Store ``data`` sealed; return the row's id, or None when it is not stored (kept
        already, or over a quota: counted and logged)."""
        household_id: str | None = document_id
        version: int | None = None
        try:
            key = await self._store.data_key(document_id)
        except HouseholdErased:
            log.info("quarantine: a refused input for an erased household is not kept")
            return None  # keeping it would undo the erasure
        except UnknownHousehold:
            household_id, version = None, self._store.keyring.current_version
            key = self._orphan_key(document_id, version)
        # Keyed, so that a copy of the database cannot confirm a guess of what was sent.
        digest = nacl.hash.blake2b(b"\0".join([document_id.encode(), (device_id or "").encode(),
                                                code.encode(), data]),
                                   digest_size=32, person=b"vatra-qdigest-v1",
                                   key=self._digest_key(), encoder=nacl.encoding.RawEncoder)
        body = key.seal(QUARANTINE, data)
        q = self.quotas
        async with self._engine.begin() as conn:
            # One device's refusals are counted against its quota one at a time.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
                sa.func.hashtextextended("vatra-quarantine:" + (device_id or ""), 0))))
            full = None
            if (await conn.execute(sa.select(quarantine.c.id)
                                   .where(quarantine.c.digest == digest))).first():
                full = "duplicate"
            else:
                rows, used = (await conn.execute(
                    sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(quarantine.c.size), 0))
                    .where(quarantine.c.device_id.is_not_distinct_from(device_id)))).one()
                total = (await conn.execute(sa.select(
                    sa.func.pg_total_relation_size("quarantine")))).scalar_one()
                SIZE.set(total)
                if rows + 1 > q.device_rows:
                    full = "device-rows"
                elif used + len(body) > q.device_bytes:
                    full = "device-bytes"
                elif total + len(body) > q.total_bytes:
                    full = "total-bytes"
            if full is not None:
                DROPPED.labels(full).inc()
                log.warning("quarantine: a refused input (%s) from device %s was not kept: %s",
                            code, device_id or "-", full if full == "duplicate"
                            else f"{full} quota full")
                return None
            row_id = (await conn.execute(sa.insert(quarantine).values(
                document_id=document_id, household_id=household_id, device_id=device_id,
                user_id=user_id, code=code, reason=reason[:500], key_version=version,
                body=body, digest=digest, size=len(body)).returning(quarantine.c.id))).scalar_one()
        STORED.labels(code).inc()
        return int(row_id)

    async def list(self, limit: int = 100) -> list[Quarantined]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(quarantine).order_by(quarantine.c.id.desc()).limit(limit))).all()
        return [Quarantined(r.id, r.received_at, r.document_id, r.household_id, r.device_id,
                            r.user_id, r.code, r.reason) for r in rows]

    async def open(self, row_id: int) -> bytes:
        """The quarantined bytes of one row (for review)."""
        async with self._engine.connect() as conn:
            r = (await conn.execute(
                sa.select(quarantine).where(quarantine.c.id == row_id))).one()
        if r.household_id is None:
            key = self._orphan_key(r.document_id, r.key_version)
        else:
            key = await self._store.data_key(r.household_id)
        return key.open(QUARANTINE, r.body)
