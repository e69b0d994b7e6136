"""The household generator (:mod:`vatra_devtools.seed`): deterministic, plausible and valid
documents; and a seeded caseload stored and projected on a real PostgreSQL.

``VATRA_SEED_HOUSEHOLDS`` sets how many households the functional test seeds (default
1,000: about 12-14 s to seed and 8-12 s to project on the 2-core dev machine). Run with
``-s`` to see the timings.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa

from conflict import Household, validate
from conflict.catalogue import ADULT_AGE, age_on, derive, load_catalogue
from sync_server.projection.projector import Projector
from sync_server.projection.readmodel import (
    ListFilter,
    Scope,
    household_profile,
    list_households,
    reading,
    summary,
)
from sync_server.store.tables import PROJ_TABLES as TABLES
from vatra_devtools.seed import COUNTIES, describe, generate, seed_store

TODAY = date(2026, 5, 1)
SEEDED = int(os.environ.get("VATRA_SEED_HOUSEHOLDS", "1000"))
CATALOGUE = load_catalogue()


@pytest.fixture(scope="module")
def sample() -> list[Household]:
    return list(generate(400, seed=1, today=TODAY))


def assessment_day(doc: dict) -> date | None:
    """The day the projection derives vulnerabilities on: the latest assessment's."""
    ats = [a.get("completed_at") or a["started_at"] for a in doc["assessments"].values()]
    return date.fromisoformat(max(ats)[:10]) if ats else None


def derived(doc: dict) -> list:
    day = assessment_day(doc)
    return derive(doc, on=day) if day else []


# --- pure -----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_households() -> None:
    def run(n: int, seed: int) -> list[tuple[str, dict]]:
        return [(h.household_id, h.to_dict()) for h in generate(n, seed=seed, today=TODAY)]

    first = run(20, 7)
    assert first == run(20, 7)
    assert first[:8] == run(8, 7)  # household i does not depend on n
    other = run(20, 8)
    assert {hid for hid, _ in first}.isdisjoint(hid for hid, _ in other)
    assert [d["members"] for _, d in first] != [d["members"] for _, d in other]


def test_every_document_is_valid_and_every_answer_fits_the_catalogue(sample) -> None:
    for h in sample:
        assert validate(h.doc) == []
        doc = h.to_dict()
        assert doc["locality"] in {loc.siruta for c in COUNTIES.values() for loc in c.localities}
        members = doc["members"]
        heads = [m for m in members.values() if m["relation_to_head"] == "head"]
        assert len(heads) == 1 and heads[0]["presence"] == "present"
        for aid, a in doc["assessments"].items():
            day = date.fromisoformat(a["completed_at"][:10])
            assert a["completed_at"] > a["started_at"]
            for pid, answers in a["answers"].items():
                m = members[pid]
                if m["presence"] != "present":
                    assert answers == {}, "only present members are assessed"
                    continue
                assert answers, "every present member is assessed"
                adult = age_on(m["birth_date"], day) >= ADULT_AGE
                for code, value in answers.items():
                    ind = CATALOGUE.indicators[code]
                    if ind.applies_to == "household":
                        assert m["relation_to_head"] == "head"
                    else:
                        assert ind.applies_to in ("person", "adult" if adult else "child"), \
                            (aid, code)
                    if ind.type == "bool":
                        assert isinstance(value, bool)
                    elif ind.type == "int":
                        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0
                    elif ind.type == "choice":
                        assert value in ind.option_codes
                    elif ind.type == "date":
                        date.fromisoformat(value)
                    else:
                        assert isinstance(value, str) and value
        for s in doc["service_plan"].values():
            assert s["code"] in CATALOGUE.services
            assert s["vulnerability"] in CATALOGUE.vulnerabilities
            assert s["person_id"] in members


def test_household_sizes_ages_and_relations_are_plausible(sample) -> None:
    summary = describe(sample)
    print("\n" + summary.to_markdown())
    assert 2.2 <= summary.mean_size <= 2.8  # Aurora: 118,000 people in 48,000 households
    sizes = summary.sizes
    assert 0.25 <= sizes["1"] / len(sample) <= 0.45   # many elderly people living alone
    assert sizes["6+"] > 0 and sizes["6+"] / len(sample) < 0.12
    assert set(summary.relations) <= {"head", "spouse", "child", "grandchild", "parent", "other"}
    assert summary.relations["head"] == len(sample)
    assert 0.9 <= summary.presence["present"] / summary.persons < 1
    assert summary.presence.get("absent", 0) > 0  # parents working abroad
    assert 0.2 <= summary.children / summary.persons <= 0.45

    ages = Counter()
    for h in sample:
        doc = h.to_dict()
        registered = date.fromisoformat(doc["activity"][0]["at"][:10])
        for m in doc["members"].values():
            age = age_on(m["birth_date"], registered)
            assert 0 <= age <= 100
            ages["0-17" if age < 18 else "18-64" if age < 65 else "65+"] += 1
            if m["relation_to_head"] == "head":
                assert age >= 18
    assert all(0.15 <= k / summary.persons <= 0.6 for k in ages.values()), ages


def test_statuses_timestamps_and_services_span_the_last_year(sample) -> None:
    summary = describe(sample, today=TODAY)
    assert summary.statuses["active"] / len(sample) > 0.75
    assert summary.statuses.get("registration", 0) > 0 and summary.statuses.get("closed", 0) > 0
    assert 0.8 <= summary.assessed / len(sample) < 1
    assert {"delivered", "in_progress", "planned"} <= set(summary.services)
    assert summary.services_overdue and summary.services_overdue < summary.services["delivered"]

    earliest = datetime.combine(TODAY - timedelta(days=366), datetime.min.time()).isoformat()
    latest = datetime.combine(TODAY, datetime.max.time()).isoformat()
    months = set()
    for h in sample:
        doc = h.to_dict()
        instants = [e["at"] for e in doc["activity"]] + [doc["gps"]["captured_at"]]
        for a in doc["assessments"].values():
            instants += [a["started_at"], a["completed_at"]]
        instants += [s["delivered_at"] for s in doc["service_plan"].values() if "delivered_at" in s]
        assert all(earliest <= t[:19] <= latest for t in instants)
        assert [e["at"] for e in doc["activity"]] == sorted(e["at"] for e in doc["activity"])
        months.add(doc["activity"][0]["at"][:7])
        day = assessment_day(doc)
        for s in doc["service_plan"].values():  # deadlines from catalogue.recommended
            assert 1 <= (date.fromisoformat(s["deadline"]) - day).days <= 30
    assert len(months) >= 12


def test_the_share_of_vulnerable_children_is_plausible(sample) -> None:
    summary = describe(sample)
    assert 0.30 <= summary.vulnerable_children_share <= 0.55
    assert 0.15 <= summary.below_poverty / summary.assessed <= 0.40
    for code in ("child_no_family_doctor", "incomplete_vaccination", "parents_working_abroad",
                 "school_absenteeism", "below_poverty_line", "single_parent_household"):
        assert summary.vulnerabilities.get(code, 0) > 0, code
    counted = sum(1 for h in sample for d in derived(h.to_dict()) if d.person_id is not None
                  and CATALOGUE.vulnerabilities[d.vulnerability].applies_to == "child")
    assert counted == sum(v for code, v in summary.vulnerabilities.items()
                          if CATALOGUE.vulnerabilities[code].applies_to == "child")


# --- stored and projected -------------------------------------------------------------


async def count(engine, table: sa.Table, *where) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table).where(*where))
                ).scalar_one()


@pytest.mark.functional
async def test_a_seeded_caseload_is_stored_and_projected(store, engine) -> None:
    started = time.perf_counter()
    ids = await seed_store(store, SEEDED, seed=1, today=TODAY)
    seeded_s = time.perf_counter() - started
    started = time.perf_counter()
    projected = await Projector(engine, store).drain_all()
    projected_s = time.perf_counter() - started
    print(f"\nseeded {SEEDED} households in {seeded_s:.1f} s ({SEEDED / seeded_s:.0f}/s); "
          f"projected in {projected_s:.1f} s ({SEEDED / projected_s:.0f}/s)")

    assert len(set(ids)) == SEEDED and projected == SEEDED
    docs = {h.household_id: h.to_dict() for h in generate(SEEDED, seed=1, today=TODAY)}
    assert list(docs) == ids
    tables = {t.name: t for t in TABLES}
    assert await count(engine, tables["households"]) == SEEDED
    assert await count(engine, tables["persons"]) == sum(len(d["members"]) for d in docs.values())
    assert await count(engine, tables["services"]) == \
        sum(len(d["service_plan"]) for d in docs.values())

    expected = {(hid, d.person_id, d.vulnerability) for hid, doc in docs.items()
                for d in derived(doc) if CATALOGUE.vulnerabilities[d.vulnerability].applies_to
                == "child"}
    vulns = tables["vulnerabilities"]
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(vulns.c.household_id, vulns.c.person_id,
                                             vulns.c.vulnerability)
                                   .where(vulns.c.population == "child"))).all()
    assert {tuple(r) for r in rows} == expected and len(rows) == len(expected)
    assert len(expected) > SEEDED * 0.1

    # The web tier's queries on the seeded caseload, each in a scoped transaction as the
    # read API runs them. Timings are printed (docs/projections.md), never asserted.
    county = next(iter(COUNTIES))
    locality = COUNTIES[county].localities[0].siruta
    in_county = [hid for hid, d in docs.items() if d["county"] == county]
    in_locality = [hid for hid, d in docs.items() if d["locality"] == locality]
    timings = {}

    async def timed(name, scope, query, *args):
        started = time.perf_counter()
        async with reading(engine, scope) as conn:
            result = await query(conn, scope, *args)
        timings[name] = time.perf_counter() - started
        return result

    national, county_scope = Scope("national"), Scope("county", county=county)
    first = await timed("list, national, page 1", national, list_households, ListFilter())
    assert first["total"] == SEEDED and len(first["items"]) == 20
    page = await timed("list, county, page 3", county_scope, list_households, ListFilter(page=3))
    assert page["total"] == len(in_county)
    assert page["showing"] == f"41\N{EN DASH}60 of {len(in_county)}"
    active = await timed("list, locality + status", national, list_households,
                         ListFilter(locality=locality, status="active"))
    assert active["total"] == sum(1 for h in in_locality if docs[h]["status"] == "active")
    name = next(iter(docs[in_county[0]]["members"].values()))["last_name"]
    found = await timed("list, county + text", county_scope, list_households, ListFilter(q=name))
    assert found["total"] == sum(1 for h in in_county if name.lower() in " ".join(
        [docs[h]["address"], *(n for m in docs[h]["members"].values()
                               for n in (m["first_name"], m["last_name"]))]).lower())
    whole = await timed("summary, national", national, summary, "national", None)
    assert whole["households"] == SEEDED
    vulnerable = {(h, d.person_id) for h, doc in docs.items() for d in derived(doc)
                  if d.person_id is not None and _age_at(doc, d.person_id) < ADULT_AGE}
    assert whole["vulnerable_children"] == len(vulnerable)
    per_county = await timed("summary, county", county_scope, summary, "county", county)
    assert per_county["households"] == len(in_county)
    await timed("summary, locality", national, summary, "locality", locality)
    await timed("profile", county_scope, household_profile, in_county[0])
    print("\n".join(f"{name}: {seconds * 1000:.1f} ms" for name, seconds in timings.items()))


def _age_at(doc: dict, person_id: str) -> int:
    return age_on(doc["members"][person_id]["birth_date"], assessment_day(doc))
