"""The indicator catalogue (data) and its evaluator: pure logic, no database."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from conflict import Household
from conflict.catalogue import (
    CODE_RE,
    LATEST_VERSION,
    MAX_DEADLINE_DAYS,
    Catalogue,
    CatalogueError,
    Derived,
    age_on,
    answer_rule,
    derive,
    load_catalogue,
    load_catalogue_file,
    recommended,
)

ON = date(2025, 3, 1)
CATALOGUE_FILE = Path(__file__).resolve().parents[1] / "conflict" / "catalogue_v1.json"

REQUIRED_VULNERABILITIES = {
    "child_no_family_doctor",
    "incomplete_vaccination",
    "not_enrolled_kindergarten",
    "not_enrolled_school",
    "school_absenteeism",
    "school_dropout",
    "disability_or_chronic_illness",
    "no_identity_documents",
    "parents_working_abroad",
    "single_parent_household",
    "below_poverty_line",
    "inadequate_housing",
    "violence_or_neglect_risk",
    "teenage_pregnancy",
    "pregnancy_no_antenatal_care",
}


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load_catalogue(1)


# --- hand-built household documents ----------------------------------------


def pid() -> str:
    return str(uuid.uuid4())


def member(birth_date: str, sex: str = "F", relation: str = "child", presence: str = "present") -> dict:
    return {
        "first_name": "Ana",
        "last_name": "Pop",
        "birth_date": birth_date,
        "sex": sex,
        "relation_to_head": relation,
        "presence": presence,
    }


def assessment(answers: dict[str, dict[str, Any]], started: str = "2025-02-01T09:00:00Z",
               completed: str | None = None) -> dict:
    a: dict[str, Any] = {"started_at": started, "by": "w-1", "answers": answers}
    if completed is not None:
        a["completed_at"] = completed
    return a


def household(members: dict[str, dict], assessments: dict[str, dict]) -> dict:
    return {"schema": 1, "members": members, "assessments": assessments, "service_plan": {}}


def codes_for(derived: list[Derived], person_id: str | None) -> set[str]:
    return {d.vulnerability for d in derived if d.person_id == person_id}


# --- the catalogue as data ---------------------------------------------------


def test_catalogue_contents(cat: Catalogue) -> None:
    raw = json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))
    assert (raw["catalogue"], raw["version"], raw["schema"]) == ("vatra-indicators", 1, 1)
    assert cat.version == 1
    assert len(cat.indicators) >= 40
    assert len(cat.vulnerabilities) >= 14
    assert set(cat.vulnerabilities) >= REQUIRED_VULNERABILITIES
    assert set(cat.services) == {"information", "counselling", "accompaniment", "assistance", "referral",
                                 "monitoring"}
    assert {"social", "health", "education"} == {i.domain for i in cat.indicators.values()}
    assert {"bool", "choice", "int", "date", "text"} == {i.type for i in cat.indicators.values()}
    vaccination = cat.indicators["vaccination_status"]
    assert vaccination.type == "choice"
    assert vaccination.option_codes == {"complete", "incomplete", "unknown"}


def test_every_code_matches_the_code_format(cat: Catalogue) -> None:
    codes = [*cat.indicators, *cat.vulnerabilities, *cat.services]
    codes += [o.code for i in cat.indicators.values() for o in i.options]
    assert codes
    assert [c for c in codes if not CODE_RE.fullmatch(c)] == []


def test_every_label_has_romanian_and_english(cat: Catalogue) -> None:
    labels = [i.label for i in cat.indicators.values()]
    labels += [o.label for i in cat.indicators.values() for o in i.options]
    labels += [v.label for v in cat.vulnerabilities.values()]
    labels += [s.label for s in cat.services.values()]
    assert all(label.ro.strip() and label.en.strip() for label in labels)
    # Romanian is written with its diacritics (comma-below ș/ț, not the cedilla forms).
    romanian = "".join(label.ro for label in labels)
    assert set("ăâîșț") <= set(romanian)
    assert not set("şţ") & set(romanian)


def test_every_vulnerability_has_recommendations_due_within_30_days(cat: Catalogue) -> None:
    assert set(cat.recommendations) == set(cat.vulnerabilities)
    for code, recs in cat.recommendations.items():
        assert recs, code
        assert all(r.service in cat.services for r in recs), code
        assert all(1 <= r.deadline_days <= MAX_DEADLINE_DAYS for r in recs), code
    assert "counselling" in {r.service for r in cat.recommendations["school_absenteeism"]}


def test_load_catalogue_is_cached_and_matches_the_file(cat: Catalogue) -> None:
    assert load_catalogue(1) is cat
    assert load_catalogue_file(CATALOGUE_FILE) == cat


@pytest.mark.parametrize("version", [0, LATEST_VERSION + 1, True])
def test_unknown_catalogue_version_is_refused(version: int) -> None:
    with pytest.raises(CatalogueError):
        load_catalogue(version)


def test_a_later_version_keeps_every_answer_of_an_earlier_one_valid() -> None:
    """Versioned as issue 12 asks: v2 adds an indicator and ranges for the numbers, and
    removes, retypes or narrows nothing, so an answer recorded under v1 keeps its
    meaning; the vulnerability rules are the same, and derive() uses the latest."""
    assert load_catalogue() is load_catalogue(LATEST_VERSION) and LATEST_VERSION == 2
    for older, newer in zip(range(1, LATEST_VERSION), range(2, LATEST_VERSION + 1),
                            strict=True):
        a, b = load_catalogue(older), load_catalogue(newer)
        assert set(a.indicators) < set(b.indicators)
        for code, old in a.indicators.items():
            new = b.indicators[code]
            assert (new.type, new.domain, new.applies_to) == (old.type, old.domain,
                                                              old.applies_to), code
            assert new.option_codes >= old.option_codes, code
        assert a.vulnerabilities == b.vulnerabilities
        assert set(a.services) <= set(b.services)
    latest = load_catalogue()
    assert all(i.minimum is not None and i.maximum is not None
               for i in latest.indicators.values() if i.type == "int")


@pytest.mark.parametrize(("code", "value", "rule"), [
    ("school_grade", 5, None), ("school_grade", 5.0, None), ("school_grade", 13, "range"),
    ("school_grade", "twelve", "type"), ("school_grade", 5.5, "type"),
    ("school_grade", True, "type"), ("vaccination_status", "complete", None),
    ("vaccination_status", True, "type"), ("vaccination_status", "half", "option"),
    ("school_enrolled", False, None), ("school_enrolled", "yes", "type"),
    ("last_medical_checkup", "2026-02-30", "format"), ("last_medical_checkup", "2024-W01-1", "format"),
    ("last_medical_checkup", "20240101", "format"), ("last_medical_checkup", "2026-02-03", None),
    ("household_observations", "dry, heated", None),
])
def test_an_answer_fits_its_indicator(code: str, value: object, rule: str | None) -> None:
    assert answer_rule(load_catalogue().indicators[code], value) == rule


# --- validation of a broken catalogue ---------------------------------------


def _vuln(raw: dict, code: str) -> dict:
    return next(v for v in raw["vulnerabilities"] if v["code"] == code)


def _ind(raw: dict, code: str) -> dict:
    return next(i for i in raw["indicators"] if i["code"] == code)


#: case -> (how to break a copy of the catalogue, regex the error message must contain).
BREAKAGES: dict[str, tuple[Callable[[dict], None], str]] = {
    "unknown indicator in a rule": (
        lambda raw: _vuln(raw, "school_dropout").update(rule={"answer": "left_school", "equals": True}),
        "unknown indicator 'left_school'",
    ),
    "bad indicator code": (lambda raw: _ind(raw, "pregnant").update(code="has space"), "has space"),
    "bad vulnerability code": (
        lambda raw: raw["vulnerabilities"].append(
            {**_vuln(raw, "school_dropout"), "code": "_leading_underscore"}),
        "_leading_underscore",
    ),
    "duplicate indicator": (
        lambda raw: raw["indicators"].append(_ind(raw, "pregnant")),
        "duplicate indicator code 'pregnant'",
    ),
    "no recommendation": (
        lambda raw: raw["recommendations"].pop("alcohol_abuse"),
        "'alcohol_abuse' has no recommendation",
    ),
    "unknown service": (
        lambda raw: raw["recommendations"]["school_dropout"].append(
            {"service": "mentoring", "deadline_days": 5}),
        "mentoring",
    ),
    "deadline over 30 days": (
        lambda raw: raw["recommendations"]["school_absenteeism"][0].update(deadline_days=31),
        r"'school_absenteeism'.*1\.\.30",
    ),
    "deadline of 0 days": (
        lambda raw: raw["recommendations"]["domestic_violence"][0].update(deadline_days=0),
        r"'domestic_violence'.*1\.\.30",
    ),
    "choice without options": (
        lambda raw: _ind(raw, "vaccination_status").pop("options"),
        "vaccination_status",
    ),
    "choice rule value is not an option": (
        lambda raw: _vuln(raw, "incomplete_vaccination").update(
            rule={"answer": "vaccination_status", "in": ["incomplete", "partial"]}),
        "not an option of choice indicator 'vaccination_status'",
    ),
    "numeric test on a bool": (
        lambda raw: _vuln(raw, "school_dropout").update(rule={"answer": "school_dropout", "at_least": 1}),
        "'at_least' on non-numeric indicator 'school_dropout'",
    ),
    "bool rule compared with a string": (
        lambda raw: _vuln(raw, "school_dropout").update(rule={"answer": "school_dropout", "equals": "yes"}),
        "does not fit bool indicator 'school_dropout'",
    ),
    "unknown rule form": (
        lambda raw: _vuln(raw, "school_dropout").update(rule={"answer": "school_dropout", "is": True}),
        "'school_dropout'.*needs exactly one of",
    ),
    "age in a household rule": (
        lambda raw: _vuln(raw, "alcohol_abuse").update(
            rule={"all": [{"age_at_least": 18}, {"answer": "alcohol_abuse_household", "equals": True}]}),
        "'alcohol_abuse'.*not allowed in a household rule",
    ),
    "person indicator read by a household rule": (
        lambda raw: _vuln(raw, "alcohol_abuse").update(rule={"answer": "pregnant", "equals": True}),
        "cannot read person indicator 'pregnant'",
    ),
    "missing english label": (
        lambda raw: _ind(raw, "pregnant")["label"].pop("en"),
        "'pregnant': label has no 'en'",
    ),
    "empty any": (lambda raw: _vuln(raw, "school_dropout").update(rule={"any": []}),
                  "'school_dropout'.*'any' needs a non-empty list"),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_a_broken_catalogue_is_refused_naming_the_code(case: str, tmp_path: Path) -> None:
    raw = json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))
    load_catalogue_file(_write(tmp_path, raw))  # the intact copy loads
    breakage, code = BREAKAGES[case]
    broken = copy.deepcopy(raw)
    breakage(broken)
    with pytest.raises(CatalogueError, match=code):
        load_catalogue_file(_write(tmp_path, broken))


def test_invalid_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogueError, match="JSON"):
        load_catalogue_file(path)


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    return path


# --- age ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        ("2010-06-01", date(2025, 5, 31), 14),
        ("2010-06-01", date(2025, 6, 1), 15),
        ("2008-02-29", date(2026, 2, 28), 17),
        ("2008-02-29", date(2026, 3, 1), 18),
        ("2025-03-01", date(2025, 3, 1), 0),
    ],
)
def test_age_on_counts_completed_years(birth: str, day: date, age: int) -> None:
    assert age_on(birth, day) == age


def test_age_on_does_not_echo_a_bad_birth_date() -> None:
    with pytest.raises(ValueError) as info:
        age_on("1990-13-45", ON)
    assert "1990" not in str(info.value)


# --- derive -------------------------------------------------------------------


def test_a_14_year_old_with_12_unexcused_absences_has_school_absenteeism() -> None:
    child = pid()
    h = household({child: member("2010-06-01", "M")},
                  {"a1": assessment({child: {"school_enrolled": True, "unexcused_absences_last_month": 12}})})
    assert derive(h, on=ON) == [Derived("school_absenteeism", child, "a1")]


def test_nine_absences_are_not_absenteeism() -> None:
    child = pid()
    h = household({child: member("2010-06-01", "M")},
                  {"a1": assessment({child: {"unexcused_absences_last_month": 9.0}})})
    assert derive(h, on=ON) == []


def test_a_pregnant_16_year_old_without_antenatal_care() -> None:
    girl = pid()
    h = household({girl: member("2008-09-10", "F")},
                  {"a1": assessment({girl: {"pregnant": True, "antenatal_registered": False,
                                            "antenatal_visits": 0}})})
    assert codes_for(derive(h, on=ON), girl) == {"teenage_pregnancy", "pregnancy_no_antenatal_care"}


def test_a_pregnant_adult_in_antenatal_care_is_neither() -> None:
    woman = pid()
    h = household({woman: member("1998-01-01", "F", "head")},
                  {"a1": assessment({woman: {"pregnant": True, "antenatal_registered": True,
                                             "antenatal_visits": 3}})})
    assert derive(h, on=ON) == []


def test_an_absent_member_is_not_assessed() -> None:
    here, away = pid(), pid()
    answers = {"school_enrolled": True, "unexcused_absences_last_month": 15}
    h = household({here: member("2012-01-01"), away: member("2011-01-01", presence="absent")},
                  {"a1": assessment({here: answers, away: answers})})
    derived = derive(h, on=ON)
    assert codes_for(derived, here) == {"school_absenteeism"}
    assert all(d.person_id != away for d in derived)


def test_a_household_without_electricity_has_inadequate_housing() -> None:
    head, child = pid(), pid()
    h = household({head: member("1985-05-05", "F", "head"), child: member("2015-05-05")},
                  {"a1": assessment({head: {"has_electricity": False, "has_running_water": True},
                                     child: {}})})
    assert derive(h, on=ON) == [Derived("inadequate_housing", None, "a1")]


def test_household_answers_recorded_under_a_non_head_member_count() -> None:
    mother, child = pid(), pid()
    h = household({mother: member("1985-05-05", "F", "mother"), child: member("2015-05-05")},
                  {"a1": assessment({mother: {"has_electricity": False}})})
    assert derive(h, on=ON) == [Derived("inadequate_housing", None, "a1")]


def test_the_head_of_households_answer_wins_for_household_indicators() -> None:
    # The other member's id sorts first, so only the head rule can make the head's answer win.
    other, head = "00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"
    h = household({head: member("1980-01-01", "M", "head"), other: member("1982-01-01", "F", "wife")},
                  {"a1": assessment({head: {"has_electricity": True}, other: {"has_electricity": False}})})
    assert derive(h, on=ON) == []


def test_the_latest_assessment_wins() -> None:
    child = pid()
    old = assessment({child: {"unexcused_absences_last_month": 14}},
                     started="2024-10-01T08:00:00Z", completed="2024-10-02T08:00:00Z")
    new = assessment({child: {"unexcused_absences_last_month": 1, "school_dropout": True}},
                     started="2025-02-01T08:00:00Z")  # not completed: its start counts
    h = household({child: member("2012-04-04")}, {"old": old, "new": new})
    assert derive(h, on=ON) == [Derived("school_dropout", child, "new")]


def test_completion_time_orders_assessments() -> None:
    child = pid()
    # Started earlier but completed later: its answer to the same indicator is the latest.
    a = assessment({child: {"school_dropout": True}},
                   started="2025-01-01T08:00:00Z", completed="2025-02-20T08:00:00Z")
    b = assessment({child: {"school_dropout": False, "grade_repetition": True}},
                   started="2025-02-01T08:00:00Z", completed="2025-02-02T08:00:00Z")
    h = household({child: member("2012-04-04")}, {"b": b, "a": a})
    assert derive(h, on=ON) == [Derived("grade_repetition", child, "a"),
                                Derived("school_dropout", child, "a")]


def test_a_partial_reassessment_updates_only_what_it_answered() -> None:
    """Before (issue 12, observation 4): a nurse recorded a one-answer assessment; it
    became the household's latest, and only its answers counted: the household went
    from its vulnerabilities to none while services stayed open. Reproduced with a full
    assessment, then a one-answer one. Now every indicator keeps its latest answer: the
    one re-answered changes, the rest stand."""
    child, head = pid(), pid()
    members = {child: member("2015-04-04"), head: member("1985-01-01", "F", "head")}
    full = assessment({
        child: {"family_doctor_registered": False, "vaccination_status": "incomplete",
                "school_enrolled": True, "unexcused_absences_last_month": 12,
                "parents_abroad": "one_parent"},
        head: {"has_running_water": False, "food_insecurity": True}},
        started="2025-01-10T08:00:00Z", completed="2025-01-10T10:00:00Z")
    before = derive(household(members, {"full": full}), on=ON)
    assert len(before) >= 5
    nurse = assessment({child: {"vaccination_status": "complete"}},
                       started="2025-02-20T08:00:00Z", completed="2025-02-20T08:10:00Z")
    after = derive(household(members, {"full": full, "nurse": nurse}), on=ON)
    assert {d.vulnerability for d in after} == \
        {d.vulnerability for d in before} - {"incomplete_vaccination"}
    # the child's findings name the latest assessment that answered for the child
    assert {d.assessment_id for d in after if d.person_id == child} == {"nurse"}


def test_an_answer_older_than_a_year_before_the_latest_assessment_lapses() -> None:
    child = pid()
    old = assessment({child: {"school_dropout": True}}, started="2023-06-01T08:00:00Z")
    new = assessment({child: {"family_doctor_registered": True}},
                     started="2025-02-01T08:00:00Z")
    h = household({child: member("2012-04-04")}, {"old": old, "new": new})
    assert derive(h, on=ON) == []  # nobody confirmed the dropout for over a year
    recent = {**old, "started_at": "2024-03-01T08:00:00Z"}
    h = household({child: member("2012-04-04")}, {"old": recent, "new": new})
    assert derive(h, on=ON) == [Derived("school_dropout", child, "new")]


def test_an_assessment_started_and_not_yet_answered_moves_nothing() -> None:
    """Before (found in review of issue 12): the year was measured from the latest
    assessment, answered or not, so a re-assessment merely started 13 months after the
    last full one lapsed every answer and the household lost its vulnerabilities.
    Now the year is measured from the latest assessment that answered something."""
    child = pid()
    full = assessment({child: {"school_dropout": True}}, started="2025-01-10T08:00:00Z")
    empty = assessment({}, started="2026-02-15T08:00:00Z")
    started = assessment({child: {}}, started="2026-02-16T08:00:00Z")
    h = household({child: member("2012-04-04")},
                  {"full": full, "empty": empty, "started": started})
    assert derive(h, on=ON) == [Derived("school_dropout", child, "full")]


def test_missing_answers_yield_nothing(cat: Catalogue) -> None:
    # Every age from newborn to 80 and both sexes, present, with nothing answered.
    members = {pid(): member(f"{ON.year - age}-01-15", sex) for age in range(81) for sex in "FM"}
    h = household(members, {"a1": assessment({p: {} for p in list(members)[::2]})})
    assert derive(h, on=ON, catalogue=cat) == []
    assert derive(household(members, {}), on=ON) == []


def test_malformed_documents_yield_nothing_rather_than_an_error() -> None:
    child = pid()
    bad_member = {**member("not-a-date"), "sex": None}
    h = household({child: bad_member, "x": "not a member"},
                  {"a1": assessment({child: "not a map", "x": {"unexcused_absences_last_month": "many"}}),
                   "a0": "not an assessment"})
    assert derive(h, on=ON) == []
    assert derive({}, on=ON) == []


def test_a_member_with_an_unusable_birth_date_gets_only_person_vulnerabilities() -> None:
    someone = pid()
    h = household({someone: member("unknown")},
                  {"a1": assessment({someone: {"chronic_illness": True, "family_doctor_registered": False}})})
    # No family-doctor vulnerability (child/adult split needs an age), but the person-level one holds.
    assert derive(h, on=ON) == [Derived("disability_or_chronic_illness", someone, "a1")]


def test_booleans_are_not_numbers() -> None:
    head = pid()
    h = household({head: member("1980-01-01", "M", "head")},
                  {"a1": assessment({head: {"has_electricity": 0, "single_parent": 1}})})
    assert derive(h, on=ON) == []


@pytest.mark.parametrize(("birth", "expected"), [
    ("2022-02-01", {"not_enrolled_kindergarten"}),   # 3
    ("2019-03-02", {"not_enrolled_kindergarten"}),   # 5 (turns 6 the next day)
    ("2019-03-01", {"not_enrolled_school"}),         # 6
    ("2007-03-02", {"not_enrolled_school"}),         # 17
    ("2022-03-02", set()),                           # 2
])
def test_enrolment_by_age(birth: str, expected: set[str]) -> None:
    child = pid()
    h = household({child: member(birth)},
                  {"a1": assessment({child: {"kindergarten_enrolled": False, "school_enrolled": False}})})
    assert codes_for(derive(h, on=ON), child) == expected


def test_a_drop_out_is_not_also_counted_as_never_enrolled() -> None:
    child = pid()
    h = household({child: member("2011-01-01")},
                  {"a1": assessment({child: {"school_enrolled": False, "school_dropout": True}})})
    assert codes_for(derive(h, on=ON), child) == {"school_dropout"}


def test_child_and_adult_populations_are_kept_apart() -> None:
    child, adult, just_18 = pid(), pid(), pid()
    no_doctor = {"family_doctor_registered": False}
    h = household({child: member("2015-01-01"), adult: member("1990-01-01", "M", "head"),
                   just_18: member("2007-03-01", "M")},  # turns 18 on ON
                  {"a1": assessment({child: no_doctor, adult: no_doctor, just_18: no_doctor})})
    derived = derive(h, on=ON)
    assert codes_for(derived, child) == {"child_no_family_doctor"}
    assert codes_for(derived, adult) == {"adult_no_family_doctor"}
    assert codes_for(derived, just_18) == {"adult_no_family_doctor"}


def test_person_rules_read_household_answers() -> None:
    head, child = pid(), pid()
    h = household({head: member("1980-01-01", "F", "head"), child: member("2016-01-01")},
                  {"a1": assessment({head: {"domestic_violence_signs": True}, child: {}})})
    derived = derive(h, on=ON)
    assert Derived("violence_or_neglect_risk", child, "a1") in derived
    assert Derived("domestic_violence", None, "a1") in derived
    assert Derived("violence_or_neglect_risk", head, "a1") not in derived  # an adult


def test_result_is_sorted_and_deterministic() -> None:
    head, c1, c2 = sorted(pid() for _ in range(3))
    members = {c2: member("2012-01-01"), head: member("1980-01-01", "F", "head"), c1: member("2013-01-01")}
    answers = {
        head: {"single_parent": True, "has_running_water": False},
        c1: {"parents_abroad": "one_parent", "school_dropout": True},
        c2: {"parents_abroad": "both_parents"},
    }
    h = household(members, {"a1": assessment(answers)})
    derived = derive(h, on=ON)
    assert [(d.vulnerability, d.person_id) for d in derived] == [
        ("inadequate_housing", None),
        ("parents_working_abroad", c1),
        ("parents_working_abroad", c2),
        ("school_dropout", c1),
        ("single_parent_household", None),
    ]
    reordered = household(dict(reversed(members.items())),
                          {"a1": assessment(dict(reversed(answers.items())))})
    assert derive(reordered, on=ON) == derived


def test_derive_reads_a_real_household_document() -> None:
    h = Household.create(locality="54975", county="CJ", address="Str. Lungă 3", author="w-1")
    head = h.add_member("Ioana", "Pop", "1988-07-01", "F", "head")
    child = h.add_member("Andrei", "Pop", "2011-02-01", "M", "child")
    aid = h.as_author("w-1").start_assessment(at="2025-02-10T10:00:00Z")
    h.record_answers(aid, head, {"minimum_income_benefit": True})
    h.record_answers(aid, child, {"unexcused_absences_last_month": 11, "vaccination_status": "incomplete"})
    derived = derive(h.to_dict(), on=ON)
    assert derived == [
        Derived("below_poverty_line", None, aid),
        Derived("incomplete_vaccination", child, aid),
        Derived("school_absenteeism", child, aid),
    ]


# --- recommended ---------------------------------------------------------------


def test_recommended_deadlines_are_within_30_days(cat: Catalogue) -> None:
    identified = date(2025, 12, 20)
    for code in cat.vulnerabilities:
        plan = recommended(code, identified)
        assert plan, code
        assert all(identified < deadline <= identified + timedelta(days=30) for _, deadline in plan), code
        assert all(service in cat.services for service, _ in plan), code


def test_recommended_for_urgent_and_ordinary_cases() -> None:
    identified = date(2025, 3, 1)
    assert ("referral", date(2025, 3, 4)) in recommended("violence_or_neglect_risk", identified)
    assert recommended("school_absenteeism", identified) == [
        ("counselling", date(2025, 3, 8)),
        ("monitoring", date(2025, 3, 31)),
    ]


def test_recommended_for_an_unknown_vulnerability_raises() -> None:
    with pytest.raises(KeyError):
        recommended("no_such_vulnerability", ON)
