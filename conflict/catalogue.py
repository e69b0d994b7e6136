"""The versioned indicator catalogue and a small evaluator for it.

The catalogue (``catalogue_v<N>.json``, shipped in this package) is data: the
indicators a community worker records in an assessment, the vulnerabilities
derived from the answers, the service kinds, and the services recommended for
each vulnerability. :func:`load_catalogue` reads and validates it;
:func:`derive` evaluates the vulnerability rules against a household
document; :func:`recommended` turns a vulnerability into a dated service plan.

Population (``applies_to``)
---------------------------
Indicators and vulnerabilities apply to ``child`` (a member under 18 on the
evaluation day), ``adult`` (18 or over), ``person`` (any member, whatever the
age; the rule itself narrows it down, e.g. pregnancy) or ``household``.
Only members whose ``presence`` is ``present`` are assessed. Household-level
answers are recorded under the head of household (``relation_to_head ==
"head"``) or, failing that, under any member; the evaluator accepts either.

Rule language
-------------
A vulnerability's ``rule`` is a JSON tree built only from these forms::

    {"answer": CODE, "equals": VALUE}      the answer equals VALUE
    {"answer": CODE, "in": [VALUES]}       the answer is one of VALUES
    {"answer": CODE, "at_least": NUMBER}   the (numeric) answer is >= NUMBER
    {"answer": CODE, "at_most": NUMBER}    the (numeric) answer is <= NUMBER
    {"household_answer": CODE, <one of the four tests above>}
                                           the same, on the household-level answer
    {"all": [RULES]}                       every sub-rule holds (non-empty list)
    {"any": [RULES]}                       some sub-rule holds (non-empty list)
    {"not": RULE}                          the sub-rule does not hold
    {"age_at_least": YEARS}                completed years on the day >= YEARS
    {"age_under": YEARS}                   completed years on the day < YEARS
    {"sex": "F" | "M"}                     the member's recorded sex

In a person rule (``child``/``adult``/``person``), ``answer`` reads the
member's own answer to a person-level indicator and ``household_answer`` reads
a household-level indicator. In a household rule both read household-level
answers, and the age and sex forms are not allowed.

A missing answer (or an unknown age or sex) makes its test false; it never
raises. ``equals`` is type-strict for booleans (``true`` never equals ``1``);
numbers compare numerically (``12`` equals ``12.0``). Beware that ``not`` turns
a missing answer into true, so every shipped rule also requires some answer
that is actually present.

Validation
----------
Loading checks that every code matches :data:`CODE_RE`, that codes are
unique, that rules use only the forms above and refer to known indicators of a
compatible population, that values fit the indicator's type (option codes for
``choice``, booleans for ``bool``, numbers for ``int``), that ``at_least`` and
``at_most`` are used only on ``int`` indicators, that every vulnerability has
at least one recommendation, that recommended services exist and that
``deadline_days`` is within 1..30 (the service plan is due within 30 days of
identification). Failures raise :class:`CatalogueError`, naming codes only.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ANSWER_VALIDITY",
    "APPLIES_TO",
    "CATALOGUE_NAME",
    "CODE_RE",
    "DOMAINS",
    "INDICATOR_TYPES",
    "LATEST_VERSION",
    "MAX_DEADLINE_DAYS",
    "Catalogue",
    "CatalogueError",
    "Derived",
    "Indicator",
    "Label",
    "Option",
    "Recommendation",
    "Service",
    "Standing",
    "Vulnerability",
    "age_on",
    "answer_rule",
    "assessment_order",
    "derive",
    "load_catalogue",
    "load_catalogue_file",
    "recommended",
    "standing_answers",
]

CATALOGUE_NAME = "vatra-indicators"
#: The newest packaged catalogue: what a new assessment records. Older versions stay
#: packaged, so an answer is always checked against the version its assessment used.
LATEST_VERSION = 2
#: The catalogue file format this module reads (the file's ``"schema"`` field).
CATALOGUE_SCHEMA = 1
#: Indicator, vulnerability, option and service codes (same as ``conflict.schema``'s ``code`` format).
CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
INDICATOR_TYPES = frozenset({"bool", "choice", "int", "date", "text"})
DOMAINS = frozenset({"social", "health", "education"})
APPLIES_TO = frozenset({"child", "adult", "person", "household"})
#: A recommended service is due at most this many days after identification.
MAX_DEADLINE_DAYS = 30
ADULT_AGE = 18

_PERSON_POPULATIONS = frozenset({"child", "adult", "person"})
# Which indicator populations a person rule of a given population may read with ``answer``.
_READABLE = {
    "child": frozenset({"child", "person"}),
    "adult": frozenset({"adult", "person"}),
    "person": _PERSON_POPULATIONS,
    "household": frozenset({"household"}),
}
_TESTS = ("equals", "in", "at_least", "at_most")
_SEXES = frozenset({"F", "M"})

#: A rule tree (see the module docstring), frozen: mappings are read-only and lists are tuples.
RuleTree = Mapping[str, Any]


class CatalogueError(ValueError):
    """The catalogue file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Label:
    """A label in Romanian and English."""

    ro: str
    en: str


@dataclass(frozen=True)
class Option:
    """One answer option of a ``choice`` indicator."""

    code: str
    label: Label


@dataclass(frozen=True)
class Indicator:
    """A question recorded in an assessment."""

    code: str
    label: Label
    type: str
    domain: str
    applies_to: str
    options: tuple[Option, ...] = ()
    minimum: int | None = None  # int indicators: the smallest and largest valid answers
    maximum: int | None = None

    @property
    def option_codes(self) -> frozenset[str]:
        """The option codes of a ``choice`` indicator (empty for other types)."""
        return frozenset(o.code for o in self.options)


@dataclass(frozen=True)
class Vulnerability:
    """A vulnerability and the rule that identifies it."""

    code: str
    label: Label
    applies_to: str
    rule: RuleTree


@dataclass(frozen=True)
class Service:
    """A kind of service in a service plan."""

    code: str
    label: Label


@dataclass(frozen=True)
class Recommendation:
    """A service recommended for a vulnerability, due ``deadline_days`` after identification."""

    service: str
    deadline_days: int


@dataclass(frozen=True)
class Catalogue:
    """One validated version of the catalogue. Treat its dictionaries as read-only."""

    version: int
    indicators: dict[str, Indicator]
    vulnerabilities: dict[str, Vulnerability]
    services: dict[str, Service]
    recommendations: dict[str, list[Recommendation]]


@dataclass(frozen=True)
class Derived:
    """A vulnerability identified by :func:`derive`; ``person_id`` is None at household level."""

    vulnerability: str
    person_id: str | None
    assessment_id: str


# --- loading and validation -------------------------------------------------


def load_catalogue(version: int | None = None) -> Catalogue:
    """Load and validate the packaged catalogue ``version`` (cached: one object per version);
    the latest (:data:`LATEST_VERSION`) when not given."""
    if version is None:
        version = LATEST_VERSION
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CatalogueError("catalogue version must be a positive integer")
    return _load_packaged(version)


@functools.cache
def _load_packaged(version: int) -> Catalogue:
    # Cached on the positional version alone, so load_catalogue() and load_catalogue(1) share it.
    resource = resources.files(__package__).joinpath(f"catalogue_v{version}.json")
    if not resource.is_file():
        raise CatalogueError(f"no catalogue version {version}")
    catalogue = _parse(resource.read_text(encoding="utf-8"))
    if catalogue.version != version:
        raise CatalogueError(f"catalogue_v{version}.json declares version {catalogue.version}")
    return catalogue


def load_catalogue_file(path: str | Path) -> Catalogue:
    """Load and validate a catalogue from ``path`` (not cached; for tools and tests)."""
    return _parse(Path(path).read_text(encoding="utf-8"))


def _parse(text: str) -> Catalogue:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise CatalogueError("catalogue is not valid JSON") from None
    root = _mapping(raw, "catalogue")
    if root.get("catalogue") != CATALOGUE_NAME:
        raise CatalogueError(f"not a {CATALOGUE_NAME} catalogue")
    if root.get("schema") != CATALOGUE_SCHEMA:
        raise CatalogueError(f"unsupported catalogue schema (expected {CATALOGUE_SCHEMA})")
    version = root.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CatalogueError("catalogue version must be a positive integer")

    indicators: dict[str, Indicator] = {}
    for item in _list(root.get("indicators"), "indicators"):
        indicator = _indicator(item)
        _unique(indicators, indicator.code, "indicator")
        indicators[indicator.code] = indicator

    vulnerabilities: dict[str, Vulnerability] = {}
    for item in _list(root.get("vulnerabilities"), "vulnerabilities"):
        vulnerability = _vulnerability(item, indicators)
        _unique(vulnerabilities, vulnerability.code, "vulnerability")
        vulnerabilities[vulnerability.code] = vulnerability

    services: dict[str, Service] = {}
    for item in _list(root.get("services"), "services"):
        entry = _mapping(item, "service")
        code = _code(entry.get("code"), "service")
        _unique(services, code, "service")
        services[code] = Service(code, _label(entry.get("label"), f"service {code!r}"))

    recommendations = _recommendations(root.get("recommendations"), vulnerabilities, services)
    return Catalogue(version, indicators, vulnerabilities, services, recommendations)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CatalogueError(f"{what} must be an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise CatalogueError(f"{what} must be a non-empty list")
    return value


def _code(value: object, what: str) -> str:
    if not isinstance(value, str) or CODE_RE.fullmatch(value) is None:
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        raise CatalogueError(f"invalid {what} code {shown}")
    return value


def _unique(seen: Mapping[str, object], code: str, what: str) -> None:
    if code in seen:
        raise CatalogueError(f"duplicate {what} code {code!r}")


def _label(value: object, owner: str) -> Label:
    if not isinstance(value, Mapping):
        raise CatalogueError(f"{owner}: label must be an object with 'ro' and 'en'")
    for lang in ("ro", "en"):
        text = value.get(lang)
        if not isinstance(text, str) or not text.strip():
            raise CatalogueError(f"{owner}: label has no {lang!r} text")
    return Label(value["ro"], value["en"])


def _choose(value: object, allowed: frozenset[str], owner: str, field: str) -> str:
    if value not in allowed:
        raise CatalogueError(f"{owner}: {field} must be one of {sorted(allowed)}")
    return str(value)


def _indicator(item: object) -> Indicator:
    entry = _mapping(item, "indicator")
    code = _code(entry.get("code"), "indicator")
    owner = f"indicator {code!r}"
    label = _label(entry.get("label"), owner)
    type_ = _choose(entry.get("type"), INDICATOR_TYPES, owner, "type")
    domain = _choose(entry.get("domain"), DOMAINS, owner, "domain")
    applies_to = _choose(entry.get("applies_to"), APPLIES_TO, owner, "applies_to")
    options: list[Option] = []
    if type_ == "choice":
        seen: dict[str, Option] = {}
        for raw in _list(entry.get("options"), f"{owner}: options"):
            option = _mapping(raw, f"{owner}: option")
            option_code = _code(option.get("code"), f"{owner} option")
            _unique(seen, option_code, f"{owner} option")
            option_label = _label(option.get("label"), f"{owner} option {option_code!r}")
            seen[option_code] = Option(option_code, option_label)
        options = list(seen.values())
    elif "options" in entry:
        raise CatalogueError(f"{owner}: only choice indicators have options")
    bounds: list[int | None] = []
    for key in ("min", "max"):
        bound = entry.get(key)
        if bound is not None and (type_ != "int" or isinstance(bound, bool)
                                  or not isinstance(bound, int)):
            raise CatalogueError(f"{owner}: {key} is an integer, on int indicators only")
        bounds.append(bound)
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise CatalogueError(f"{owner}: min is above max")
    return Indicator(code, label, type_, domain, applies_to, tuple(options), *bounds)


def _vulnerability(item: object, indicators: Mapping[str, Indicator]) -> Vulnerability:
    entry = _mapping(item, "vulnerability")
    code = _code(entry.get("code"), "vulnerability")
    owner = f"vulnerability {code!r}"
    label = _label(entry.get("label"), owner)
    applies_to = _choose(entry.get("applies_to"), APPLIES_TO, owner, "applies_to")
    rule = _check_rule(entry.get("rule"), indicators, applies_to, owner)
    return Vulnerability(code, label, applies_to, rule)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rule(rule: object, indicators: Mapping[str, Indicator], population: str, owner: str) -> RuleTree:
    """Validate one rule node (recursively) and return it frozen."""
    if not isinstance(rule, Mapping) or not rule:
        raise CatalogueError(f"{owner}: a rule must be a non-empty object")
    keys = set(rule)
    if keys & {"answer", "household_answer"}:
        return _check_test(rule, indicators, population, owner)
    if len(keys) != 1:
        raise CatalogueError(f"{owner}: unknown rule form with keys {sorted(keys)}")
    [(form, arg)] = rule.items()
    if form in ("all", "any"):
        if not isinstance(arg, list) or not arg:
            raise CatalogueError(f"{owner}: {form!r} needs a non-empty list of rules")
        return MappingProxyType({form: tuple(_check_rule(r, indicators, population, owner) for r in arg)})
    if form == "not":
        return MappingProxyType({form: _check_rule(arg, indicators, population, owner)})
    if form in ("age_at_least", "age_under", "sex"):
        if population == "household":
            raise CatalogueError(f"{owner}: {form!r} is not allowed in a household rule")
        if form == "sex":
            if arg not in _SEXES:
                raise CatalogueError(f"{owner}: 'sex' must be one of {sorted(_SEXES)}")
        elif not _is_number(arg) or arg < 0:
            raise CatalogueError(f"{owner}: {form!r} needs a non-negative number")
        return MappingProxyType({form: arg})
    raise CatalogueError(f"{owner}: unknown rule form {form!r}")


def _check_test(rule: Mapping[str, Any], indicators: Mapping[str, Indicator], population: str,
                owner: str) -> RuleTree:
    source = "answer" if "answer" in rule else "household_answer"
    tests = [k for k in rule if k != source]
    if len(tests) != 1 or tests[0] not in _TESTS:
        raise CatalogueError(f"{owner}: {source!r} needs exactly one of {list(_TESTS)}")
    test = tests[0]
    code = rule[source]
    if not isinstance(code, str) or code not in indicators:
        shown = repr(code) if isinstance(code, str) else type(code).__name__
        raise CatalogueError(f"{owner}: rule refers to unknown indicator {shown}")
    indicator = indicators[code]
    readable = _READABLE["household"] if source == "household_answer" else _READABLE[population]
    if indicator.applies_to not in readable:
        raise CatalogueError(
            f"{owner}: {source!r} cannot read {indicator.applies_to} indicator {code!r} "
            f"in a {population} rule"
        )
    arg = rule[test]
    if test in ("at_least", "at_most"):
        if indicator.type != "int":
            raise CatalogueError(f"{owner}: {test!r} on non-numeric indicator {code!r}")
        if not _is_number(arg):
            raise CatalogueError(f"{owner}: {test!r} on indicator {code!r} needs a number")
        return MappingProxyType({source: code, test: arg})
    if test == "in":
        if not isinstance(arg, list) or not arg:
            raise CatalogueError(f"{owner}: 'in' on indicator {code!r} needs a non-empty list")
        values: tuple[Any, ...] = tuple(arg)
    else:
        values = (arg,)
    for value in values:
        _check_value(indicator, value, owner)
    return MappingProxyType({source: code, test: values if test == "in" else arg})


def _check_value(indicator: Indicator, value: object, owner: str) -> None:
    code = indicator.code
    if indicator.type == "bool":
        ok = isinstance(value, bool)
    elif indicator.type == "int":
        ok = _is_number(value)
    elif indicator.type == "choice":
        if not isinstance(value, str) or value not in indicator.option_codes:
            raise CatalogueError(f"{owner}: value is not an option of choice indicator {code!r}")
        ok = True
    else:  # date, text
        ok = isinstance(value, str)
    if not ok:
        raise CatalogueError(f"{owner}: value does not fit {indicator.type} indicator {code!r}")


def answer_rule(indicator: Indicator, value: object) -> str | None:
    """Why ``value`` is not a valid answer to ``indicator``, as a rule name (``type``,
    ``option``, ``range``, ``format``), or None when it is one. Numbers are integers
    (``12.0`` is 12); dates are ``YYYY-MM-DD``."""
    kind = indicator.type
    if kind == "bool":
        return None if isinstance(value, bool) else "type"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "type"
        if isinstance(value, float) and not value.is_integer():
            return "type"
        if ((indicator.minimum is not None and value < indicator.minimum)
                or (indicator.maximum is not None and value > indicator.maximum)):
            return "range"
        return None
    if not isinstance(value, str):
        return "type"
    if kind == "choice":
        return None if value in indicator.option_codes else "option"
    if kind == "date":
        # YYYY-MM-DD only: fromisoformat alone also takes "2024-W01-1" and "20240101"
        if not _DATE.fullmatch(value):
            return "format"
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return "format"
        return None
    return None  # text


def _recommendations(raw: object, vulnerabilities: Mapping[str, Vulnerability],
                     services: Mapping[str, Service]) -> dict[str, list[Recommendation]]:
    table = _mapping(raw, "recommendations")
    for code in table:
        if _code(code, "vulnerability") not in vulnerabilities:
            raise CatalogueError(f"recommendations for unknown vulnerability {code!r}")
    result: dict[str, list[Recommendation]] = {}
    for code in vulnerabilities:
        owner = f"recommendations for {code!r}"
        entries = table.get(code)
        if not isinstance(entries, list) or not entries:
            raise CatalogueError(f"vulnerability {code!r} has no recommendation")
        recs: list[Recommendation] = []
        for item in entries:
            entry = _mapping(item, owner)
            service = _code(entry.get("service"), "service")
            if service not in services:
                raise CatalogueError(f"{owner}: unknown service {service!r}")
            if any(r.service == service for r in recs):
                raise CatalogueError(f"{owner}: service {service!r} listed twice")
            days = entry.get("deadline_days")
            if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DEADLINE_DAYS:
                raise CatalogueError(
                    f"{owner}: deadline_days of {service!r} must be an integer in 1..{MAX_DEADLINE_DAYS}"
                )
            recs.append(Recommendation(service, days))
        result[code] = recs
    return result


# --- evaluation -------------------------------------------------------------


def age_on(birth_date: str, day: datetime.date) -> int:
    """Completed years on ``day`` of someone born on ``birth_date`` (``"YYYY-MM-DD"``).

    Someone born on 29 February turns a year older on 1 March in common years.
    Raises ``ValueError`` (without echoing the date) if ``birth_date`` is not a date.
    """
    try:
        born = datetime.date.fromisoformat(birth_date)
    except (TypeError, ValueError):
        raise ValueError("birth_date is not a YYYY-MM-DD date") from None
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


_MISSING = object()


@dataclass(frozen=True)
class _Subject:
    """What a rule is evaluated against: one member, or the household (no age/sex)."""

    answers: Mapping[str, Any]
    household: Mapping[str, Any]
    age: int | None = None
    sex: str | None = None


def _same(value: object, expected: object) -> bool:
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value is expected
    if _is_number(value) and _is_number(expected):
        return value == expected
    return type(value) is type(expected) and value == expected


def _test(rule: RuleTree, value: object) -> bool:
    if value is _MISSING:
        return False
    if "equals" in rule:
        return _same(value, rule["equals"])
    if "in" in rule:
        return any(_same(value, v) for v in rule["in"])
    if not _is_number(value):
        return False
    if "at_least" in rule:
        return bool(value >= rule["at_least"])
    return bool(value <= rule["at_most"])


def _holds(rule: RuleTree, subject: _Subject) -> bool:
    """Evaluate a validated rule; missing data makes a test false, never an error."""
    if "answer" in rule:
        return _test(rule, subject.answers.get(rule["answer"], _MISSING))
    if "household_answer" in rule:
        return _test(rule, subject.household.get(rule["household_answer"], _MISSING))
    if "all" in rule:
        return all(_holds(r, subject) for r in rule["all"])
    if "any" in rule:
        return any(_holds(r, subject) for r in rule["any"])
    if "not" in rule:
        return not _holds(rule["not"], subject)
    if "age_at_least" in rule:
        return subject.age is not None and bool(subject.age >= rule["age_at_least"])
    if "age_under" in rule:
        return subject.age is not None and bool(subject.age < rule["age_under"])
    if "sex" in rule:
        return bool(subject.sex == rule["sex"])
    raise AssertionError("unreachable: rules are validated on load")


def _as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


ANSWER_VALIDITY = datetime.timedelta(days=365)
"""How long an answer stands: Aurora re-assesses a household every 9 months (case
management every 3), so a year keeps every answer of the last full assessment while the
next one is under way, and drops what nobody has confirmed for over a year."""


def _when(assessment: Mapping[str, Any]) -> str:
    at = assessment.get("completed_at") or assessment.get("started_at")
    return at if isinstance(at, str) else ""


def assessment_order(assessments: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The assessments, oldest first: by completion (else start) time, ties by id."""
    candidates = [(str(aid), a) for aid, a in assessments.items() if isinstance(a, Mapping)]
    return sorted(candidates, key=lambda item: (_when(item[1]), item[0]))


@dataclass(frozen=True)
class Standing:
    """The answers that stand for a household: for every member and indicator, the value
    of the latest assessment that answered it within :data:`ANSWER_VALIDITY` of the
    household's latest assessment with an answer (one started and not yet answered moves
    nothing). A partial re-assessment changes only what it answered."""

    answers: dict[str, dict[str, Any]]  # person id -> indicator -> value
    source: dict[str, str]              # person id -> the latest assessment that counts
    latest: str | None                  # the household's latest assessment
    latest_at: str                      # its time ("" if unknown)


def standing_answers(assessments: Mapping[str, Any]) -> Standing:
    ordered = assessment_order(assessments)
    if not ordered:
        return Standing({}, {}, None, "")
    latest_id, latest = ordered[-1]
    latest_at = _when(latest)
    answered = [a for _, a in ordered if any(
        isinstance(given, Mapping) and given
        for given in _as_mapping(a.get("answers")).values())]
    anchor = _when(answered[-1]) if answered else latest_at
    cutoff = ""
    try:
        cutoff_at = datetime.datetime.fromisoformat(anchor.replace("Z", "+00:00"))
        cutoff = (cutoff_at - ANSWER_VALIDITY).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        pass  # no usable time: every assessment counts, in id order
    answers: dict[str, dict[str, Any]] = {}
    source: dict[str, str] = {}
    for aid, assessment in ordered:
        if cutoff and _when(assessment) < cutoff:
            continue
        for pid, given in _as_mapping(assessment.get("answers")).items():
            if not isinstance(given, Mapping) or not given:
                continue
            answers.setdefault(str(pid), {}).update(given)
            source[str(pid)] = aid
    return Standing(answers, source, latest_id, latest_at)


def _household_answers(answers: Mapping[str, Any], members: Mapping[str, Any],
                       household_codes: frozenset[str]) -> dict[str, Any]:
    """Household-level answers: the head's first, then any other member's (by person id)."""

    def is_head(pid: str) -> bool:
        return _as_mapping(members.get(pid)).get("relation_to_head") == "head"

    merged: dict[str, Any] = {}
    for pid in sorted(answers, key=lambda p: (not is_head(p), str(p))):
        for code, value in _as_mapping(answers[pid]).items():
            if code in household_codes and code not in merged:
                merged[code] = value
    return merged


def _age(member: Mapping[str, Any], on: datetime.date) -> int | None:
    birth_date = member.get("birth_date")
    if not isinstance(birth_date, str):
        return None
    try:
        age = age_on(birth_date, on)
    except ValueError:
        return None
    return age if age >= 0 else None


def _in_population(population: str, age: int | None) -> bool:
    if population == "child":
        return age is not None and age < ADULT_AGE
    if population == "adult":
        return age is not None and age >= ADULT_AGE
    return True


def derive(household: Mapping[str, Any], *, on: datetime.date,
           catalogue: Catalogue | None = None) -> list[Derived]:
    """The vulnerabilities the household's standing answers identify, as of ``on``:
    for every member and indicator, the latest answer within :data:`ANSWER_VALIDITY`
    of the latest assessment (:func:`standing_answers`), so a partial re-assessment
    updates only what it answered. ``Derived.assessment_id`` is the latest assessment
    that answered for the member (the latest one for a household-level finding).

    ``household`` is the plain-dict form of a household document (e.g.
    ``Household.to_dict()``). Only members present in the household are
    assessed; a child is under 18 on ``on``; a member whose birth date is
    unusable is assessed only for ``person`` vulnerabilities, with an unknown
    age. Malformed or missing parts of the document yield nothing rather than
    an error. The result is sorted by vulnerability code, then household-level
    before person-level, then person id.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue()
    standing = standing_answers(_as_mapping(household.get("assessments")))
    if standing.latest is None:
        return []
    answers = standing.answers
    members = _as_mapping(household.get("members"))
    household_codes = frozenset(c for c, i in catalogue.indicators.items() if i.applies_to == "household")
    household_answers = _household_answers(answers, members, household_codes)

    found: list[Derived] = []
    household_subject = _Subject(household_answers, household_answers)
    for code, vulnerability in catalogue.vulnerabilities.items():
        if vulnerability.applies_to == "household" and _holds(vulnerability.rule, household_subject):
            found.append(Derived(code, None, standing.latest))

    for pid, raw_member in members.items():
        member = _as_mapping(raw_member)
        if member.get("presence") != "present":
            continue
        age = _age(member, on)
        sex = member.get("sex")
        subject = _Subject(_as_mapping(answers.get(pid)), household_answers, age,
                           sex if isinstance(sex, str) else None)
        for code, vulnerability in catalogue.vulnerabilities.items():
            population = vulnerability.applies_to
            if population == "household" or not _in_population(population, age):
                continue
            if _holds(vulnerability.rule, subject):
                found.append(Derived(code, str(pid), standing.source.get(str(pid),
                                                                         standing.latest)))

    found.sort(key=lambda d: (d.vulnerability, d.person_id is not None, d.person_id or ""))
    return found


def recommended(vulnerability_code: str, identified_on: datetime.date,
                catalogue: Catalogue | None = None) -> list[tuple[str, datetime.date]]:
    """``(service code, deadline)`` pairs recommended for a vulnerability identified on ``identified_on``.

    In catalogue order (most urgent first by convention). Raises ``KeyError``
    for a vulnerability code the catalogue does not know.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue()
    if vulnerability_code not in catalogue.recommendations:
        raise KeyError(vulnerability_code)
    return [
        (rec.service, identified_on + datetime.timedelta(days=rec.deadline_days))
        for rec in catalogue.recommendations[vulnerability_code]
    ]

