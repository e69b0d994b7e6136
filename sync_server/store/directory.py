"""The county directories of specialised services in PostgreSQL (conflict/directory.py
says what a provider is): replaced whole by an import, read by county."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conflict.directory import version
from sync_server.store.tables import directories, providers

_COLUMNS = ("id", "county", "name", "kind", "address", "lat", "lon", "phone", "email",
            "accessibility", "hours")


@dataclass(frozen=True, slots=True)
class Imported:
    """What an import changed: providers added, removed, changed, kept, and the new version."""

    county: str
    version: str
    added: int
    removed: int
    changed: int
    kept: int


async def replace_directory(engine: AsyncEngine, county: str, wanted: Sequence[dict[str, Any]],
                            by: str | None = None) -> Imported:
    """Make ``county``'s directory exactly ``wanted`` (validated providers), in one
    transaction: a tablet never reads half an import. A provider id another county's
    directory holds is refused (:class:`ValueError`), nothing written."""
    async with engine.begin() as conn:
        # One import at a time, of any county: a second waits, then sees the first's
        # providers (two counties claiming one provider id are then told apart).
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x6469_7200, 0)))
        ids = [p["id"] for p in wanted]
        elsewhere = (await conn.execute(sa.select(providers.c.id, providers.c.county).where(
            providers.c.id.in_(ids), providers.c.county != county))).first()
        if elsewhere is not None:
            raise ValueError(f"provider {elsewhere.id} is in the directory of {elsewhere.county}")
        before = {p["id"]: p for p in await _providers(conn, [county])}
        after = {p["id"]: {c: p[c] for c in _COLUMNS} for p in wanted}
        gone = [i for i in before if i not in after]
        changed = [p for i, p in after.items() if i in before and before[i] != p]
        added = [p for i, p in after.items() if i not in before]
        if gone:
            await conn.execute(sa.delete(providers).where(providers.c.id.in_(gone)))
        for p in changed:
            await conn.execute(sa.update(providers).where(providers.c.id == p["id"]).values(**p))
        if added:
            await conn.execute(sa.insert(providers), added)
        v = version(after.values())
        await conn.execute(sa.delete(directories).where(directories.c.county == county))
        await conn.execute(sa.insert(directories).values(county=county, version=v,
                                                         imported_by=by))
    return Imported(county, v, len(added), len(gone), len(changed),
                    len(after) - len(added) - len(changed))


async def _providers(conn: AsyncConnection, counties: Collection[str]) -> list[dict[str, Any]]:
    rows = await conn.execute(sa.select(*(providers.c[c] for c in _COLUMNS))
                              .where(providers.c.county.in_(sorted(counties)))
                              .order_by(providers.c.county, providers.c.name, providers.c.id))
    return [{**r, "accessibility": list(r["accessibility"])} for r in rows.mappings()]


async def directory_versions(conn: AsyncConnection, counties: Collection[str] | None
                             ) -> list[tuple[str, str]]:
    """``[(county, version)]`` of ``counties``' directories (every one when None): what a
    tablet's check compares, without reading the providers."""
    q = sa.select(directories.c.county, directories.c.version).order_by(directories.c.county)
    if counties is not None:
        q = q.where(directories.c.county.in_(sorted(counties)))
    return [(r.county, r.version) for r in await conn.execute(q)]


async def read_directories(conn: AsyncConnection, counties: Collection[str] | None
                           ) -> list[dict[str, Any]]:
    """``[{county, version, imported_at, providers}]`` of ``counties`` (every county with
    a directory when None), by county; a county without one is left out."""
    q = sa.select(directories).order_by(directories.c.county)
    if counties is not None:
        q = q.where(directories.c.county.in_(sorted(counties)))
    heads = (await conn.execute(q)).mappings().all()
    listed = await _providers(conn, [h["county"] for h in heads])
    return [{"county": h["county"], "version": h["version"], "imported_at": h["imported_at"],
             "providers": [p for p in listed if p["county"] == h["county"]]} for h in heads]
