"""Open data: an anonymized, aggregated export anyone may read (the role of Aurora Public).

``vatra open-data FILE [--threshold K]`` writes counts per locality, county and the
nation, from the projections, and nothing else: no household, person, worker or address,
no date finer than the day of the export. The measures:

* ``households``: households registered;
* ``children_assessed``: members under 18 on the day of their latest assessment;
* ``vulnerable_children``: of those, the ones with a vulnerability of their own;
* ``vulnerability:<code>``: households with that vulnerability (any member, or the
  household itself).

**Small-cell suppression.** A count below the threshold K (default 5, docs/open-data.md)
is not published, zero included: it is ``null``. That alone is not enough, because the
counts add up: a county is the sum of its localities, the nation the sum of its counties.
So, per measure, each sum (a parent and its children) is then checked, and more cells
are suppressed until, in every sum:

* no suppressed cell is the only unknown (it would be the parent minus the others), and
* when the parent is published, its suppressed children together count at least K more
  than their own published children show (so the published counts never tell that a set
  of areas holds fewer than K, nor pin a county between its localities and the nation).

The cells suppressed to that end are the smallest of the group (ties by code), so as
little as possible is hidden. A measure that counts part of another (vulnerable children
of the children assessed; households with a vulnerability of the households) is hidden
wherever the whole is, and where the rest (whole minus part), suppressed as a measure of
its own, would be below K or pinned (:func:`suppress_part`): "all but two households of
this village have it" says as much as the two. :func:`suppress` is pure, and
``tests/test_open_data.py`` checks both rules against an attacker who propagates every
sum's bounds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from conflict.catalogue import ADULT_AGE
from sync_server.store.tables import proj_answers as answers
from sync_server.store.tables import proj_households as households
from sync_server.store.tables import proj_vulnerabilities as vulnerabilities

__all__ = ["NATIONAL", "THRESHOLD", "Cell", "export", "suppress"]

#: The default smallest count published (docs/open-data.md says why 5).
THRESHOLD = 5
NATIONAL = "RO"
#: A measure that counts a part of another one (its complement is not published).
_PART_OF = {"vulnerable_children": "children_assessed"}

Cell = tuple[str, ...]  # (), (county,), (county, locality)


@dataclass(frozen=True)
class _Group:
    parent: Cell
    children: tuple[Cell, ...]


def _groups(cells: Mapping[Cell, int]) -> list[_Group]:
    counties = sorted({c[:1] for c in cells if len(c) >= 1})
    out = [_Group((), tuple(counties))]
    for county in counties:
        out.append(_Group(county, tuple(sorted(c for c in cells if len(c) == 2
                                               and c[:1] == county))))
    return out


def suppress(cells: Mapping[Cell, int], threshold: int = THRESHOLD,
             also: Collection[Cell] = ()) -> set[Cell]:
    """The cells of one measure not to publish: ``cells`` maps the nation ``()``, each
    county ``(county,)`` and each locality ``(county, locality)`` to its count (a parent
    is the sum of its children). Every count below ``threshold`` and every cell in
    ``also``, then as many more as the module's two rules need."""
    hidden = {cell for cell, n in cells.items() if n < threshold} | set(also)
    groups = _groups(cells)
    below = {g.parent: [c for c in g.children if c in cells] for g in groups}

    def known(cell: Cell) -> int:
        """What a hidden cell is known to hold at least: its published children."""
        return sum(cells[c] for c in below.get(cell, ()) if c not in hidden)

    changed = True
    while changed:
        changed = False
        for group in groups:
            members = [c for c in group.children if c in cells]
            unknown = [c for c in members if c in hidden]
            parent_hidden = group.parent in hidden
            # what the hidden children hold beyond what their own published children show
            residual = sum(cells[c] - known(c) for c in unknown)
            while (len(unknown) + parent_hidden == 1
                   or (not parent_hidden and unknown and residual < threshold)):
                visible = sorted((cells[c], c) for c in members if c not in hidden)
                if not visible:  # every child hidden: the parent is the residual, < K
                    if not parent_hidden:
                        hidden.add(group.parent)
                        parent_hidden = changed = True
                    break
                _, pick = visible[0]
                hidden.add(pick)
                unknown.append(pick)
                residual += cells[pick] - known(pick)
                changed = True
    return hidden


async def _counts(engine: AsyncEngine) -> dict[str, dict[Cell, int]]:
    """Every measure's count per locality (the owner's read: every row)."""
    h, a, v = households, answers, vulnerabilities
    place = (h.c.county, h.c.locality)
    child = a.c.age_at_assessment < ADULT_AGE
    vulnerable = sa.tuple_(a.c.household_id, a.c.person_id).in_(
        sa.select(v.c.household_id, v.c.person_id).where(v.c.person_id.is_not(None)))
    out: dict[str, dict[Cell, int]] = {}
    async with engine.connect() as conn:
        for r in await conn.execute(sa.select(*place, sa.func.count()).group_by(*place)):
            out.setdefault("households", {})[(r[0], r[1])] = r[2]
            for measure in ("children_assessed", "vulnerable_children"):
                out.setdefault(measure, {})[(r[0], r[1])] = 0
        for r in await conn.execute(
                sa.select(a.c.county, a.c.locality, sa.func.count(),
                          sa.func.count().filter(vulnerable))
                .where(child).group_by(a.c.county, a.c.locality)):
            out["children_assessed"][(r[0], r[1])] = r[2]
            out["vulnerable_children"][(r[0], r[1])] = r[3]
        codes = (await conn.execute(sa.select(v.c.vulnerability).distinct())).scalars().all()
        for code in sorted(codes):
            out[f"vulnerability:{code}"] = {cell: 0 for cell in out["households"]}
        for r in await conn.execute(
                sa.select(v.c.vulnerability, v.c.county, v.c.locality,
                          sa.func.count(sa.distinct(v.c.household_id)))
                .group_by(v.c.vulnerability, v.c.county, v.c.locality)):
            out[f"vulnerability:{r[0]}"][(r[1], r[2])] = r[3]
    return out


def _with_sums(localities: Mapping[Cell, int]) -> dict[Cell, int]:
    cells: dict[Cell, int] = dict(localities)
    for (county, _), n in localities.items():
        cells[(county,)] = cells.get((county,), 0) + n
        cells[()] = cells.get((), 0) + n
    cells.setdefault((), 0)
    return cells


def suppress_part(whole: Mapping[Cell, int], whole_hidden: set[Cell], part: Mapping[Cell, int],
                  threshold: int = THRESHOLD) -> set[Cell]:
    """The cells of ``part`` not to publish, where it counts a part of ``whole`` (vulnerable
    children of the children assessed; households with a vulnerability of the
    households) whose cells ``whole_hidden`` are hidden. Three tables are linked, cell by
    cell: whole = part + the rest, and each adds up over the areas. So ``part`` is hidden
    wherever ``whole`` is (a published part bounds a hidden whole from below), and the
    rest is suppressed as a measure of its own: where it would be below K ("all but two
    households here have it" names the two) or pinned by its sums, the part is hidden too,
    so the rest cannot be worked out. Repeated until nothing moves."""
    rest = {cell: whole.get(cell, 0) - n for cell, n in part.items()}
    hidden = suppress(part, threshold, whole_hidden)
    while True:
        unknown = hidden | whole_hidden
        extra = suppress(rest, threshold, unknown) - unknown
        if not extra:
            return hidden
        hidden = suppress(part, threshold, hidden | extra)


async def export(engine: AsyncEngine, threshold: int = THRESHOLD,
                 today: dt.date | None = None) -> dict[str, Any]:
    """The open-data document: per area (nation, counties, localities) every measure's
    count, or None where suppressed."""
    if threshold < 1:
        raise ValueError("the threshold is at least 1")
    measures = await _counts(engine)
    if not measures:
        measures = {"households": {}}
    areas: dict[Cell, dict[str, int | None]] = {}
    hidden_total = 0
    sums = {measure: _with_sums(localities) for measure, localities in measures.items()}
    hidden: dict[str, set[Cell]] = {}
    for measure in sorted(sums, key=lambda m: m in _PART_OF or m.startswith("vulnerability:")):
        whole = _PART_OF.get(measure, "households" if measure.startswith("vulnerability:")
                             else None)
        hidden[measure] = (suppress(sums[measure], threshold) if whole is None else
                           suppress_part(sums[whole], hidden[whole], sums[measure], threshold))
        hidden_total += len(hidden[measure])
        for cell, n in sums[measure].items():
            areas.setdefault(cell, {})[measure] = None if cell in hidden[measure] else n

    def area(cell: Cell) -> dict[str, Any]:
        level = ("national", "county", "locality")[len(cell)]
        return {"level": level, "code": NATIONAL if not cell else cell[-1],
                "county": cell[0] if len(cell) == 2 else None, "counts": areas[cell]}

    return {"dataset": "vatra-open-data", "version": 1,
            "as_of": (today or dt.date.today()).isoformat(), "threshold": threshold,
            "measures": sorted(measures), "suppressed_cells": hidden_total,
            "areas": [area(c) for c in sorted(areas, key=lambda c: (len(c), c))]}
