"""Case management: stages, their legal moves and the deadlines the method sets, as data.

Every case goes through the six stages of Romania's minimum standards for case
management (Order 288/2006), then closes. The household document records where the case
is and how it got there (``conflict.schema``: the root ``case`` record and the
``case_history`` list); what is legal and when things are due is a **versioned rule
table**, ``conflict/case_rules_v1.json`` (and its successors), like the indicator catalogue: a case records
the version it follows (``case.rules_version``), so a later table never re-judges it.

The rule table holds:

* ``stages``: the seven stage codes (those of :data:`conflict.schema.CASE_STAGES`, in
  order) with their Romanian and English labels;
* ``transitions``: stage -> the stages a worker may move the case to. ``closed`` is in
  none of them: a case closes, and reopens, only by a supervisor's approval of a
  ``close_household`` / ``reopen_household`` request, which the server applies
  (``reopened_stage`` says where a reopened case starts again);
* ``deadlines``: each one ``from`` an anchor plus a duration (``hours``, ``days``,
  ``months``; ``emergency_hours`` for a case opened as an emergency;
  ``months_by_model`` for the re-assessment interval, 3 months in case management and 9
  in the Aurora model), ``met_by`` another anchor (none: it stays open until its
  anchor moves, as a periodic re-assessment does), shown ``in_stages`` only when
  given, and of ``kind`` ``deadline`` (the default) or ``minimum`` (a period that must
  have passed, as post-service monitoring's three months before closure).

Anchors are read from the document (:func:`anchors`): ``identified`` (the referral that
opened the case), ``first_assessment`` and ``last_assessment`` (completed assessments),
``initial_report`` (the initial assessment reported to the superior),
``entered:<stage>`` and ``last_entered:<stage>`` (the first and the latest time the case
entered a stage) and
``next_visit_planned`` (the next visit the latest visit report planned; a date counts
from its day's start in UTC, so the next-visit deadline of one day falls at the day's end
in UTC, 02:00 or 03:00 in Romania).

Everything here is pure: the tablet computes a household's deadlines offline with the
same code the server and the web tier use.
"""

from __future__ import annotations

import calendar
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from automerge.core import ROOT, Document, ObjType

from . import schema as s
from .paths import element_id
from .validate import Violation, format_path

__all__ = [
    "LATEST_VERSION",
    "RULES_NAME",
    "CaseRules",
    "CaseRulesError",
    "Deadline",
    "DeadlineRule",
    "Due",
    "anchors",
    "case_violations",
    "deadlines",
    "dues",
    "load_rules",
    "load_rules_file",
    "overtaken_stage",
    "view",
]

RULES_NAME = "vatra-case-rules"
#: The newest packaged rule table: what a newly opened case records.
LATEST_VERSION = 1
#: The rule-table file format this module reads (the file's ``"schema"`` field).
RULES_SCHEMA = 1
ANCHORS = ("identified", "first_assessment", "last_assessment", "initial_report",
           "next_visit_planned")
KINDS = ("deadline", "minimum")

#: Rule names of the case checks (the server refuses with ``stage-transition``).
STAGE_TRANSITION = "stage-transition"
CASE_RECORD = "case-record"
CLOSED_BY_REQUEST = "protected-path"


class CaseRulesError(ValueError):
    """A rule table that does not load: names what is wrong, never guesses."""


@dataclass(frozen=True)
class DeadlineRule:
    code: str
    label: Mapping[str, str]
    start: str  # an anchor
    hours: int = 0
    days: int = 0
    months: int = 0
    emergency_hours: int | None = None
    months_by_model: Mapping[str, int] | None = None
    met_by: str | None = None
    in_stages: tuple[str, ...] | None = None
    kind: str = "deadline"


@dataclass(frozen=True)
class CaseRules:
    version: int
    initial_stage: str
    reopened_stage: str
    labels: Mapping[str, Mapping[str, str]]
    transitions: Mapping[str, tuple[str, ...]]
    deadlines: tuple[DeadlineRule, ...]

    def may_move(self, from_stage: str, to_stage: str) -> bool:
        """May a worker move a case from ``from_stage`` to ``to_stage``?"""
        return to_stage in self.transitions.get(from_stage, ())


@dataclass(frozen=True)
class Deadline:
    """One deadline of a case, as of ``now``.

    ``state``: ``met`` (done by ``due``), ``met_late``, ``open`` (not done, not yet due),
    ``overdue``; for a ``minimum`` period, ``running`` or ``complete``."""

    code: str
    kind: str
    due: datetime
    state: str
    met_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "kind": self.kind, "due": _instant(self.due),
                "state": self.state,
                "met_at": _instant(self.met_at) if self.met_at is not None else None}


# --- loading -----------------------------------------------------------------


def load_rules(version: int | None = None) -> CaseRules:
    """The packaged rule table ``version`` (the latest when not given), validated, cached."""
    if version is None:
        version = LATEST_VERSION
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CaseRulesError("rule table version must be a positive integer")
    return _load_packaged(version)


@functools.cache
def _load_packaged(version: int) -> CaseRules:
    resource = resources.files(__package__).joinpath(f"case_rules_v{version}.json")
    if not resource.is_file():
        raise CaseRulesError(f"no case rule table version {version}")
    rules = _parse(resource.read_text(encoding="utf-8"))
    if rules.version != version:
        raise CaseRulesError(f"case_rules_v{version}.json declares version {rules.version}")
    return rules


def load_rules_file(path: str | Path) -> CaseRules:
    """Load and validate a rule table from ``path`` (not cached; for tools and tests)."""
    return _parse(Path(path).read_text(encoding="utf-8"))


def _parse(text: str) -> CaseRules:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise CaseRulesError("the rule table is not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("rules") != RULES_NAME:
        raise CaseRulesError(f"not a {RULES_NAME} table")
    if raw.get("schema") != RULES_SCHEMA:
        raise CaseRulesError(f"unsupported rule table schema (expected {RULES_SCHEMA})")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CaseRulesError("rule table version must be a positive integer")
    stages = raw.get("stages")
    if not isinstance(stages, list) or [st.get("code") if isinstance(st, dict) else None
                                        for st in stages] != list(s.CASE_STAGES):
        raise CaseRulesError(f"stages must be, in order: {', '.join(s.CASE_STAGES)}")
    labels = {st["code"]: _label(st.get("label"), f"stage {st['code']}") for st in stages}
    transitions = raw.get("transitions")
    if not isinstance(transitions, dict) or set(transitions) != set(s.CASE_STAGES):
        raise CaseRulesError("transitions must name every stage once")
    moves: dict[str, tuple[str, ...]] = {}
    for stage, targets in transitions.items():
        if not isinstance(targets, list) or any(t not in s.CASE_STAGES for t in targets):
            raise CaseRulesError(f"transitions of {stage}: a list of stages")
        if "closed" in targets or stage in targets:
            raise CaseRulesError(f"transitions of {stage}: a case closes only by an approved "
                                 f"request, and a move changes the stage")
        moves[stage] = tuple(targets)
    if moves["closed"]:
        raise CaseRulesError("a closed case reopens only by an approved request")
    first, reopened = raw.get("initial_stage"), raw.get("reopened_stage")
    for name, value in (("initial_stage", first), ("reopened_stage", reopened)):
        if value not in s.CASE_STAGES or value == "closed":
            raise CaseRulesError(f"{name} must be a stage other than closed")
    deadlines = raw.get("deadlines")
    if not isinstance(deadlines, list):
        raise CaseRulesError("deadlines must be a list")
    parsed = tuple(_deadline(d) for d in deadlines)
    if len({d.code for d in parsed}) != len(parsed):
        raise CaseRulesError("deadline codes must be unique")
    return CaseRules(version, str(first), str(reopened), labels, moves, parsed)


def _label(value: object, owner: str) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value[k]
                                              for k in ("ro", "en")):
        raise CaseRulesError(f"{owner}: a label needs non-empty ro and en")
    return {"ro": value["ro"], "en": value["en"]}


def _anchor(value: object, owner: str) -> str:
    if value in ANCHORS:
        return str(value)
    if isinstance(value, str) and value.split(":", 1)[0] in ("entered", "last_entered") \
            and value.split(":", 1)[-1] in s.CASE_STAGES:
        return value
    raise CaseRulesError(f"{owner}: unknown anchor {value!r}")


def _count(value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CaseRulesError(f"{owner}: a duration is a non-negative integer")
    return value


def _deadline(raw: object) -> DeadlineRule:
    if not isinstance(raw, dict) or not isinstance(raw.get("code"), str):
        raise CaseRulesError("a deadline needs a code")
    code = raw["code"]
    known = {"code", "label", "from", "hours", "days", "months", "emergency_hours",
             "months_by_model", "met_by", "in_stages", "kind"}
    if set(raw) - known:
        raise CaseRulesError(f"deadline {code}: unknown field(s) {sorted(set(raw) - known)}")
    by_model = raw.get("months_by_model")
    if by_model is not None and (not isinstance(by_model, dict)
                                 or set(by_model) != set(s.CASE_MODELS)):
        raise CaseRulesError(f"deadline {code}: months_by_model names every model: "
                             f"{', '.join(s.CASE_MODELS)}")
    stages = raw.get("in_stages")
    if stages is not None and (not isinstance(stages, list)
                               or any(st not in s.CASE_STAGES for st in stages)):
        raise CaseRulesError(f"deadline {code}: in_stages is a list of stages")
    kind = raw.get("kind", "deadline")
    if kind not in KINDS:
        raise CaseRulesError(f"deadline {code}: kind is one of {', '.join(KINDS)}")
    durations = [raw.get(k) for k in ("hours", "days", "months")]
    if by_model is None and all(d is None for d in durations):
        raise CaseRulesError(f"deadline {code}: a duration (hours, days, months or "
                             f"months_by_model)")
    emergency = raw.get("emergency_hours")
    return DeadlineRule(
        code=code, label=_label(raw.get("label"), f"deadline {code}"),
        start=_anchor(raw.get("from"), f"deadline {code}"),
        hours=_count(raw.get("hours", 0), code), days=_count(raw.get("days", 0), code),
        months=_count(raw.get("months", 0), code),
        emergency_hours=None if emergency is None else _count(emergency, code),
        months_by_model=None if by_model is None else
        {m: _count(n, code) for m, n in by_model.items()},
        met_by=None if raw.get("met_by") is None else _anchor(raw["met_by"], code),
        in_stages=None if stages is None else tuple(stages), kind=kind)


# --- reading a case from a document ------------------------------------------


def _plain(doc: Document, obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in doc.keys(obj):
        got = doc.get(obj, key)
        if got is not None and isinstance(got[0], tuple):
            out[key] = got[0][1]
    return out


def _section(doc: Document, key: str, kind: ObjType) -> Any | None:
    got = doc.get(ROOT, key)
    return got[1] if got is not None and got[0] == kind else None


def case_record(doc: Document) -> dict[str, Any] | None:
    """The ``case`` record's scalar fields, or None if no case is open (the section is
    made empty at registration; a case is open once it has a stage)."""
    obj = _section(doc, "case", ObjType.Map)
    record = None if obj is None else _plain(doc, obj)
    return record if record and "stage" in record else None


def history(doc: Document) -> list[tuple[str, dict[str, Any]]]:
    """``case_history`` entries in list order: (element id, fields)."""
    obj = _section(doc, "case_history", ObjType.List)
    if obj is None:
        return []
    out = []
    for value, exid in doc.values(obj):
        if isinstance(value, ObjType) and value == ObjType.Map:
            out.append((element_id(exid) or "", _plain(doc, exid)))
    return out


def _parse_instant(value: object) -> datetime | None:
    if isinstance(value, str) and s.FORMATS["instant"](value):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if isinstance(value, str) and s.FORMATS["date"](value):
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    return None


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def view(doc: Document) -> dict[str, Any]:
    """The parts of a household the deadlines read, as plain values (the shape of
    ``Household.to_dict()``, which :func:`dues` also takes): read without extracting the
    whole document."""
    out: dict[str, Any] = {"case": case_record(doc) or {},
                           "case_history": [entry for _, entry in history(doc)]}
    for section, fields in (("assessments", ("completed_at",)),
                            ("visits", ("visited_on", "next_visit", "recorded_at"))):
        obj = _section(doc, section, ObjType.Map)
        entries: dict[str, Any] = {}
        for key in doc.keys(obj) if obj is not None else ():
            got = doc.get(obj, key) if obj is not None else None
            if got is not None and got[0] == ObjType.Map:
                plain = _plain(doc, got[1])
                entries[key] = {f: plain[f] for f in fields if f in plain}
        out[section] = entries
    return out


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def anchors(household: Mapping[str, Any]) -> dict[str, datetime]:
    """The anchors a household's deadlines are counted from (module docstring), from its
    plain values (``Household.to_dict()`` or :func:`view`)."""
    out: dict[str, datetime] = {}
    case = _map(household.get("case"))
    for name, field in (("identified", "identified_at"), ("initial_report", "initial_report_at")):
        at = _parse_instant(case.get(field))
        if at is not None:
            out[name] = at
    done = [at for a in _map(household.get("assessments")).values()
            if (at := _parse_instant(_map(a).get("completed_at"))) is not None]
    if done:
        out["first_assessment"], out["last_assessment"] = min(done), max(done)
    entries = household.get("case_history")
    for entry in entries if isinstance(entries, list) else ():
        entry = _map(entry)
        at = _parse_instant(entry.get("entered_at"))
        first, last = f"entered:{entry.get('stage')}", f"last_entered:{entry.get('stage')}"
        if at is not None and (first not in out or at < out[first]):
            out[first] = at
        if at is not None and (last not in out or at > out[last]):
            out[last] = at
    # the latest visit report: by its day, then by when it was written (two on one day)
    latest: tuple[datetime, str, datetime | None] | None = None
    for v in _map(household.get("visits")).values():
        on, written = _parse_instant(_map(v).get("visited_on")), _map(v).get("recorded_at")
        key = (on, written if isinstance(written, str) else "")
        if on is not None and (latest is None or key > latest[:2]):
            latest = (on, key[1], _parse_instant(_map(v).get("next_visit")))
    if latest is not None and latest[2] is not None:
        out["next_visit_planned"] = latest[2]
    return out


def _add_months(at: datetime, months: int) -> datetime:
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])  # 31 Aug + 3 months: 30 Nov
    return at.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class Due:
    """One deadline of a case, whatever the date: when it falls due, and when it was met
    (None: not yet, or never, for a period or a recurring one). What the projection
    keeps; whether it is overdue is for the reader's clock (:meth:`state`)."""

    code: str
    kind: str
    due: datetime
    met_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.kind == "minimum":
            return "complete" if now >= self.due else "running"
        if self.met_at is not None:
            return "met" if self.met_at <= self.due else "met_late"
        return "overdue" if now > self.due else "open"


def dues(household: Mapping[str, Any], rules: CaseRules | None = None) -> list[Due]:
    """A case's deadlines, in the rule table's order, from the table the case records
    (``rules``: another one, for tests); none without an open case. A closed case keeps
    only what was met and its minimum periods."""
    case = _map(household.get("case"))
    stage = case.get("stage")
    if stage is None:
        return []
    if rules is None:
        version = case.get("rules_version")
        rules = load_rules(version if isinstance(version, int) else None)
    found = anchors(household)
    out = []
    for rule in rules.deadlines:
        if rule.in_stages is not None and stage not in rule.in_stages and stage != "closed":
            continue
        start = found.get(rule.start)
        if start is None:
            continue
        hours = rule.emergency_hours if case.get("emergency") is True \
            and rule.emergency_hours is not None else rule.hours
        months = rule.months
        if rule.months_by_model is not None:
            months += rule.months_by_model.get(str(case.get("model")), 0)
        due = _add_months(start, months) + timedelta(days=rule.days, hours=hours)
        met = found.get(rule.met_by) if rule.met_by is not None else None
        if stage == "closed" and met is None and rule.kind != "minimum":
            continue
        out.append(Due(rule.code, rule.kind, due, met))
    return out


def deadlines(household: Document | Mapping[str, Any], now: datetime | None = None,
              rules: CaseRules | None = None) -> list[Deadline]:
    """The case's deadlines as of ``now`` (UTC; default: the clock): :func:`dues`, each
    with its state."""
    plain = view(household) if isinstance(household, Document) else household
    now = now if now is not None else datetime.now(UTC)
    if now.tzinfo is None:  # a naive time is UTC, as everywhere in the household model
        now = now.replace(tzinfo=UTC)
    return [Deadline(d.code, d.kind, d.due, d.state(now), d.met_at) for d in dues(plain, rules)]


# --- the server's check of a device's batch ----------------------------------


def _violation(path: tuple[str | int, ...], rule: str, why: str) -> Violation:
    return Violation(path, rule, f"{format_path(path)}: {rule}: {why}")


#: At most this many stage moves in one batch: an honest tablet moves a case a few stages
#: between two syncs; checking a move reads the case's history, so a batch of thousands
#: of moves would cost the server seconds (a review measured 25 s for 500).
MAX_MOVES_PER_BATCH = 20


def _record_at(doc: Document, heads: list[bytes]) -> dict[str, Any] | None:
    """The ``case`` record at ``heads`` (None: no case open there)."""
    got = doc.get(ROOT, "case", heads)
    if got is None or got[0] != ObjType.Map:
        return None
    record: dict[str, Any] = {}
    for key in doc.keys(got[1], heads):
        value = doc.get(got[1], key, heads)
        if value is not None and isinstance(value[0], tuple):
            record[key] = value[0][1]
    return record if "stage" in record else None


def _entry_ids_at(doc: Document, heads: list[bytes]) -> list[tuple[str, Any]]:
    """``case_history`` element ids at ``heads`` with their objects, in list order (the
    ids alone: cheap; an entry's fields are read only for the ones a change adds)."""
    got = doc.get(ROOT, "case_history", heads)
    if got is None or got[0] != ObjType.List:
        return []
    return [(element_id(exid) or "", exid) for value, exid in doc.values(got[1], heads)
            if isinstance(value, ObjType) and value == ObjType.Map]


def _fields_at(doc: Document, obj: Any, heads: list[bytes]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key in doc.keys(obj, heads):
        v = doc.get(obj, key, heads)
        if v is not None and isinstance(v[0], tuple):
            entry[key] = v[0][1]
    return entry


def case_violations(before: Document, after: Document) -> list[Violation]:
    """What a device's batch (``after``'s changes that ``before`` lacks) may not do to a
    case; the server's own changes, which apply approved requests, are not checked.

    Each change of the batch is judged against the document **at its own dependencies**:
    a tablet offline for a week may move a case several stages in one batch, each move
    judged from the stage it left. (A client chooses its changes' dependencies, so this
    alone does not stop a move built on an old state; :func:`overtaken_stage` does: the
    stage the server has accepted stands against any move concurrent with it.) Refused:

    * a ``case_history`` entry whose ``from`` is not the stage the case was in (or the
      stage the change's previous entry entered), a move the case's rule table does not
      allow, an opening entry (no ``from``) on a case already open or at another stage
      than the table's ``initial_stage``, a stage written that the change's last entry
      does not enter, or more than :data:`MAX_MOVES_PER_BATCH` moves
      (``stage-transition``);
    * any entry to or from ``closed``, or any on a closed case (``protected-path``: a
      case closes and reopens only by an approved request);
    * removing an open case, or changing its rule version, its identification time or an
      entry of its history (``case-record``).
    """
    out: list[Violation] = []
    old_entries = dict(history(before))
    now_entries = dict(history(after))
    for ident, entry in old_entries.items():
        if now_entries.get(ident) != entry:
            out.append(_violation(("case_history", ident), CASE_RECORD,
                                  "a stage once entered stays recorded as it was"))
    if len(now_entries) - len(old_entries) > MAX_MOVES_PER_BATCH:
        return [*out, _violation(("case_history",), STAGE_TRANSITION,
                                 f"at most {MAX_MOVES_PER_BATCH} moves in one batch")]
    for change in after.get_changes(before.get_heads()):
        pre, post = list(change.deps), [change.hash]
        was, now = _record_at(after, pre), _record_at(after, post)
        old_ids = {ident for ident, _ in _entry_ids_at(after, pre)}
        added = [(ident, _fields_at(after, obj, post))
                 for ident, obj in _entry_ids_at(after, post) if ident not in old_ids]
        if now is None:
            if was is not None:
                out.append(_violation(("case",), CASE_RECORD, "a case is never removed"))
            elif added:
                out.append(_violation(("case_history", added[0][0]), STAGE_TRANSITION,
                                      "a stage is recorded for an open case only"))
            continue
        version = now.get("rules_version")
        try:
            rules = load_rules(version if isinstance(version, int) else None)
        except CaseRulesError:
            out.append(_violation(("case", "rules_version"), CASE_RECORD,
                                  "a case follows a packaged rule table"))
            continue
        missing = [f for f in ("model", "rules_version", "identified_at") if f not in now]
        if missing:
            out.append(_violation(("case", missing[0]), CASE_RECORD,
                                  "an open case has its model, rule version and identification"))
        if was is not None:
            for field in ("rules_version", "identified_at"):
                if was.get(field) != now.get(field):
                    out.append(_violation(("case", field), CASE_RECORD,
                                          "fixed when the case is opened"))
        expected = None if was is None else was.get("stage")
        for ident, entry in added:
            path: tuple[str | int, ...] = ("case_history", ident)
            frm, to = entry.get("from"), entry.get("stage")
            if "closed" in (frm, to, expected):
                out.append(_violation(path, CLOSED_BY_REQUEST,
                                      "a case closes and reopens only by an approved "
                                      "close_household or reopen_household request"))
            elif frm is None:
                if expected is not None or to != rules.initial_stage:
                    out.append(_violation(path, STAGE_TRANSITION,
                                          f"a case is opened once, at {rules.initial_stage}"))
            elif frm != expected:
                out.append(_violation(path, STAGE_TRANSITION,
                                      "a move starts from the stage the case was in"))
            elif not isinstance(to, str) or not rules.may_move(frm, to):
                out.append(_violation(path, STAGE_TRANSITION,
                                      f"not a move rule table {rules.version} allows"))
            expected = to
        stage = now.get("stage")
        if (added and stage != expected) or \
                (not added and stage != (None if was is None else was.get("stage"))):
            out.append(_violation(("case", "stage"), STAGE_TRANSITION,
                                  "a move records the stage it enters in the case's history"))
    return list({(v.path, v.rule): v for v in out}.values())


def overtaken_stage(before: Document, after: Document) -> str | None:
    """The stage to write back after a device's batch, or None: when the batch moved the
    case with a change that does not descend from every move the server had accepted
    (a teammate's move made meanwhile, an approved closing, or a change a modified
    client built on an old state), the stage the server had accepted stands. The
    batch's moves stay in the history, and the server records the stage both wrote as a
    same-field conflict for the team."""
    was, now = case_record(before), case_record(after)
    if was is None or now is None or now.get("stage") == was.get("stage"):
        return None
    accepted = {ident for ident, _ in history(before)}
    for change in after.get_changes(before.get_heads()):
        pre_stage = (_record_at(after, list(change.deps)) or {}).get("stage")
        post_stage = (_record_at(after, [change.hash]) or {}).get("stage")
        if pre_stage == post_stage:
            continue
        seen = {ident for ident, _ in _entry_ids_at(after, [change.hash])}
        if not accepted <= seen:
            stage = was.get("stage")
            return stage if isinstance(stage, str) else None
    return None


def stage_entered(doc: Document) -> dict[str, str]:
    """Stage -> when the case last entered it (an instant), from its history."""
    out: dict[str, str] = {}
    for _, entry in history(doc):
        st, at = entry.get("stage"), entry.get("entered_at")
        if isinstance(st, str) and isinstance(at, str) and at >= out.get(st, ""):
            out[st] = at
    return out


def sections() -> Sequence[str]:
    """The root sections a case lives in (a batch touching neither cannot break a rule)."""
    return ("case", "case_history")
