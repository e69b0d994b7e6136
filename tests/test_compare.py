"""Comparing two assessments (conflict/compare.py): indicators changed, vulnerabilities
gained and lost, from what stood after each. Pure logic."""

from __future__ import annotations

import pytest

from conflict import Household
from conflict.compare import UnknownAssessment, compare_assessments


def family() -> tuple[Household, str, str, str, str]:
    """A child and her father, assessed in March (no family doctor for either, the father
    unemployed), then re-assessed in December on the child alone (she now has one)."""
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="ana")
    father = h.add_member("Ion", "Pop", "1980-05-10", "M", "head")
    child = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    march = h.start_assessment(at="2026-03-01T09:00:00Z")
    h.record_answers(march, father, {"family_doctor_registered": False,
                                     "employment_status": "unemployed"})
    h.record_answers(march, child, {"family_doctor_registered": False})
    h.complete_assessment(march, at="2026-03-01T10:00:00Z")
    december = h.start_assessment(at="2026-12-01T09:00:00Z")
    h.record_answers(december, child, {"family_doctor_registered": True,
                                       "vaccination_status": "incomplete"})
    h.complete_assessment(december, at="2026-12-01T10:00:00Z")
    return h, father, child, march, december


def test_a_re_assessment_shows_what_changed_and_what_was_gained_and_lost() -> None:
    h, father, child, march, december = family()
    got = compare_assessments(h.to_dict(), december, march)  # either order
    assert (got.earlier, got.later) == (march, december)
    assert got.changed == {child: {"family_doctor_registered": (False, True),
                                   "vaccination_status": (None, "incomplete")}}
    assert got.lost == {child: ["child_no_family_doctor"]}
    assert got.gained == {child: ["incomplete_vaccination"]}
    # the father was not re-assessed: his answers still stand, nothing changes for him
    assert father not in got.changed and father not in got.lost
    subjects = [s["subject"] for s in got.to_json()["subjects"]]
    assert subjects == [child]


def test_an_assessment_compared_with_itself_changes_nothing() -> None:
    h, _, _, march, _ = family()
    got = compare_assessments(h.to_dict(), march, march)
    assert (got.changed, got.gained, got.lost) == ({}, {}, {})


def test_an_unknown_assessment_is_named() -> None:
    h, _, _, march, _ = family()
    with pytest.raises(UnknownAssessment):
        compare_assessments(h.to_dict(), march, "00000000-0000-4000-8000-000000000000")
