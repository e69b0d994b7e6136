"""The per-locality aggregates' arithmetic (sync_server/store/aggregates.py), on rows
written by hand: what each measure counts, and the difference the projector adds."""

from __future__ import annotations

import datetime as dt

from sync_server.store.aggregates import COUNTY_WIDE, count, delta

H = "h1"


def household(locality: str = "54975", county: str = "CJ") -> dict:
    return {"household_id": H, "locality": locality, "county": county}


def answer(person: str, age: int | None, **place: str) -> dict:
    return {**household(**place), "person_id": person, "age_at_assessment": age}


def vulnerability(code: str, person: str | None, population: str, **place: str) -> dict:
    return {**household(**place), "vulnerability": code, "person_id": person,
            "population": population}


def service(status: str, deadline: str | None, **place: str) -> dict:
    return {**household(**place), "status": status,
            "deadline": None if deadline is None else dt.date.fromisoformat(deadline)}


ROWS = {
    "households": [household()],
    "answers": [answer("p1", 9), answer("p2", 17), answer("p3", 40), answer("p4", None)],
    "vulnerabilities": [
        vulnerability("child_no_family_doctor", "p1", "child"),
        vulnerability("no_health_insurance", "p1", "person"),   # a child's, by age
        vulnerability("no_health_insurance", "p3", "person"),   # an adult's
        vulnerability("adult_unemployed", "p3", "adult"),
        vulnerability("household_poverty", None, "household"),
    ],
    "services": [service("planned", "2026-03-01"), service("in_progress", "2026-03-01"),
                 service("planned", "2026-04-01"), service("delivered", "2026-03-01"),
                 service("planned", None)],
}


def test_each_measure_counts_what_the_summary_counts() -> None:
    totals = count(ROWS)
    place = ("CJ", "54975")
    # Children: under 18 on the day assessed (p1, p2); p1 alone has a vulnerability of
    # their own; p4 has no age and is neither.
    assert totals[("locality_summary", place)] == {
        "households": 1, "children_assessed": 2, "vulnerable_children": 1}
    assert totals[("locality_vulnerabilities", (*place, "no_health_insurance"))] == {
        "children": 1, "adults": 1, "households": 1, "persons": 2}
    assert totals[("locality_vulnerabilities", (*place, "household_poverty"))] == {
        "children": 0, "adults": 0, "households": 1, "persons": 0}
    # Open services by deadline; a delivered one and one without a deadline are not kept.
    assert totals[("locality_services", (*place, dt.date(2026, 3, 1)))] == {"services": 2}
    assert totals[("locality_services", (*place, dt.date(2026, 4, 1)))] == {"services": 1}
    assert len([k for k in totals if k[0] == "locality_services"]) == 4
    # The county's own rows repeat its (one) locality's.
    for (table, key), measures in list(totals.items()):
        if key[1] != COUNTY_WIDE:
            assert totals[(table, (key[0], COUNTY_WIDE, *key[2:]))] == measures


def test_a_household_counts_once_per_code_however_many_members_have_it() -> None:
    rows = {"vulnerabilities": [vulnerability("no_health_insurance", p, "person")
                                for p in ("p1", "p2", "p3")]}
    [mine, county] = count(rows).values()
    assert mine["households"] == 1 and mine["persons"] == 3 and county == mine


def test_the_difference_holds_only_what_changed() -> None:
    after = {**ROWS, "services": [service("delivered", "2026-03-01") if i == 0 else s
                                  for i, s in enumerate(ROWS["services"])]}
    assert delta(ROWS, after) == {
        ("locality_services", ("CJ", "54975", dt.date(2026, 3, 1))): {"services": -1},
        ("locality_services", ("CJ", COUNTY_WIDE, dt.date(2026, 3, 1))): {"services": -1}}
    assert delta(ROWS, ROWS) == {}


def test_a_household_that_moves_leaves_one_locality_for_the_other() -> None:
    moved = {"households": [household("55000")], "answers": [answer("p1", 9, locality="55000")]}
    before = {"households": [household()], "answers": [answer("p1", 9)]}
    # Within its county: the county's own row does not change.
    assert delta(before, moved) == {
        ("locality_summary", ("CJ", "54975")): {"households": -1, "children_assessed": -1},
        ("locality_summary", ("CJ", "55000")): {"households": 1, "children_assessed": 1}}
    away = {"households": [household("40198", "BV")]}
    assert delta({"households": [household()]}, away) == {
        ("locality_summary", ("CJ", "54975")): {"households": -1},
        ("locality_summary", ("CJ", COUNTY_WIDE)): {"households": -1},
        ("locality_summary", ("BV", "40198")): {"households": 1},
        ("locality_summary", ("BV", COUNTY_WIDE)): {"households": 1}}


def test_erasing_takes_back_everything_the_household_added() -> None:
    gone = delta(ROWS, {})
    assert {k: {m: -n for m, n in v.items()} for k, v in gone.items()} == \
        {k: {m: n for m, n in v.items() if n} for k, v in count(ROWS).items()}
