"""Comparing two assessments of one household: what changed between them.

A re-assessment updates only what it answers (:func:`conflict.catalogue.standing_answers`),
so comparing two assessments compares **what stood** after each: the answers of every
assessment up to and including it (within a year of it), and the vulnerabilities the
catalogue derives from them on its day, each with the catalogue version its assessment
records. The result says, per member and for the household:

* ``changed``: indicators whose standing value differs (``before`` / ``after``; None
  where one side has no answer);
* ``gained`` / ``lost``: vulnerabilities identified after the later assessment and not
  after the earlier one, and the reverse.

Pure: the tablet compares offline with the same code the web tier serves
(``GET /v1/web/households/{id}/assessments/compare``). ``household`` is the plain form of
a household (``Household.to_dict()``, or what the read model rebuilds from the
projections: ``members`` and ``assessments``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalogue import assessment_order, derive, load_catalogue, standing_answers

__all__ = ["Comparison", "UnknownAssessment", "compare_assessments"]

HOUSEHOLD = "household"


class UnknownAssessment(KeyError):
    """An assessment id the household does not hold (or one never started)."""


@dataclass(frozen=True)
class Comparison:
    earlier: str
    later: str
    earlier_at: str
    later_at: str
    #: subject (a person id, or "household") -> indicator -> (before, after)
    changed: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)
    #: subject -> vulnerability codes
    gained: dict[str, list[str]] = field(default_factory=dict)
    lost: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        subjects = sorted(set(self.changed) | set(self.gained) | set(self.lost),
                          key=lambda s: (s != HOUSEHOLD, s))
        return {"earlier": self.earlier, "later": self.later, "earlier_at": self.earlier_at,
                "later_at": self.later_at, "subjects": [
                    {"subject": s,
                     "changed": [{"indicator": code, "before": before, "after": after}
                                 for code, (before, after) in sorted(
                                     self.changed.get(s, {}).items())],
                     "gained": self.gained.get(s, []), "lost": self.lost.get(s, [])}
                    for s in subjects]}


def _day(at: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(at[:10])
    except ValueError:
        return None


def _as_of(household: Mapping[str, Any], upto: list[tuple[str, Mapping[str, Any]]],
           assessment: Mapping[str, Any], at: str) -> tuple[dict[str, dict[str, Any]],
                                                            dict[str, set[str]]]:
    """What stood after the last of ``upto``: answers per person, vulnerabilities per
    subject, derived with the catalogue version that assessment records."""
    assessments = dict(upto)
    standing = standing_answers(assessments)
    version = assessment.get("catalogue_version")
    catalogue = load_catalogue(version if isinstance(version, int) else 1)
    found: dict[str, set[str]] = {}
    on = _day(at)
    if on is not None:
        for d in derive({**household, "assessments": assessments}, on=on,
                        catalogue=catalogue):
            found.setdefault(d.person_id or HOUSEHOLD, set()).add(d.vulnerability)
    return standing.answers, found


def compare_assessments(household: Mapping[str, Any], first: str, second: str) -> Comparison:
    """Compare two assessments of ``household`` (in either order: the earlier is the one
    :func:`conflict.catalogue.assessment_order` puts first). Raises
    :class:`UnknownAssessment` for an id it does not hold."""
    raw = household.get("assessments")
    ordered = assessment_order(raw if isinstance(raw, Mapping) else {})
    position = {aid: i for i, (aid, _) in enumerate(ordered)}
    for aid in (first, second):
        if aid not in position:
            raise UnknownAssessment(aid)
    a, b = sorted((first, second), key=position.__getitem__)
    sides = []
    for aid in (a, b):
        assessment = ordered[position[aid]][1]
        at = assessment.get("completed_at") or assessment.get("started_at")
        at = at if isinstance(at, str) else ""
        sides.append((at, *_as_of(household, ordered[:position[aid] + 1], assessment, at)))
    (a_at, a_answers, a_found), (b_at, b_answers, b_found) = sides
    changed: dict[str, dict[str, tuple[Any, Any]]] = {}
    for pid in set(a_answers) | set(b_answers):
        before, after = a_answers.get(pid, {}), b_answers.get(pid, {})
        diff = {code: (before.get(code), after.get(code)) for code in set(before) | set(after)
                if before.get(code) != after.get(code)}
        if diff:
            changed[pid] = diff
    gained = {s: sorted(b_found.get(s, set()) - a_found.get(s, set()))
              for s in set(b_found) if b_found.get(s, set()) - a_found.get(s, set())}
    lost = {s: sorted(a_found.get(s, set()) - b_found.get(s, set()))
            for s in set(a_found) if a_found.get(s, set()) - b_found.get(s, set())}
    return Comparison(a, b, a_at, b_at, changed, gained, lost)
