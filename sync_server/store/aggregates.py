"""Per-locality aggregates of the projection, kept by the projector in the transaction
that writes the rows they count.

The web tier's summaries (``/v1/web/summary``) used to count a county's answer and
vulnerability rows on every call: 474 ms for one county of 48,000 households, and more
with every household. Every measure they show adds up over localities, so the projector
keeps one row per locality (and per code, and per deadline) in three tables:

* ``proj.locality_summary``: households, children assessed, vulnerable children;
* ``proj.locality_vulnerabilities``: per vulnerability code, the children and adults
  who have it, the households with it, the persons with it;
* ``proj.locality_services``: open services (planned or in progress) per deadline day.
  "Overdue" depends on the day a summary is asked for, so what is kept is the count per
  deadline, and the summary adds up the days before today.

Each county also has its own row in each table (``locality`` = :data:`COUNTY_WIDE`), the
sum of its localities' rows, kept in the same statement. A locality summary reads the
locality's rows, a county summary its county's row, a national summary one row per
county (:func:`sync_server.projection.readmodel.summary`): a few dozen rows per code
whatever the number of households.

How the projector keeps them (:func:`delta`, :func:`apply`; an erasure, which deletes a
household's rows itself, takes them out first with :func:`forget`): it already reads every
stored row of the households it writes (to write only what changed), so it counts the
measures of those rows and of the new ones in Python, and adds the difference to each
aggregate row (``INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n``) in the same
transaction. A projector killed half way leaves both the rows and the aggregates as they
were. Two projectors never write the same household at once (advisory locks), so the
difference is always taken against the rows that stand; concurrent projectors of one
locality wait for each other on its aggregate row, which they update in key order
(no deadlock) as the last statement before they commit. A row whose measures all reach zero is deleted.

The definitions are those of the scanning summary (:func:`summary_from_rows`, kept to
check the aggregates against): a child is a member under 18 on the day of the
assessment (``age_at_assessment``), a vulnerable child one with a vulnerability of their
own, a "person" vulnerability is a child's or an adult's by that age. :func:`recount`
recomputes every aggregate from the rows (``vatra projections rebuild`` does, at the end
of a full rebuild) and says how many rows it corrected: zero unless something wrote the
``proj`` tables behind the projector's back.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from conflict.catalogue import ADULT_AGE
from conflict.schema import OPEN_SERVICE
from sync_server.store.tables import (
    proj_answers,
    proj_households,
    proj_locality_services,
    proj_locality_summary,
    proj_locality_vulnerabilities,
    proj_services,
    proj_vulnerabilities,
)

__all__ = ["AGGREGATES", "COUNTED", "COUNTY_WIDE", "Totals", "apply", "count", "delta", "forget", "recount"]

#: The aggregate tables, in the order the projector updates them.
AGGREGATES: tuple[sa.Table, ...] = (proj_locality_summary, proj_locality_vulnerabilities,
                                    proj_locality_services)
#: Parameters per statement, below PostgreSQL's limit of 32,767.
_MAX_PARAMS = 30_000
#: The ``locality`` of a county's own row in each aggregate table: the sum of its
#: localities' rows, kept with them, so a county or national summary reads one row per
#: county (not per locality). Never a SIRUTA code, and never in a locality scope.
COUNTY_WIDE = "*"
#: The projection tables whose rows the aggregates count.
COUNTED: tuple[sa.Table, ...] = (proj_households, proj_answers, proj_vulnerabilities,
                                 proj_services)
_KEYS: dict[str, tuple[str, ...]] = {
    "locality_summary": ("county", "locality"),
    "locality_vulnerabilities": ("county", "locality", "vulnerability"),
    "locality_services": ("county", "locality", "deadline"),
}
_MEASURES: dict[str, tuple[str, ...]] = {
    t.name: tuple(c.name for c in t.columns if c.name not in _KEYS[t.name]) for t in AGGREGATES}

#: Projection rows of some households: table name -> rows (as
#: sync_server/projection/rows.py makes them, or as they are stored)
Rows = Mapping[str, Sequence[Any]]
#: (table name, key) -> measure -> count
Totals = dict[tuple[str, tuple[Any, ...]], collections.Counter[str]]


def count(rows: Rows) -> Totals:
    """The aggregates' measures over ``rows`` (the projection rows of any number of
    households, by table name, as :func:`sync_server.projection.rows.project` makes them
    or as they are stored)."""
    totals: Totals = collections.defaultdict(collections.Counter)

    def add(table: str, key: tuple[Any, ...], **measures: int) -> None:
        totals[(table, key)].update(measures)  # the locality's row
        totals[(table, (key[0], COUNTY_WIDE, *key[2:]))].update(measures)  # its county's

    for h in rows.get("households", ()):
        add("locality_summary", (h["county"], h["locality"]), households=1)
    # The age each member had on the day of the assessment that stands.
    age = {(a["household_id"], a["person_id"]): a["age_at_assessment"]
           for a in rows.get("answers", ()) if a["age_at_assessment"] is not None}
    vulnerable = {(v["household_id"], v["person_id"])
                  for v in rows.get("vulnerabilities", ()) if v["person_id"] is not None}
    for a in rows.get("answers", ()):
        if a["age_at_assessment"] is not None and a["age_at_assessment"] < ADULT_AGE:
            add("locality_summary", (a["county"], a["locality"]), children_assessed=1,
                vulnerable_children=int((a["household_id"], a["person_id"]) in vulnerable))
    households_with: set[tuple[str, str, str, str]] = set()
    for v in rows.get("vulnerabilities", ()):
        key = (v["county"], v["locality"], v["vulnerability"])
        years = age.get((v["household_id"], v["person_id"]))
        child = v["population"] == "child" or (
            v["population"] == "person" and years is not None and years < ADULT_AGE)
        adult = v["population"] == "adult" or (
            v["population"] == "person" and years is not None and years >= ADULT_AGE)
        first = (*key, v["household_id"]) not in households_with
        households_with.add((*key, v["household_id"]))
        add("locality_vulnerabilities", key, children=int(child), adults=int(adult),
            households=int(first), persons=int(v["person_id"] is not None))
    for s in rows.get("services", ()):
        if s["status"] in OPEN_SERVICE and s["deadline"] is not None:
            add("locality_services", (s["county"], s["locality"], s["deadline"]), services=1)
    return totals


def delta(before: Rows, after: Rows) -> Totals:
    """What the aggregates change by when the rows ``before`` are replaced by ``after``
    (the rows of the same households): only the keys whose measures change."""
    old, new = count(before), count(after)
    out: Totals = {}
    for key in old.keys() | new.keys():
        diff = collections.Counter(new.get(key, collections.Counter()))
        diff.subtract(old.get(key, collections.Counter()))
        changed = collections.Counter({m: n for m, n in diff.items() if n})
        if changed:
            out[key] = changed
    return out


async def apply(conn: AsyncConnection, change: Totals) -> None:
    """Add ``change`` to the aggregate rows, in key order, and delete the rows it
    brings to zero in every measure."""
    for table in AGGREGATES:
        keys, measures = _KEYS[table.name], _MEASURES[table.name]
        mine = sorted((key, diff) for (name, key), diff in change.items() if name == table.name)
        if not mine:
            continue
        # In chunks (PostgreSQL takes at most 32,767 parameters per statement), in order:
        # the key order holds across them.
        step = _MAX_PARAMS // (len(keys) + len(measures))
        for i in range(0, len(mine), step):
            chunk = mine[i:i + step]
            values = [{**dict(zip(keys, key, strict=True)), **{m: diff[m] for m in measures}}
                      for key, diff in chunk]
            stmt = postgresql.insert(table).values(values)
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=list(keys),
                set_={m: table.c[m] + stmt.excluded[m] for m in measures}))
            await conn.execute(sa.delete(table).where(
                sa.tuple_(*(table.c[k] for k in keys)).in_([key for key, _ in chunk]),
                *(table.c[m] == 0 for m in measures)))


async def forget(conn: AsyncConnection, household_id: str) -> None:
    """Take one household's rows out of the aggregates, in ``conn``'s transaction, before
    they are deleted other than by the projector (an erasure)."""
    stored = {t.name: (await conn.execute(sa.select(t).where(t.c.household_id == household_id)
                                          )).mappings().all() for t in COUNTED}
    await apply(conn, delta(stored, {}))


# --- recounting from the rows ---------------------------------------------------------------

_PER_LOCALITY = {
    "locality_summary": """
        SELECT county, locality, sum(households) AS households,
               sum(children_assessed) AS children_assessed,
               sum(vulnerable_children) AS vulnerable_children
        FROM (SELECT county, locality, 1 AS households, 0 AS children_assessed,
                     0 AS vulnerable_children
              FROM proj.households
              UNION ALL
              SELECT a.county, a.locality, 0, 1, (EXISTS (
                  SELECT 1 FROM proj.vulnerabilities v
                  WHERE v.household_id = a.household_id AND v.person_id = a.person_id))::int
              FROM proj.answers a WHERE a.age_at_assessment < :adult) AS each
        GROUP BY county, locality""",
    "locality_vulnerabilities": """
        SELECT v.county, v.locality, v.vulnerability,
               count(*) FILTER (WHERE v.population = 'child' OR (v.population = 'person'
                                AND a.age_at_assessment < :adult)) AS children,
               count(*) FILTER (WHERE v.population = 'adult' OR (v.population = 'person'
                                AND a.age_at_assessment >= :adult)) AS adults,
               count(DISTINCT v.household_id) AS households,
               count(v.person_id) AS persons
        FROM proj.vulnerabilities v
        LEFT JOIN proj.answers a
            ON a.household_id = v.household_id AND a.person_id = v.person_id
        GROUP BY v.county, v.locality, v.vulnerability""",
    "locality_services": """
        SELECT county, locality, deadline, count(*) AS services
        FROM proj.services
        WHERE status = ANY(CAST(:open AS text[])) AND deadline IS NOT NULL
        GROUP BY county, locality, deadline""",
}


def _recount_sql(table: sa.Table) -> str:
    """The rows of ``table`` counted from the projection: each locality's, then each
    county's (the sum of its localities')."""
    keys, measures = _KEYS[table.name], _MEASURES[table.name]
    more = [k for k in keys if k not in ("county", "locality")]
    return (f"WITH each AS ({_PER_LOCALITY[table.name]}) "
            f"SELECT {', '.join(keys)}, {', '.join(measures)} FROM each UNION ALL "
            f"SELECT county, '{COUNTY_WIDE}', {''.join(k + ', ' for k in more)}"
            f"{', '.join(f'sum({m})' for m in measures)} FROM each "
            f"GROUP BY county{''.join(', ' + k for k in more)}")



def _by_key(table: sa.Table, rows: Iterable[Any]) -> dict[tuple[Any, ...], tuple[int, ...]]:
    keys, measures = _KEYS[table.name], _MEASURES[table.name]
    return {tuple(r[k] for k in keys): tuple(int(r[m]) for m in measures) for r in rows}


async def recount(conn: AsyncConnection) -> int:
    """Recompute every aggregate row from the projection rows, in ``conn``'s transaction
    (the aggregate tables locked against projectors meanwhile); how many rows were wrong
    (missing, extra or different)."""
    wrong = 0
    for table in AGGREGATES:
        await conn.execute(sa.text(f"LOCK TABLE proj.{table.name} IN EXCLUSIVE MODE"))
    for table in AGGREGATES:
        right = _by_key(table, (await conn.execute(
            sa.text(_recount_sql(table)), {"adult": ADULT_AGE, "open": list(OPEN_SERVICE)})
        ).mappings())
        stored = _by_key(table, (await conn.execute(sa.select(table))).mappings())
        differ = sum(1 for k in right.keys() | stored.keys() if right.get(k) != stored.get(k))
        if differ:
            keys, measures = _KEYS[table.name], _MEASURES[table.name]
            await conn.execute(sa.delete(table))
            if right:
                await conn.execute(sa.insert(table), [
                    {**dict(zip(keys, k, strict=True)), **dict(zip(measures, m, strict=True))}
                    for k, m in right.items()])
        wrong += differ
    return wrong
