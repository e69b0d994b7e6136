"""Answers and services against the indicator catalogue.

A household's answers are checked against the catalogue version their assessment
records (``catalogue_version``; absent, version 1): an indicator the version does not
define, a value of the wrong type, outside a choice's options or an integer's range
are refused, as is a service or vulnerability code no catalogue version defines. The
SDK applies the same rules before an edit (:meth:`conflict.Household.record_answers`,
:meth:`~conflict.Household.plan_service`); the server applies them to every batch
(``sync_server/sync/checks.py``), to what the batch writes only: an answer stored
before a rule existed is not re-judged.

Rules (``Violation.rule``): ``unknown-indicator``, ``type``, ``option``, ``range``,
``format`` (a date), ``catalogue-version``, ``unknown-service``,
``unknown-vulnerability``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from automerge.core import ROOT, Document, ObjType

from .catalogue import LATEST_VERSION, Catalogue, CatalogueError, answer_rule, load_catalogue
from .validate import Path, Violation, format_path

__all__ = ["answer_violation", "catalogue_for", "catalogue_violations", "known_indicators",
           "known_services", "known_vulnerabilities"]

_DESCRIBE = {
    "unknown-indicator": "not an indicator of the assessment's catalogue version",
    "type": "not a value of the indicator's type",
    "option": "not one of the indicator's options",
    "range": "outside the indicator's range",
    "format": "not a date (YYYY-MM-DD)",
    "catalogue-version": "not a catalogue version this server knows",
    "unknown-service": "not a service of the catalogue",
    "unknown-vulnerability": "not a vulnerability of the catalogue",
}


def _violation(path: Path, rule: str) -> Violation:
    return Violation(path, rule, f"{format_path(path)}: {rule}: {_DESCRIBE[rule]}")


@functools.cache
def catalogue_for(version: int) -> Catalogue | None:
    """The packaged catalogue ``version``, or None if there is no such version."""
    try:
        return load_catalogue(version)
    except CatalogueError:
        return None


@functools.cache
def known_services() -> frozenset[str]:
    """Service codes of every packaged catalogue version."""
    return frozenset(code for v in range(1, LATEST_VERSION + 1)
                     if (c := catalogue_for(v)) is not None for code in c.services)


@functools.cache
def known_indicators() -> frozenset[str]:
    return frozenset(code for v in range(1, LATEST_VERSION + 1)
                     if (c := catalogue_for(v)) is not None for code in c.indicators)


@functools.cache
def known_vulnerabilities() -> frozenset[str]:
    return frozenset(code for v in range(1, LATEST_VERSION + 1)
                     if (c := catalogue_for(v)) is not None for code in c.vulnerabilities)


def answer_violation(catalogue: Catalogue, path: Path, code: str, value: object
                     ) -> Violation | None:
    """The violation of one answer ``code = value`` at ``path``, or None."""
    indicator = catalogue.indicators.get(code)
    if indicator is None:
        return _violation(path, "unknown-indicator")
    rule = answer_rule(indicator, value)
    return None if rule is None else _violation(path, rule)


def _obj(doc: Document | None, parent: Any | None, key: str) -> Any | None:
    """The map at ``parent[key]``; None when absent, not a map, or no document."""
    got = doc.get(parent, key) if doc is not None and parent is not None else None
    return got[1] if got is not None and got[0] == ObjType.Map else None


def _scalar(doc: Document | None, parent: Any | None, key: str) -> tuple[bool, Any]:
    """(present, value) of the scalar at ``parent[key]``."""
    got = doc.get(parent, key) if doc is not None and parent is not None else None
    if got is None or isinstance(got[0], ObjType):
        return False, None
    return True, got[0][1]


def _same(a: tuple[bool, Any], b: tuple[bool, Any]) -> bool:
    """Equal, with booleans and numbers told apart (True is not 1)."""
    return a == b and type(a[1]) is type(b[1])


def catalogue_violations(before: Document | None, after: Document,
                         sections: Collection[str] | None = None) -> list[Violation]:
    """What ``after`` writes since ``before`` (None: everything is new) that the catalogue
    does not allow: answers of the ``assessments`` and codes of the ``service_plan``.
    ``sections``: the sections the batch touched (None: both)."""
    out: list[Violation] = []
    if sections is None or "assessments" in sections:
        out += _answers(before, after)
    if sections is None or "service_plan" in sections:
        out += _services(before, after)
    return out


def _answers(before: Document | None, after: Document) -> list[Violation]:
    out: list[Violation] = []
    assessments = _obj(after, ROOT, "assessments")
    if assessments is None:
        return out
    old_assessments = _obj(before, ROOT, "assessments")
    for aid in after.keys(assessments):
        a = _obj(after, assessments, aid)
        if a is None:
            continue  # the schema says what is wrong
        old = _obj(before, old_assessments, aid)
        has_version, version = _scalar(after, a, "catalogue_version")
        version_path: Path = ("assessments", aid, "catalogue_version")
        if not has_version:
            version = 1
        elif isinstance(version, bool) or not isinstance(version, int):
            continue  # a type error: the schema reports it
        catalogue = catalogue_for(version)
        if catalogue is None:
            if not _same(_scalar(before, old, "catalogue_version"), (has_version, version)):
                out.append(_violation(version_path, "catalogue-version"))
            continue
        answers = _obj(after, a, "answers")
        if answers is None:
            continue
        old_answers = _obj(before, old, "answers")
        for pid in after.keys(answers):
            given = _obj(after, answers, pid)
            if given is None:
                continue
            old_given = _obj(before, old_answers, pid)
            for code in after.keys(given):
                value = _scalar(after, given, code)
                if _same(_scalar(before, old_given, code), value):
                    continue  # written before this batch
                if not value[0]:
                    continue  # an object: the schema reports it
                found = answer_violation(catalogue, ("assessments", aid, "answers", pid, code),
                                         code, value[1])
                if found is not None:
                    out.append(found)
    return out


def _services(before: Document | None, after: Document) -> list[Violation]:
    out: list[Violation] = []
    plan = _obj(after, ROOT, "service_plan")
    if plan is None:
        return out
    old_plan = _obj(before, ROOT, "service_plan")
    for sid in after.keys(plan):
        service = _obj(after, plan, sid)
        if service is None:
            continue
        old = _obj(before, old_plan, sid)
        for field, known, rule in (("code", known_services(), "unknown-service"),
                                   ("vulnerability", known_vulnerabilities(),
                                    "unknown-vulnerability")):
            value = _scalar(after, service, field)
            if _same(_scalar(before, old, field), value):
                continue
            if value[0] and isinstance(value[1], str) and value[1] not in known:
                out.append(_violation(("service_plan", sid, field), rule))
    return out
