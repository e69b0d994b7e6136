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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import nacl.encoding
import nacl.hash
import sqlalchemy as sa

from .keys import QUARANTINE, DataKey
from .storage import HouseholdErased, PostgresStore
from .tables import metadata

quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("document_id", sa.Text, nullable=False),
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=True),
    sa.Column("device_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("key_version", sa.Integer, nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index("quarantine_household", "household_id"),
)


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


class Quarantine:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._engine = store._engine

    def _orphan_key(self, document_id: str, version: int) -> DataKey:
        key = nacl.hash.blake2b(document_id.encode(), digest_size=32,
                                key=self._store.keyring.master_key(version),
                                person=b"vatra-quarant-v1", encoder=nacl.encoding.RawEncoder)
        return DataKey(document_id, key)

    async def keep(self, document_id: str, data: bytes, *, code: str, reason: str,
                   device_id: str | None, user_id: str | None) -> int:
        """Store ``data`` sealed; return the row's id."""
        household_id: str | None = document_id
        version: int | None = None
        try:
            key = await self._store.data_key(document_id)
        except (LookupError, HouseholdErased):
            household_id, version = None, self._store.keyring.current_version
            key = self._orphan_key(document_id, version)
        async with self._engine.begin() as conn:
            return (await conn.execute(sa.insert(quarantine).values(
                document_id=document_id, household_id=household_id, device_id=device_id,
                user_id=user_id, code=code, reason=reason[:500], key_version=version,
                body=key.seal(QUARANTINE, data)).returning(quarantine.c.id))).scalar_one()

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
