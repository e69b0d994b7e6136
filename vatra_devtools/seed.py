"""Realistic households for demos, load tests and the projection's tests.

:func:`generate` makes household documents the way a community team fills them in over
a year, modelled on UNICEF Romania's Aurora / Minimum Package of Services data (one
county: about 48,000 registered households and 118,000 people, so 2.5 people per
household): many elderly people living alone and couples, families with one to four
children, a few with five or more, three-generation households, grandparents raising
grandchildren while the parents work abroad. Each household is registered, located
(GPS), mostly assessed (answers for every present member, for the indicators of the
catalogue that apply to them), and gets services planned for part of the
vulnerabilities the catalogue derives: some delivered, some in progress, some overdue.

Everything is drawn from ``random.Random`` seeded per household (``seed`` and the
household's position), so the same ``seed`` and ``today`` give the same documents (the
same ids and values; only Automerge's change timestamps, taken from the clock by the
binding, differ) and ``generate(10)`` starts with ``generate(5)``. Nothing reads the
clock: every instant lies in the year before ``today``.

:func:`seed_store` stores generated households through
:meth:`~sync_server.store.postgres.PostgresStore.create_household` (their changes become the
change log and the projection outbox, as if tablets had uploaded them), a few at a time.
:func:`describe` summarises a set of households for reports.

Locality codes are SIRUTA-like (digits, several localities per county) and the
coordinates roughly those of the places named; only 54975 (Cluj-Napoca) is checked
against the official register. Names, addresses and answers are invented.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from automerge._automerge import DocumentId  # type: ignore[attr-defined]  # not in the stub

from conflict import Household
from conflict.catalogue import ADULT_AGE, Catalogue, age_on, derive, load_catalogue, recommended
from sync_server.store.contract import HouseholdRecord, HouseholdStore
from sync_server.sync.apply import stored

__all__ = [
    "COUNTIES",
    "DEFAULT_COUNTIES",
    "County",
    "Locality",
    "Summary",
    "describe",
    "generate",
    "seed_store",
]


# --- places ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Locality:
    """A commune or town: SIRUTA-like code, name, centre, whether urban, relative size."""

    siruta: str
    name: str
    lat: float
    lon: float
    urban: bool = False
    weight: int = 1  # relative number of registered households


@dataclass(frozen=True)
class County:
    code: str
    name: str
    localities: tuple[Locality, ...]


COUNTIES: Mapping[str, County] = {
    "BC": County("BC", "Bacău", (
        Locality("22250", "Buhuși", 46.716, 26.700, urban=True, weight=3),
        Locality("25170", "Sascut", 46.190, 27.061, weight=2),
        Locality("24967", "Răcăciuni", 46.333, 26.983, weight=2),
        Locality("23510", "Găiceana", 46.330, 27.230),
        Locality("24520", "Podu Turcului", 46.200, 27.383, weight=2),
    )),
    "CJ": County("CJ", "Cluj", (
        Locality("54975", "Cluj-Napoca", 46.770, 23.590, urban=True, weight=4),
        Locality("57706", "Florești", 46.747, 23.490, weight=2),
        Locality("55464", "Apahida", 46.810, 23.740, weight=2),
        Locality("57920", "Gilău", 46.752, 23.382),
        Locality("55053", "Huedin", 46.866, 23.046, urban=True),
    )),
    "VS": County("VS", "Vaslui", (
        Locality("161838", "Negrești", 46.838, 27.442, urban=True, weight=2),
        Locality("166259", "Pungești", 46.700, 27.340),
        Locality("162425", "Codăești", 46.870, 27.750),
        Locality("168432", "Zăpodeni", 46.778, 27.617),
        Locality("163510", "Dimitrie Cantemir", 46.475, 28.003),
    )),
}
DEFAULT_COUNTIES = ("BC", "CJ", "VS")

STREETS = ("Principală", "Lungă", "Școlii", "Bisericii", "Morii", "Florilor", "Gării",
           "Libertății", "Unirii", "Mihai Eminescu", "Ștefan cel Mare", "Pădurii",
           "Primăverii", "Teiului", "Viilor", "Izvorului")
LAST_NAMES = ("Popescu", "Ionescu", "Popa", "Pop", "Rusu", "Munteanu", "Moldovan", "Lungu",
              "Ciobanu", "Stan", "Dumitru", "Constantin", "Rotaru", "Matei", "Marin", "Tudor",
              "Cozma", "Sandu", "Apostol", "Bălan", "Ursu", "Chiriac", "Avram", "Dobre")
# First names by generation: born before 1965, 1965-1999, 2000 and later.
FIRST_NAMES = {
    "F": (("Maria", "Elena", "Ana", "Ioana", "Floarea", "Aurelia", "Viorica", "Gheorghița"),
          ("Mihaela", "Daniela", "Gabriela", "Cristina", "Nicoleta", "Ionela", "Florentina",
           "Vasilica"),
          ("Andreea", "Alexandra", "Bianca", "Denisa", "Sofia", "Maria", "Ioana", "Eva",
           "Alesia", "Daria")),
    "M": (("Ion", "Gheorghe", "Vasile", "Constantin", "Nicolae", "Dumitru", "Petru", "Aurel"),
          ("Mihai", "Florin", "Marian", "Cristian", "Daniel", "Adrian", "Costel", "Ionuț"),
          ("Andrei", "Alexandru", "David", "Luca", "Ștefan", "Darius", "Matei", "Rareș",
           "Gabriel", "Ianis")),
}


# --- household composition -----------------------------------------------------------

# Kinds of household and their shares among registered households; together they give
# a mean of about 2.5 people.
KINDS = {
    "single_elderly": 22,
    "single_adult": 14,
    "elderly_couple": 15,
    "couple": 9,
    "couple_children": 23,
    "single_parent": 7,
    "extended": 5,          # three generations under one roof
    "grandparents": 3,      # grandparents raising grandchildren, parents abroad
    "large_family": 2,      # five children or more
}
# Share of households below the poverty line (or on minimum income), by kind: ~26% overall.
POOR_SHARE = {"single_elderly": .30, "single_adult": .25, "elderly_couple": .15, "couple": .12,
              "couple_children": .20, "single_parent": .45, "extended": .35,
              "grandparents": .40, "large_family": .65}


@dataclass
class _Person:
    first_name: str
    last_name: str
    birth_date: date
    sex: str
    relation: str
    presence: str = "present"
    abroad_parents: str = "none"     # for a child: parents_abroad answer
    caregiver: str = "parents"       # for a child: child_caregiver answer
    person_id: str = ""


def _weighted(rng: random.Random, table: Mapping[Any, float]) -> Any:
    return rng.choices(list(table), weights=list(table.values()))[0]


def _entity_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _born(rng: random.Random, today: date, age: int) -> date:
    """A birth date of someone ``age`` years old on ``today``."""
    return today - timedelta(days=int((age + rng.random() * 0.99) * 365.25))


def _first_name(rng: random.Random, sex: str, born: date) -> str:
    generation = 0 if born.year < 1965 else 1 if born.year < 2000 else 2
    return rng.choice(FIRST_NAMES[sex][generation])


class _Family:
    """Draws the members of one household of a given kind."""

    def __init__(self, rng: random.Random, today: date) -> None:
        self.rng = rng
        self.today = today
        self.surname = rng.choice(LAST_NAMES)
        self.people: list[_Person] = []

    def add(self, age: int, sex: str, relation: str, presence: str = "present",
            surname: str | None = None) -> _Person:
        born = _born(self.rng, self.today, max(age, 0))
        p = _Person(_first_name(self.rng, sex, born), surname or self.surname, born, sex, relation,
                    presence)
        self.people.append(p)
        return p

    def children(self, count: int, eldest: int, relation: str = "child") -> list[_Person]:
        ages, age = [], eldest
        for _ in range(count):
            ages.append(max(age, 0))
            age -= self.rng.randint(1, 4)
        return [self.add(a, self.rng.choice("FM"), relation) for a in ages]

    def spouse_name(self) -> str:
        return self.surname if self.rng.random() < .9 else self.rng.choice(LAST_NAMES)


def _compose(rng: random.Random, today: date, kind: str) -> tuple[list[_Person], bool]:
    """The members of a household of ``kind`` (head first) and whether it is single-parent."""
    f = _Family(rng, today)
    r = rng.random
    if kind == "single_elderly":
        age = rng.randint(65, 92)
        f.add(age, "F" if r() < .7 else "M", "head")
        if r() < .12:  # a grown-up child still on the household's records
            f.add(age - rng.randint(22, 35), rng.choice("FM"), "child",
                  _weighted(rng, {"moved": 60, "absent": 40}))
    elif kind == "single_adult":
        f.add(rng.randint(22, 64), "M" if r() < .55 else "F", "head")
    elif kind in ("elderly_couple", "couple"):
        age = rng.randint(65, 88) if kind == "elderly_couple" else rng.randint(22, 64)
        f.add(age, "M", "head")
        gone = kind == "elderly_couple" and r() < .04
        f.add(age - rng.randint(0, 5), "F", "spouse", "deceased" if gone else "present",
              f.spouse_name())
    elif kind in ("couple_children", "large_family"):
        count = (_weighted(rng, {5: 50, 6: 25, 7: 15, 8: 10}) if kind == "large_family"
                 else _weighted(rng, {1: 45, 2: 35, 3: 13, 4: 7}))
        eldest = rng.randint(max(0, count - 3), 17)
        mother_age = eldest + rng.randint(19, 33)
        abroad = _weighted(rng, {"none": 92, "father": 6, "mother": 2})
        f.add(mother_age + rng.randint(0, 6), "M", "head", "absent" if abroad == "father" else "present")
        f.add(mother_age, "F", "spouse", "absent" if abroad == "mother" else "present", f.spouse_name())
        if kind == "couple_children" and eldest >= 16 and r() < .2:
            f.add(eldest + rng.randint(2, 7), rng.choice("FM"), "child",
                  _weighted(rng, {"present": 60, "absent": 25, "moved": 15}))
        for child in f.children(count, eldest):
            if abroad != "none":
                child.abroad_parents, child.caregiver = "one_parent", "one_parent"
        if abroad == "father":  # the head is away: the mother heads the household in practice
            f.people[0], f.people[1] = f.people[1], f.people[0]
            f.people[0].relation, f.people[1].relation = "head", "spouse"
    elif kind == "single_parent":
        count = _weighted(rng, {1: 55, 2: 30, 3: 15})
        eldest = rng.randint(0, 17)
        f.add(eldest + rng.randint(18, 35), "F" if r() < .85 else "M", "head")
        for child in f.children(count, eldest):
            child.caregiver = "one_parent"
        return f.people, True
    elif kind == "extended":
        count = _weighted(rng, {1: 40, 2: 35, 3: 25})
        eldest = rng.randint(0, 15)
        mother_age = eldest + rng.randint(19, 30)
        grandparent_age = mother_age + rng.randint(22, 30)
        if r() < .6:  # the father is the head, his parent(s) live with them
            f.add(mother_age + rng.randint(0, 5), "M", "head")
            f.add(mother_age, "F", "spouse", surname=f.spouse_name())
            f.children(count, eldest)
            f.add(grandparent_age, "F", "parent")
            if r() < .5:
                f.add(grandparent_age + rng.randint(0, 5), "M", "parent")
        else:  # the grandfather is the head
            f.add(grandparent_age + rng.randint(0, 5), "M", "head")
            f.add(grandparent_age, "F", "spouse")
            f.add(mother_age + rng.randint(0, 5), "M", "child")
            f.add(mother_age, "F", "other", surname=f.spouse_name())
            f.children(count, eldest, relation="grandchild")
    elif kind == "grandparents":
        count = _weighted(rng, {1: 50, 2: 35, 3: 15})
        eldest = rng.randint(0, 17)
        grandparent_age = eldest + rng.randint(42, 58)
        f.add(grandparent_age, "F", "head")
        if r() < .6:
            f.add(grandparent_age + rng.randint(0, 5), "M", "spouse")
        sole = r() < .4
        parent_age = eldest + rng.randint(19, 30)
        if r() < .7:  # the parents stay registered here while they work abroad
            f.add(parent_age, "F", "child", "absent")
            if not sole:
                f.add(parent_age + rng.randint(0, 5), "M", "other", "absent", rng.choice(LAST_NAMES))
        for child in f.children(count, eldest, relation="grandchild"):
            child.abroad_parents = "sole_parent" if sole else "both_parents"
            child.caregiver = "relative"
    else:
        raise ValueError(f"unknown household kind {kind!r}")
    return f.people, False


# --- answers --------------------------------------------------------------------------


class _Answers:
    """Draws plausible indicator answers; ``risk`` scales every adverse rate (poverty
    doubles most of them, other households are below the average)."""

    def __init__(self, rng: random.Random, day: date, poor: bool, urban: bool) -> None:
        self.rng = rng
        self.day = day
        self.poor = poor
        self.urban = urban
        self.risk = 2.0 if poor else 0.7

    def chance(self, p: float, scaled: bool = True) -> bool:
        return self.rng.random() < min(p * self.risk if scaled else p, 0.95)

    def days_before(self, lo: int, hi: int) -> str:
        return (self.day - timedelta(days=self.rng.randint(lo, hi))).isoformat()

    def person(self, p: _Person, age: int) -> dict[str, Any]:
        """The ``person`` indicators, for anyone."""
        a: dict[str, Any] = {}
        doctor = not self.chance(.1 if age < ADULT_AGE else .08)
        a["family_doctor_registered"] = doctor
        a["health_insurance"] = not self.chance(.02)  # adults: overwritten by employment
        if doctor and self.chance(.85, scaled=False):
            a["last_medical_checkup"] = self.days_before(5, 540)
        chronic = .02 if age < 18 else .06 if age < 40 else .18 if age < 65 else .55
        a["chronic_illness"] = self.chance(chronic, scaled=False)
        a["mental_health_condition"] = self.chance(.01 if age < 18 else .03, scaled=False)
        none = .98 if age < 18 else .95 if age < 65 else .85
        a["disability_certificate"] = (
            "none" if self.rng.random() < none
            else _weighted(self.rng, {"mild": 30, "medium": 30, "accentuated": 25, "severe": 15}))
        if a["disability_certificate"] == "none":
            a["disability_suspected"] = self.chance(.015, scaled=False)
        if age >= 14:
            bad = .05 * self.risk
            a["identity_card"] = _weighted(self.rng, {"valid": 1 - bad, "provisional": bad * .3,
                                                      "expired": bad * .35, "none": bad * .35})
        if p.sex == "F" and 14 <= age <= 49:
            pregnant = self.chance(.012 if age < 18 else .035 if age < 40 else .005)
            a["pregnant"] = pregnant
            if pregnant:
                a["expected_delivery_date"] = (self.day + timedelta(days=self.rng.randint(14, 270))
                                               ).isoformat()
                registered = not self.chance(.2)
                a["antenatal_registered"] = registered
                a["antenatal_visits"] = self.rng.randint(1, 7) if registered else 0
        return a

    def child(self, p: _Person, age: int) -> dict[str, Any]:
        """The ``child`` indicators (on top of :meth:`person`)."""
        rng, a = self.rng, self.person(p, age)
        a["health_insurance"] = not self.chance(.02)
        no_doctor = not a["family_doctor_registered"]
        a["vaccination_status"] = _weighted(rng, {
            "complete": 1, "incomplete": .06 * self.risk * (2 if no_doctor else 1),
            "unknown": .02 * self.risk * (2 if no_doctor else 1)})
        a["malnutrition_signs"] = self.chance(.015 if age < 5 else .004)
        a["birth_certificate"] = not self.chance(.004)
        a["state_child_allowance"] = not self.chance(.03)
        if 3 <= age < 6:
            a["kindergarten_enrolled"] = not self.chance(.12 if self.urban else .2)
        if age >= 6:
            dropout = age >= 11 and self.chance(.025)
            never = not dropout and self.chance(.012)
            a["school_enrolled"] = not (dropout or never)
            a["school_dropout"] = dropout
            if a["school_enrolled"]:
                repeated = self.chance(.03)
                a["grade_repetition"] = repeated
                a["school_grade"] = max(0, min(12, age - 6 - repeated))
                a["unexcused_absences_last_month"] = (
                    rng.randint(10, 30) if self.chance(.05) else _weighted(rng, {0: 60, 1: 15, 2: 10,
                                                                                  3: 8, 5: 5, 8: 2}))
                a["excused_absences_last_month"] = _weighted(rng, {0: 60, 1: 10, 2: 10, 3: 10, 5: 10})
                a["special_educational_needs"] = self.chance(.025, scaled=False)
            if age >= 10:
                a["child_labour"] = self.chance(.012)
        a["parents_abroad"] = p.abroad_parents
        a["child_caregiver"] = "unsupervised" if self.chance(.004) else p.caregiver
        a["parental_authority_delegated"] = (p.abroad_parents in ("both_parents", "sole_parent")
                                             and self.chance(.6, scaled=False))
        a["child_neglect_signs"] = self.chance(.01)
        a["child_abuse_signs"] = self.chance(.003)
        if p.sex == "F" and age >= 14:
            a["minor_parent"] = self.chance(.008)
        return a

    def adult(self, p: _Person, age: int) -> dict[str, Any]:
        """The ``adult`` indicators (on top of :meth:`person`)."""
        rng, a = self.rng, self.person(p, age)
        if age >= 65:
            work = "retired" if self.chance(.95, scaled=False) else "unable_to_work"
        elif age < 25 and self.chance(.35, scaled=False):
            work = "student"
        elif self.poor:
            work = _weighted(rng, {"employed": 20, "self_employed": 5, "day_labourer": 25,
                                   "unemployed": 25, "homemaker": 15, "unable_to_work": 6,
                                   "retired": 4 if age >= 55 else 0})
        else:
            work = _weighted(rng, {"employed": 58, "self_employed": 9, "day_labourer": 9,
                                   "unemployed": 7, "homemaker": 10, "unable_to_work": 3,
                                   "retired": 10 if age >= 55 else 0})
        a["employment_status"] = work
        registered = work == "unemployed" and self.chance(.4, scaled=False)
        a["registered_unemployed"] = registered
        uninsured = {"day_labourer": .5, "unemployed": .1 if registered else .6, "homemaker": .15}
        a["health_insurance"] = not self.chance(uninsured.get(work, .01), scaled=False)
        old = p.birth_date.year < 1965
        if self.poor:
            level = {"none": 8, "primary": 25 if old else 15, "lower_secondary": 45,
                     "upper_secondary": 20, "tertiary": 2}
        else:
            level = {"none": 1, "primary": 12 if old else 4, "lower_secondary": 25,
                     "upper_secondary": 45, "tertiary": 25 if self.urban else 12}
        a["education_level"] = _weighted(rng, level)
        a["literate"] = a["education_level"] != "none" or self.chance(.5, scaled=False)
        return a

    def household(self, present: int, kind: str, single_parent: bool) -> dict[str, Any]:
        """The ``household`` indicators (recorded under the head)."""
        rng, a, poor = self.rng, {}, self.poor
        if self.urban:
            dwelling = _weighted(rng, {"apartment": 65, "house": 33, "improvised": 1, "other": 1})
        else:
            dwelling = _weighted(rng, {"house": 95, "improvised": 3 if poor else .5, "other": 1})
        a["dwelling_type"] = dwelling
        a["housing_tenure"] = _weighted(rng, {"owned": 80, "relatives": 10, "rented": 6 if self.urban else 2,
                                              "informal": 8 if poor else 1})
        rooms = rng.randint(1, 3) if poor or dwelling == "improvised" else rng.randint(2, 4)
        a["rooms_count"] = rooms
        a["persons_living"] = present
        density = present / rooms
        a["occupancy_density"] = "up_to_1" if density <= 1 else "1_to_2" if density <= 2 else "over_2"
        a["has_electricity"] = not self.chance(.015)
        water = .97 if self.urban or dwelling == "apartment" else .45 if poor else .7
        a["has_running_water"] = rng.random() < water
        a["has_indoor_toilet"] = a["has_running_water"] and rng.random() < .9
        heating: dict[str, float]
        if dwelling == "apartment":
            heating = {"district": 45, "gas_stove": 45, "electric": 10}
        elif self.urban:
            heating = {"gas_stove": 50, "wood_stove": 45, "electric": 5}
        else:
            heating = {"wood_stove": 85, "gas_stove": 10, "electric": 3, "none": 3 if poor else .3}
        a["heating_source"] = _weighted(rng, heating)
        pensioners = kind in ("single_elderly", "elderly_couple")
        if poor:
            income = rng.randint(400, 1600) if present <= 2 else rng.randint(900, 2600)
        else:
            income = rng.randint(1800, 4500) if pensioners else rng.randint(2800, 11000)
        a["monthly_income"] = income
        a["household_income_below_poverty"] = poor
        a["minimum_income_benefit"] = poor and rng.random() < .55
        a["heating_aid"] = rng.random() < (.7 if poor else .12)
        a["food_insecurity"] = rng.random() < (.08 if poor else .01)
        a["utility_debts"] = rng.random() < (.3 if poor else .05)
        a["single_parent"] = single_parent
        a["alcohol_abuse_household"] = self.chance(.04)
        a["domestic_violence_signs"] = self.chance(.015)
        if rng.random() < .2:
            a["household_observations"] = rng.choice(OBSERVATIONS)
        return a


OBSERVATIONS = ("Locuință modestă, curată.", "Familia are nevoie de lemne pentru iarnă.",
                "Acoperișul are nevoie de reparații.", "Bunica se ocupă de copii.",
                "Familia colaborează bine cu echipa.", "Fântână în curte, apa nu a fost analizată.")
VISITS = ("Vizită la domiciliu.", "Vizită de monitorizare.", "Discuție cu părinții despre frecvența școlară.",
          "Verificarea carnetului de vaccinări.", "Sprijin pentru dosarul de alocație.",
          "Telefon: familia confirmă programarea la medicul de familie.")
CLOSING = ("Familia s-a mutat din localitate.", "Obiectivele planului de servicii au fost atinse.",
           "Familia a refuzat continuarea serviciilor.")
# Who delivers the services for a vulnerability (else the social worker).
_NURSE = frozenset({"child_no_family_doctor", "adult_no_family_doctor", "no_health_insurance",
                    "incomplete_vaccination", "malnutrition_risk", "disability_or_chronic_illness",
                    "teenage_pregnancy", "pregnancy_no_antenatal_care"})
_COUNSELLOR = frozenset({"not_enrolled_kindergarten", "not_enrolled_school", "school_absenteeism",
                         "school_dropout", "grade_repetition"})


# --- one household --------------------------------------------------------------------


def _team(rng: random.Random, place: Locality) -> dict[str, str]:
    """The locality's team; towns have several social workers."""
    worker = f"sw-{place.siruta}-{rng.randint(1, 3 if place.urban else 1)}"
    return {"social_worker": worker, "nurse": f"nurse-{place.siruta}",
            "counsellor": f"sc-{place.siruta}", "case_responsible": worker}


def _actor(user_id: str) -> bytes:
    """One Automerge actor per worker's tablet, the same in every run."""
    return hashlib.blake2b(user_id.encode(), digest_size=16, person=b"vatra-seed").digest()


def _address(rng: random.Random, place: Locality) -> str:
    street = f"Str. {rng.choice(STREETS)} {rng.randint(1, 180)}"
    if place.urban and rng.random() < .6:
        return f"{street}, bl. {rng.choice('ABCDE')}{rng.randint(1, 12)}, ap. {rng.randint(1, 60)}"
    return street


def _at(rng: random.Random, day: date) -> datetime:
    """An instant during a working day (Romania is UTC+2/+3: 06:00-14:59 UTC)."""
    return datetime.combine(day, time(rng.randint(6, 14), rng.randint(0, 59), rng.randint(0, 59)),
                            tzinfo=UTC)


def _later(rng: random.Random, start: datetime, max_days: int, today: date) -> datetime:
    """An instant 0..max_days days after ``start`` (a few hours later on the day), not after
    ``today``."""
    days = rng.randint(0, max(0, min(max_days, (today - start.date()).days)))
    moment = _at(rng, start.date() + timedelta(days=days))
    return moment if moment > start else start + timedelta(minutes=rng.randint(20, 240))


def _household(rng: random.Random, today: date, place: Locality, county: str,
               catalogue: Catalogue) -> Household:
    kind = _weighted(rng, KINDS)
    poor = rng.random() < POOR_SHARE[kind]
    status = _weighted(rng, {"active": 86, "registration": 8, "closed": 6})
    age_days = {"registration": (1, 45), "active": (1, 365), "closed": (150, 365)}[status]
    registered = _at(rng, today - timedelta(days=rng.randint(*age_days)))
    team = _team(rng, place)
    sw = team["social_worker"]
    household_id = DocumentId.from_bytes(rng.randbytes(16)).to_string()
    hh = Household.create(locality=place.siruta, county=county, address=_address(rng, place),
                          author=sw, team=team, household_id=household_id,
                          actor_id=_actor(sw), at=registered)
    people, single_parent = _compose(rng, registered.date(), kind)
    for p in people:
        p.person_id = hh.add_member(p.first_name, p.last_name, p.birth_date, p.sex, p.relation,
                                    p.presence, person_id=_entity_id(rng))
    hh.set_gps(round(place.lat + rng.gauss(0, .012), 6), round(place.lon + rng.gauss(0, .016), 6),
               round(rng.uniform(3, 25), 1), captured_at=registered)
    feed: list[tuple[datetime, str, str, str]] = []
    if status == "registration" or rng.random() < .04:
        if status != "registration":
            hh.set_status(status)
        return _finish(rng, hh, feed, today, registered, team)

    started = _at(rng, min(today, registered.date() + timedelta(days=rng.randint(0, 21))))
    started = max(started, registered + timedelta(minutes=30))
    completed = _later(rng, started, 3 if rng.random() < .3 else 0, today)
    aid = hh.start_assessment(assessment_id=_entity_id(rng), at=started)
    draw = _Answers(rng, completed.date(), poor, place.urban)
    present = [p for p in people if p.presence == "present"]
    head = next(p for p in people if p.relation == "head")
    for p in present:
        age = age_on(p.birth_date.isoformat(), completed.date())
        answers = draw.child(p, age) if age < ADULT_AGE else draw.adult(p, age)
        if p is head:
            answers.update(draw.household(len(present), kind, single_parent))
        hh.record_answers(aid, p.person_id, answers)
    hh.complete_assessment(aid, at=completed)
    feed.append((completed, sw, "assessment_completed", "Evaluare completă a gospodăriei."))
    hh.set_status("active")
    still_open = _plan(rng, hh, catalogue, completed, today, team, head.person_id, feed)
    if status != "closed":
        return _finish(rng, hh, feed, today, registered, team)
    closed = _later(rng, max(at for at, *_ in feed), 60, today)
    supervisor = f"sup-{county.lower()}"
    for sid in still_open:  # closing a case cancels what was not delivered (a supervisor's call)
        hh.as_author(supervisor).set_service_status(sid, "cancelled")
    feed.append((closed, supervisor, "case_closed", rng.choice(CLOSING)))
    hh.set_status("closed")
    return _finish(rng, hh, feed, closed.date(), registered, team)


def _plan(rng: random.Random, hh: Household, catalogue: Catalogue, completed: datetime,
          today: date, team: Mapping[str, str], head_id: str,
          feed: list[tuple[datetime, str, str, str]]) -> list[str]:
    """Plan services for part of the derived vulnerabilities and move some of them on;
    return the ids of the services not delivered."""
    identified = completed.date()
    still_open = []
    for found in derive(hh.to_dict(), on=identified, catalogue=catalogue):
        if rng.random() >= .65:
            continue
        code = found.vulnerability
        role = "nurse" if code in _NURSE else "counsellor" if code in _COUNSELLOR else "social_worker"
        for i, (service, deadline) in enumerate(recommended(code, identified, catalogue)):
            if i and rng.random() >= .5:
                continue
            sid = hh.plan_service(service, found.person_id or head_id, code, deadline,
                                  service_id=_entity_id(rng))
            r = rng.random()
            if deadline < today:  # due already: most delivered (the older, the likelier)
                delivered = .55 + .4 * min(1.0, (today - deadline).days / 120)
                state = ("delivered" if r < delivered else
                         "in_progress" if r < (1 + delivered) / 2 else "planned")
            else:
                state = "delivered" if r < .2 else "in_progress" if r < .5 else "planned"
            if state == "planned" or identified >= today:
                still_open.append(sid)
                continue
            by = team[role]
            if state == "delivered":
                at = _later(rng, completed, (deadline - identified).days + 10, today)
                hh.as_author(by).set_service_status(sid, "delivered", at=at)
                if rng.random() < .5:
                    label = catalogue.services[service].label.ro
                    feed.append((at, by, "service_delivered",
                                 f"{label}: {catalogue.vulnerabilities[code].label.ro}"))
            else:
                hh.as_author(by).set_service_status(sid, "in_progress")
                still_open.append(sid)
    return still_open


def _finish(rng: random.Random, hh: Household, feed: list[tuple[datetime, str, str, str]],
            until: date, registered: datetime, team: Mapping[str, str]) -> Household:
    """Add a few visits (up to ``until``) and write the activity feed in time order."""
    members = list(team.values())
    for _ in range(rng.randint(0, 3)):
        feed.append((_later(rng, registered, 365, until), rng.choice(members), "visit",
                     rng.choice(VISITS)))
    for at, by, kind, text in sorted(feed):
        hh.as_author(by).append_activity(kind, text, at=at)
    return hh


# --- public API -----------------------------------------------------------------------


def _places(counties: Iterable[str]) -> tuple[list[tuple[Locality, str]], list[int]]:
    places = [(loc, code) for code in counties for loc in COUNTIES[code].localities]
    if not places:
        raise ValueError("no counties")
    return places, [loc.weight for loc, _ in places]


def generate(n: int, *, seed: int = 1, today: date,
             counties: Iterable[str] = DEFAULT_COUNTIES) -> Iterator[Household]:
    """``n`` realistic households (unguarded :class:`~conflict.Household` documents).

    Deterministic in ``seed`` and ``today`` (see the module docstring); every instant lies
    in the 365 days up to ``today``. ``counties`` are codes of :data:`COUNTIES`; a
    county's localities get households in proportion to their ``weight``.
    """
    places, weights = _places(counties)
    catalogue = load_catalogue()
    for i in range(n):
        rng = random.Random(f"vatra-seed:{seed}:{i}")
        place, county = rng.choices(places, weights=weights)[0]
        yield _household(rng, today, place, county, catalogue)


async def seed_store(store: HouseholdStore, n: int, *, seed: int = 1, today: date,
                     counties: Iterable[str] = DEFAULT_COUNTIES, concurrency: int = 8) -> list[str]:
    """Generate ``n`` households and store each with its changes (registry, data key,
    change log, projection outbox), ``concurrency`` transactions at a time while the next
    households are being generated. Returns their ids, in generation order."""
    slots = asyncio.Semaphore(concurrency)
    ids: list[str] = []

    async def put(hh: Household) -> None:
        try:
            await store.create_household(
                HouseholdRecord(hh.household_id, str(hh.locality), str(hh.county)),
                stored(hh.doc.get_changes([])))
        finally:
            slots.release()

    async with asyncio.TaskGroup() as tasks:
        for hh in generate(n, seed=seed, today=today, counties=counties):
            await slots.acquire()
            tasks.create_task(put(hh))
            ids.append(hh.household_id)
    return ids


# --- reporting ------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What :func:`describe` reports. Children are members under 18 on the day their
    household's vulnerabilities are derived (its latest assessment; for a household not
    assessed yet, its registration day); ``vulnerable_children`` are present, assessed
    children with at least one vulnerability of their own."""

    households: int
    persons: int
    persons_present: int
    children: int
    children_assessed: int
    vulnerable_children: int
    assessed: int
    statuses: dict[str, int]
    sizes: dict[str, int]                 # "1".."5", "6+" -> households
    below_poverty: int                    # households with the below_poverty_line vulnerability
    vulnerabilities: dict[str, int]       # code -> subjects, most frequent first
    services: dict[str, int]              # status -> services
    services_overdue: int | None = None   # open with a deadline before ``today`` (if given)
    relations: dict[str, int] = field(default_factory=dict)
    presence: dict[str, int] = field(default_factory=dict)

    @property
    def mean_size(self) -> float:
        return self.persons / self.households if self.households else 0.0

    @property
    def vulnerable_children_share(self) -> float:
        return self.vulnerable_children / self.children_assessed if self.children_assessed else 0.0

    def to_markdown(self) -> str:
        def share(k: int, of: int) -> str:
            return f"{k} ({k / of:.0%})" if of else str(k)

        top = ", ".join(f"{code} {k}" for code, k in list(self.vulnerabilities.items())[:8])
        lines = [
            "| measure | value |", "|---|---|",
            f"| households | {self.households} |",
            f"| persons (present) | {self.persons} ({self.persons_present}) |",
            f"| mean household size | {self.mean_size:.2f} |",
            "| household sizes | " + ", ".join(f"{s}: {k}" for s, k in self.sizes.items()) + " |",
            f"| children | {self.children} |",
            f"| households assessed | {share(self.assessed, self.households)} |",
            f"| vulnerable children (of assessed) | "
            f"{share(self.vulnerable_children, self.children_assessed)} |",
            f"| households below poverty line / on minimum income | "
            f"{share(self.below_poverty, self.assessed)} of assessed |",
            "| statuses | " + ", ".join(f"{s} {k}" for s, k in self.statuses.items()) + " |",
            "| services | " + ", ".join(f"{s} {k}" for s, k in self.services.items())
            + (f"; overdue {self.services_overdue}" if self.services_overdue is not None else "")
            + " |",
            f"| most frequent vulnerabilities | {top} |",
        ]
        return "\n".join(lines)


def _reference_day(doc: Mapping[str, Any]) -> date | None:
    """The day vulnerabilities are derived on (as the projection does): the latest
    assessment's, else the registration day."""
    latest = ""
    for a in (doc.get("assessments") or {}).values():
        at = a.get("completed_at") or a.get("started_at") or ""
        latest = max(latest, at)
    if latest:
        return date.fromisoformat(latest[:10])
    feed = doc.get("activity") or []
    return date.fromisoformat(feed[0]["at"][:10]) if feed else None


def describe(households: Iterable[Household], *, today: date | None = None,
             catalogue: Catalogue | None = None) -> Summary:
    """Summary statistics of ``households`` (see :class:`Summary`); vulnerabilities come
    from :func:`conflict.catalogue.derive`, as of each household's latest assessment."""
    catalogue = catalogue if catalogue is not None else load_catalogue()
    count = persons = present = children = assessed_children = vulnerable = assessed = 0
    poverty = 0
    statuses: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    vulns: Counter[str] = Counter()
    services: Counter[str] = Counter()
    relations: Counter[str] = Counter()
    presence: Counter[str] = Counter()
    overdue = 0
    for hh in households:
        doc = hh.to_dict()
        count += 1
        members = doc.get("members") or {}
        persons += len(members)
        sizes[str(len(members)) if len(members) < 6 else "6+"] += 1
        statuses[str(doc.get("status"))] += 1
        day = _reference_day(doc)
        is_assessed = bool(doc.get("assessments"))
        assessed += is_assessed
        found = derive(doc, on=day, catalogue=catalogue) if is_assessed and day else []
        vulns.update(d.vulnerability for d in found)
        poverty += any(d.vulnerability == "below_poverty_line" for d in found)
        subjects = {d.person_id for d in found if d.person_id is not None}
        for pid, m in members.items():
            relations[m.get("relation_to_head")] += 1
            presence[m.get("presence")] += 1
            present += m.get("presence") == "present"
            if day is None or age_on(m["birth_date"], day) >= ADULT_AGE:
                continue
            children += 1
            if is_assessed and m.get("presence") == "present":
                assessed_children += 1
                vulnerable += pid in subjects
        for s in (doc.get("service_plan") or {}).values():
            services[s["status"]] += 1
            if today is not None and s["status"] in ("planned", "in_progress") \
                    and date.fromisoformat(s["deadline"]) < today:
                overdue += 1
    return Summary(
        households=count, persons=persons, persons_present=present, children=children,
        children_assessed=assessed_children, vulnerable_children=vulnerable, assessed=assessed,
        statuses=dict(statuses.most_common()),
        sizes={k: sizes[k] for k in sorted(sizes, key=lambda s: (len(s), s))},
        below_poverty=poverty, vulnerabilities=dict(vulns.most_common()),
        services=dict(services.most_common()),
        services_overdue=overdue if today is not None else None,
        relations=dict(relations.most_common()), presence=dict(presence.most_common()))
