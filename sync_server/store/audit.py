"""The audit log: who did what to which household, when — append-only and hash-chained.

Every row belongs to a chain: the household's id for what happens to a
household (changes accepted, batches refused, erasure), ``device:<id>`` for
what happens to a device (enrollment, sessions, revocation). Within a chain
rows are numbered 1, 2, 3 … and each row's ``hash`` is a BLAKE2b MAC, keyed
with a key derived from the master key, over the previous row's hash and the
row's own fields. ``audit_heads`` holds each chain's last number and hash.

So ``vatra audit verify`` detects an edited row (its MAC fails), a deleted
row (a gap, or a broken link), and deleted last rows (the head points past
the end). Someone who can write the database but does not hold the master key
cannot forge a chain. A trigger refuses UPDATE and DELETE on ``audit``.

Rows carry ids, codes and counts, never household content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nacl.encoding
import nacl.hash
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync_server.store.keys import KeyRing
from sync_server.store.tables import audit, audit_heads

GENESIS = bytes(32)

_APPEND = sa.text("""
    WITH appended AS (
        INSERT INTO audit (chain, seq, at, kind, household_id, user_id, device_id, detail,
                           key_version, prev_hash, hash)
        SELECT u.chain, u.seq, u.at, u.kind, u.hid, u.uid, u.did, u.detail::jsonb,
               u.version, u.prev, u.hash
        FROM unnest(:chains, :seqs, :ats, :kinds, :hids, :uids, :dids, :details, :versions,
                    :prevs, :hashes)
             AS u(chain, seq, at, kind, hid, uid, did, detail, version, prev, hash)
    )
    INSERT INTO audit_heads (chain, seq, hash)
    SELECT * FROM unnest(:head_chains, :head_seqs, :head_hashes)
    ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
""").bindparams(
    *[sa.bindparam(n, type_=postgresql.ARRAY(sa.Text))
      for n in ("chains", "kinds", "hids", "uids", "dids", "details", "head_chains")],
    *[sa.bindparam(n, type_=postgresql.ARRAY(sa.BigInteger))
      for n in ("seqs", "versions", "head_seqs")],
    sa.bindparam("ats", type_=postgresql.ARRAY(sa.DateTime(timezone=True))),
    *[sa.bindparam(n, type_=postgresql.ARRAY(sa.LargeBinary))
      for n in ("prevs", "hashes", "head_hashes")],
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    kind: str
    household_id: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def chain(self) -> str:
        return self.household_id or f"device:{self.device_id}"


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    seq: int | None
    what: str


def _canonical(chain: str, seq: int, at: datetime, kind: str, household_id: str | None,
               user_id: str | None, device_id: str | None, detail: Any) -> bytes:
    return json.dumps([chain, seq, at.astimezone(UTC).isoformat(), kind, household_id,
                       user_id, device_id, detail],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class AuditLog:
    def __init__(self, engine: AsyncEngine, keyring: KeyRing) -> None:
        self._engine = engine
        self._keyring = keyring

    def _mac(self, version: int, prev: bytes, body: bytes) -> bytes:
        key = nacl.hash.blake2b(self._keyring.master_key(version), digest_size=32,
                                person=b"vatra-audit-v1", encoder=nacl.encoding.RawEncoder)
        return nacl.hash.blake2b(prev + body, digest_size=32, key=key,
                                 encoder=nacl.encoding.RawEncoder)

    async def record(self, *events: AuditEvent) -> None:
        """Append ``events`` in their own transaction."""
        async with self._engine.begin() as conn:
            await self.append(conn, events)

    async def append(self, conn: AsyncConnection, events: Sequence[AuditEvent]) -> None:
        """Append ``events`` inside the caller's transaction (e.g. with the changes they
        describe), locking each chain's head so concurrent writers queue per chain."""
        if not events:
            return
        chains = sorted({e.chain for e in events})
        rows = (await conn.execute(
            sa.select(audit_heads.c.chain, audit_heads.c.seq, audit_heads.c.hash)
            .where(audit_heads.c.chain.in_(chains))
            .order_by(audit_heads.c.chain).with_for_update())).all()
        heads = {r.chain: (r.seq, r.hash) for r in rows}
        version = self._keyring.current_version
        at = datetime.now(UTC)
        new_rows = []
        for e in events:
            seq, prev = heads.get(e.chain, (0, GENESIS))
            seq += 1
            digest = self._mac(version, prev, _canonical(
                e.chain, seq, at, e.kind, e.household_id, e.user_id, e.device_id, e.detail))
            new_rows.append({"chain": e.chain, "seq": seq, "at": at, "kind": e.kind,
                             "household_id": e.household_id, "user_id": e.user_id,
                             "device_id": e.device_id, "detail": e.detail,
                             "key_version": version, "prev_hash": prev, "hash": digest})
            heads[e.chain] = (seq, digest)
        # Rows and heads in one cached statement (arrays as parameters, a data-modifying
        # CTE): this runs inside the changes' own transaction, on the hot path.
        await conn.execute(_APPEND, {
            "chains": [r["chain"] for r in new_rows], "seqs": [r["seq"] for r in new_rows],
            "ats": [r["at"] for r in new_rows], "kinds": [r["kind"] for r in new_rows],
            "hids": [r["household_id"] for r in new_rows],
            "uids": [r["user_id"] for r in new_rows], "dids": [r["device_id"] for r in new_rows],
            "details": [json.dumps(r["detail"]) for r in new_rows],
            "versions": [r["key_version"] for r in new_rows],
            "prevs": [r["prev_hash"] for r in new_rows], "hashes": [r["hash"] for r in new_rows],
            "head_chains": chains, "head_seqs": [heads[c][0] for c in chains],
            "head_hashes": [heads[c][1] for c in chains],
        })

    async def verify(self) -> list[Problem]:
        """Every broken MAC, gap, broken link or missing tail, chain by chain."""
        problems: list[Problem] = []
        async with self._engine.connect() as conn:
            heads = {r.chain: (r.seq, r.hash) for r in (await conn.execute(
                sa.select(audit_heads))).all()}
            result = await conn.stream(sa.select(audit).order_by(audit.c.chain, audit.c.seq))
            chain: str | None = None
            expected_seq, prev = 1, GENESIS
            seen: dict[str, tuple[int, bytes]] = {}
            async for r in result:
                if r.chain != chain:
                    chain, expected_seq, prev = r.chain, 1, GENESIS
                if r.seq != expected_seq:
                    problems.append(Problem(r.chain, r.seq,
                                            f"row(s) {expected_seq}..{r.seq - 1} missing"))
                if r.prev_hash != prev:
                    problems.append(Problem(r.chain, r.seq, "does not link to the row before"))
                try:
                    mac = self._mac(r.key_version, r.prev_hash, _canonical(
                        r.chain, r.seq, r.at, r.kind, r.household_id, r.user_id, r.device_id,
                        r.detail))
                except Exception:
                    problems.append(Problem(r.chain, r.seq, "its key version is not available"))
                else:
                    if mac != r.hash:
                        problems.append(Problem(r.chain, r.seq, "was edited (MAC mismatch)"))
                expected_seq, prev = r.seq + 1, r.hash
                seen[r.chain] = (r.seq, r.hash)
        for name, (seq, digest) in sorted(heads.items()):
            last = seen.get(name)
            if last is None:
                problems.append(Problem(name, None, f"all {seq} row(s) are missing"))
            elif last != (seq, digest):
                problems.append(Problem(name, last[0], f"the last {seq - last[0]} row(s) are "
                                                       f"missing (head is at {seq})"))
        for name in sorted(set(seen) - set(heads)):
            problems.append(Problem(name, None, "chain has no head (heads table edited)"))
        return problems
