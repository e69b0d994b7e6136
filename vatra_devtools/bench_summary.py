"""How long the web tier's summaries take at a county's and at a nation's size: read from
the per-locality aggregates (sync_server/store/aggregates.py) against counted from the
rows (``summary_from_rows``, what ``/v1/web/summary`` did before), in the same run.

    python -m vatra_devtools.bench_summary [--base 500] [--scale 1x80:48000 10x80:480000]
                                          [--runs 21]

``--base`` households are generated (vatra_devtools/seed.py), stored encrypted and
projected by the real projector. They are then copied in SQL, with new ids, into
``COUNTIES x LOCALITIES`` places until the caseload has the size asked for (each
``--scale`` step adds to the previous one): only the tables a summary reads are copied
(the registry, ``proj.households``, ``answers``, ``vulnerabilities``, ``services``), then
the aggregates are recounted from them and the database is vacuumed and analyzed.
Before that, the base is projected ``--rounds`` times from empty tables with the
aggregates kept and with their update skipped, alternately: what they cost the projector. Each
summary (national, the first county, its first locality) runs ``--runs`` times in its
own scoped transaction, as the read API runs it; the medians and the ratio are printed,
and the two answers are checked to be equal. Embedded PostgreSQL unless
``DATABASE_URL`` is set (then it must be an empty database). Results: docs/projections.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sync_server.config import Settings
from sync_server.projection.projector import Projector
from sync_server.projection.readmodel import Level, Scope, reading, summary, summary_from_rows
from sync_server.store import aggregates
from sync_server.store.database import open_database
from sync_server.store.keys import KeyRing, generate_master_key
from sync_server.store.postgres import PostgresStore
from sync_server.store.tables import (
    PROJ_TABLES,
    households,
    proj_answers,
    proj_households,
    proj_services,
    proj_vulnerabilities,
)
from vatra_devtools.seed import seed_store

#: The tables a summary reads (by the rows or by the aggregates' recount), copied in order.
COPIED = (households, proj_households, proj_answers, proj_vulnerabilities, proj_services)
TODAY = dt.date(2026, 5, 1)


def county_code(i: int) -> str:
    return f"K{i:02d}"


def locality_code(county: int, i: int) -> str:
    return f"9{county:02d}{i:03d}"


async def copy_to(engine: AsyncEngine, base: list[str], target: int, counties: int,
                  localities: int, copied: int) -> int:
    """Copy the ``base`` households until ``target`` households were copied in all; the
    copies numbered from ``copied`` on. Returns the new count."""
    batch = 0
    while copied < target:
        n = min(len(base), target - copied)
        ids = base[:n]
        # copy j (a number over the whole caseload) goes to county j % counties and one
        # of its localities: spread evenly, each county the same size.
        place = (f"(({copied} + o.n - 1) % {counties})",
                 f"((({copied} + o.n - 1) / {counties}) % {localities})")
        county = f"'K' || lpad({place[0]}::text, 2, '0')"
        locality = f"'9' || lpad({place[0]}::text, 2, '0') || lpad({place[1]}::text, 3, '0')"
        suffix = f"'-c' || ({copied} + o.n - 1)::text"
        async with engine.begin() as conn:
            for table in COPIED:
                key = "id" if table is households else "household_id"
                columns = [c.name for c in table.columns]
                values = [f"t.{key} || {suffix}" if c == key else county if c == "county"
                          else locality if c == "locality" else f"t.{c}" for c in columns]
                await conn.execute(sa.text(
                    f"INSERT INTO {table.fullname} ({', '.join(columns)}) "
                    f"SELECT {', '.join(values)} FROM {table.fullname} t "
                    f"JOIN unnest(CAST(:ids AS text[])) WITH ORDINALITY AS o(id, n) "
                    f"ON t.{key} = o.id"), {"ids": ids})
        copied += n
        batch += 1
    return copied


async def timed(engine: AsyncEngine, scope: Scope, level: Level, code: str | None,
                runs: int) -> dict[str, Any]:
    """Medians (ms) of both summaries, alternated, and whether they agree."""
    times: dict[str, list[float]] = {"aggregates": [], "rows": []}
    answers: dict[str, Any] = {}
    for _ in range(runs):
        for name, query in (("aggregates", summary), ("rows", summary_from_rows)):
            started = time.perf_counter()
            async with reading(engine, scope) as conn:
                answers[name] = await query(conn, scope, level, code)
            times[name].append((time.perf_counter() - started) * 1000)
    if answers["aggregates"] != answers["rows"]:
        raise AssertionError(f"the {level} summaries differ: {answers}")
    kept, counted = (statistics.median(times[k]) for k in ("aggregates", "rows"))
    return {"level": level, "code": code, "households": answers["rows"]["households"],
            "aggregates_ms": round(kept, 2), "rows_ms": round(counted, 2),
            "ratio": round(kept / counted, 4)}


async def projection_cost(engine: AsyncEngine, store: PostgresStore, ids: list[str],
                          rounds: int) -> dict[str, Any]:
    """What keeping the aggregates adds to projecting: the ``ids`` projected from empty
    tables, with the aggregates kept and with their update skipped, alternated."""
    seconds: dict[str, list[float]] = {"with": [], "without": []}
    kept = aggregates.apply

    async def skipped(conn: Any, change: Any) -> None:
        return None

    for _ in range(rounds):
        for mode in ("without", "with"):
            async with engine.begin() as conn:
                for table in (*reversed(PROJ_TABLES), *aggregates.AGGREGATES):
                    await conn.execute(sa.delete(table))
            aggregates.apply = kept if mode == "with" else skipped
            try:
                started = time.perf_counter()
                await Projector(engine, store).rebuild(ids)
                seconds[mode].append(time.perf_counter() - started)
            finally:
                aggregates.apply = kept
    async with engine.begin() as conn:
        await aggregates.recount(conn)
    w, wo = (statistics.median(seconds[k]) for k in ("with", "without"))
    print(f"projecting {len(ids)} households: {w:.2f} s with the aggregates, {wo:.2f} s "
          f"without ({w / wo:.3f}x), medians of {rounds}", flush=True)
    return {"level": "projection", "households": len(ids), "with_s": round(w, 3),
            "without_s": round(wo, 3), "ratio": round(w / wo, 4)}


async def run(settings: Settings, base_n: int, scales: list[tuple[int, int, int]],
              runs: int, rounds: int = 3) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="vatra-bench-summary-") as tmp:
        async with open_database(settings.database_url, Path(tmp)) as engine:
            store = PostgresStore(engine, KeyRing({1: generate_master_key()}))
            started = time.perf_counter()
            base = await seed_store(store, base_n, seed=1, today=TODAY, counties=("CJ",))
            await Projector(engine, store).drain_all()
            print(f"seeded and projected {base_n} households in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            results.append(await projection_cost(engine, store, base, rounds))
            async with engine.begin() as conn:  # the base stays out of the measured places
                await conn.execute(sa.text("DELETE FROM proj.activity"))
            copied = 0
            for counties, localities, target in scales:
                started = time.perf_counter()
                copied = await copy_to(engine, base, target, counties, localities, copied)
                async with engine.begin() as conn:
                    await aggregates.recount(conn)
                async with engine.connect() as conn:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await conn.execute(sa.text("VACUUM ANALYZE"))
                print(f"{copied} households copied into {counties} x {localities} places in "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
                areas: list[tuple[Level, str | None, Scope]] = [
                        ("national", None, Scope("national")),
                        ("county", county_code(0), Scope("county", county=county_code(0))),
                        ("locality", locality_code(0, 0),
                         Scope("county", county=county_code(0)))]
                for level, code, scope in areas:
                    r = await timed(engine, scope, level, code, runs)
                    r["caseload"] = copied + base_n
                    results.append(r)
                    print(f"  {level:9} {r['households']:>8} households: aggregates "
                          f"{r['aggregates_ms']:.1f} ms, rows {r['rows_ms']:.1f} ms "
                          f"({r['ratio']:.3f}x)", flush=True)
            await store.close()
    return results


def _scale(text: str) -> tuple[int, int, int]:
    try:
        places, households = text.split(":")
        counties, localities = places.split("x")
        return int(counties), int(localities), int(households)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected COUNTIESxLOCALITIES:HOUSEHOLDS, e.g. 1x80:48000") from None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_summary")
    p.add_argument("--base", type=int, default=500, help="households generated and projected")
    p.add_argument("--scale", type=_scale, nargs="+", default=[(1, 80, 48_000), (10, 80, 480_000)],
                   help="caseloads, each COUNTIESxLOCALITIES:HOUSEHOLDS (default 1x80:48000 "
                        "10x80:480000)")
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--rounds", type=int, default=3,
                   help="projections of the base timed with and without the aggregates")
    args = p.parse_args(argv)
    results = asyncio.run(run(Settings.from_env(), args.base, args.scale, args.runs,
                              args.rounds))
    print(json.dumps(results, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
