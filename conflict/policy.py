"""The permission and merge policy of a household, as data.

One source read by the client SDK (to stop an honest client before it edits,
see :class:`conflict.household.Household`) and by the sync server (to enforce
against any client). Three parts:

**Protected structure.** While a household's ``status`` is ``registration``
nothing is protected: a worker registers the household freely. Under any
other status (``active``, and ``closed``, which only an active household
reaches through a request) the paths in :data:`PROTECTIONS` change only
through an approved change request, which the server applies as its own
change:

==========================  =======  =======================================
path                        compare  request kind(s) that change it
==========================  =======  =======================================
``members`` (its key set)   keys     ``add_member``, ``remove_member``
``members.<id>.presence``   value    ``change_presence``
``team.<role>``             value    ``change_team``
``status``                  value    ``close_household``, ``reopen_household``
``locality``, ``county``    value    ``move_household`` (in every status)
==========================  =======  =======================================

A household's place (:data:`PLACE_FIELDS`) is protected from creation on, in
every status and against every role, supervisors included: the server keeps
the registry's copy of it (what access, approvals and the projections read) in
step with the document, which only the server's own change applying an
approved ``move_household`` can do (:func:`place_violations`).

Every status change of a protected household is protected, not only
``active -> closed`` and ``closed -> active``: ``active -> registration``
would otherwise lift the protection itself. :data:`STATUS_REQUESTS` says
which transition a request kind performs.

**Decision fields.** ``status``, ``decided_by``, ``decided_at`` and
``decision_note`` of ``change_requests.<id>`` are written only by a role in
:data:`DECIDER_ROLES` (supervisors) of the household's county; a new request
is filed ``pending`` with none of the others. The rest of a request (kind,
payload, reason, requester, time) is immutable once filed, and a filed
request is never deleted.

**Service status lattice.** :data:`SERVICE_STATUS_RANK`: ``planned <
in_progress < cancelled < delivered``. A status never moves down, so a
concurrent ``in_progress`` never undoes ``delivered``. ``cancelled`` is
written only by a supervisor of the county; it sits below ``delivered``
because a delivery is a recorded fact that outranks a concurrent
cancellation (a cancelled service is never revived, only delivered).

The check functions compare two documents, ``before`` (the committed one)
and ``after`` (a merged fork), along those paths only, with
``doc.get``/``doc.keys`` (never a whole-document extract), and return
:class:`~conflict.validate.Violation` values whose messages name the path and
the rule, never a field's value. The caller computes ``same_county`` from
``before`` (a batch may rewrite ``county`` itself).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from . import schema as s
from .paths import element_id, exid_op
from .validate import Path, Violation, format_path

__all__ = [
    "ANY",
    "ATTRIBUTIONS",
    "CANCEL_ROLES",
    "DECIDER_ROLES",
    "DECISION_FIELDS",
    "MAX_CLOCK_SKEW",
    "PLACE_FIELDS",
    "PROTECTIONS",
    "REQUEST_PAYLOADS",
    "SERVICE_STATUS_RANK",
    "STATUS_REQUESTS",
    "UNPROTECTED_STATUSES",
    "PayloadSpec",
    "PolicyRule",
    "Protection",
    "attribution_violations",
    "cancel_violations",
    "decision_violations",
    "is_protected_status",
    "lattice_max",
    "may_decide",
    "payload_violations",
    "place_violations",
    "protected_violations",
    "protection_for",
    "status_regressions",
]


class PolicyRule(enum.StrEnum):
    """Stable rule names of the policy (compare equal to their string values)."""

    PROTECTED_PATH = "protected-path"
    DECISION_FIELD = "decision-field"
    REQUEST_IMMUTABLE = "request-immutable"
    STATUS_REGRESSION = "status-regression"
    CANCEL_NEEDS_SUPERVISOR = "cancel-needs-supervisor"
    FORGED_ATTRIBUTION = "forged-attribution"
    FUTURE_INSTANT = "future-instant"
    CONFLICT_RECORD = "conflict-record"
    REFERRAL_RECORD = "referral-record"
    ACTIVITY_RECORD = "activity-record"


_DESCRIBE = {
    PolicyRule.PROTECTED_PATH: "protected once the household is active; needs an approved change request",
    PolicyRule.DECISION_FIELD: "only a supervisor of the household's county decides a change request",
    PolicyRule.REQUEST_IMMUTABLE: "a filed change request cannot be altered or deleted",
    PolicyRule.STATUS_REGRESSION: "a service status never moves down",
    PolicyRule.CANCEL_NEEDS_SUPERVISOR: "only a supervisor of the household's county cancels a service",
    PolicyRule.FORGED_ATTRIBUTION: "an attribution names the user of the device that writes it",
    PolicyRule.FUTURE_INSTANT: "a recorded time is not later than now (plus the allowed clock skew)",
    PolicyRule.CONFLICT_RECORD: "a conflict is recorded by the server; a device writes only "
                                "its resolution (resolved_by, resolution)",
    PolicyRule.REFERRAL_RECORD: "a referral keeps who was referred where, by whom and when; "
                                "its status and outcome change with status_by (the writer) "
                                "and status_at, and it is never deleted",
    PolicyRule.ACTIVITY_RECORD: "an activity entry stays as it was written: it is never "
                                "changed or removed",
}


def _violation(path: Path, rule: PolicyRule) -> Violation:
    return Violation(path, rule.value, f"{format_path(path)}: {rule.value}: {_DESCRIBE[rule]}")


# --- the data -------------------------------------------------------------

ANY = "*"
"""A path-pattern segment matching any key of a map."""

UNPROTECTED_STATUSES: frozenset[str] = frozenset({"registration"})
"""Household statuses under which nothing is protected. Any other value,
including a malformed one, protects (fail closed)."""


@dataclass(frozen=True)
class Protection:
    """One protected path pattern.

    ``compare="keys"``: the key set of the map at ``path`` is protected
    (violations name ``(*path, key)``). ``compare="value"``: the value at
    ``path`` is protected; an :data:`ANY` segment before the last one expands
    over keys present in both documents (an added member's presence is part
    of adding the member), a last :data:`ANY` over keys present in either.
    ``always``: protected in every status, registration included.
    """

    name: str
    path: tuple[str, ...]
    compare: str
    request_kinds: tuple[str, ...]
    always: bool = False


PROTECTIONS: tuple[Protection, ...] = (
    Protection("members", ("members",), "keys", ("add_member", "remove_member")),
    Protection("presence", ("members", ANY, "presence"), "value", ("change_presence",)),
    Protection("team", ("team", ANY), "value", ("change_team",)),
    Protection("status", ("status",), "value", ("close_household", "reopen_household")),
    Protection("locality", ("locality",), "value", ("move_household",), always=True),
    Protection("county", ("county",), "value", ("move_household",), always=True),
)

PLACE_FIELDS: tuple[str, ...] = ("locality", "county")
"""Where a household is: changed only by an approved ``move_household``."""

STATUS_REQUESTS: Mapping[str, tuple[str, str]] = {
    "close_household": ("active", "closed"),
    "reopen_household": ("closed", "active"),
}
"""Request kind -> the household status transition ``(from, to)`` it performs."""

DECISION_FIELDS: tuple[str, ...] = ("status", "decided_by", "decided_at", "decision_note")
"""Fields of ``change_requests.<id>`` that record the decision."""

DECIDER_ROLES: frozenset[str] = frozenset({"supervisor"})
"""Roles that decide change requests (of their own county only)."""

CANCEL_ROLES: frozenset[str] = frozenset({"supervisor"})
"""Roles that may set a service to ``cancelled`` (of their own county only)."""

SERVICE_STATUS_RANK: Mapping[str, int] = {
    "planned": 0,
    "in_progress": 1,
    "cancelled": 2,
    "delivered": 3,
}
"""The service status lattice (a total order): a status never moves down."""

_REQUEST_FIELDS = tuple(k for k in s.CHANGE_REQUEST.fields if k not in DECISION_FIELDS)


@dataclass(frozen=True)
class PayloadSpec:
    """The payload keys of one request kind. ``at_least_one``: of ``optional``."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    at_least_one: bool = False


REQUEST_PAYLOADS: Mapping[str, PayloadSpec] = {
    "add_member": PayloadSpec(
        required=("person_id", "first_name", "last_name", "birth_date", "sex", "relation_to_head"),
        optional=("presence",),
    ),
    "remove_member": PayloadSpec(required=("person_id",)),
    "change_presence": PayloadSpec(required=("person_id", "presence")),
    "change_team": PayloadSpec(optional=s.TEAM_ROLES, at_least_one=True),
    "close_household": PayloadSpec(),
    "reopen_household": PayloadSpec(),
    "move_household": PayloadSpec(required=PLACE_FIELDS),
}
"""Request kind -> payload shape. In ``change_team`` a role maps to a user id,
or to ``""`` to unassign it (payload values cannot be null)."""

_PAYLOAD_FIELD: Mapping[str, s.Scalar] = {
    "person_id": s.Scalar(s.Kind.STR, format="entity_id"),
    **{k: v for k, v in s.MEMBER.fields.items() if isinstance(v, s.Scalar)},
    **{k: v for k, v in s.HOUSEHOLD.fields.items() if k in PLACE_FIELDS and isinstance(v, s.Scalar)},
}


# --- small helpers ----------------------------------------------------------


def is_protected_status(status: object) -> bool:
    """True if a household with this ``status`` has protected structure."""
    return status not in UNPROTECTED_STATUSES


def may_decide(role: str | None, same_county: bool) -> bool:
    """May a user with ``role`` write decision fields of this household's requests?"""
    return role in DECIDER_ROLES and same_county


def lattice_max(a: str, b: str) -> str:
    """The higher of two service statuses in :data:`SERVICE_STATUS_RANK`.

    Raises ``ValueError`` for a status outside the lattice.
    """
    for v in (a, b):
        if v not in SERVICE_STATUS_RANK:
            raise ValueError("not a service status")
    return a if SERVICE_STATUS_RANK[a] >= SERVICE_STATUS_RANK[b] else b


def protection_for(path: Path) -> Protection | None:
    """The protection covering an edit at ``path``, or ``None``.

    ``("members", pid)`` (adding or removing a member) -> ``members``;
    ``("members", pid, "presence")`` -> ``presence``; ``("team", role)`` ->
    ``team``; ``("status",)`` -> ``status``.
    """
    for p in PROTECTIONS:
        pattern = (*p.path, ANY) if p.compare == "keys" else p.path
        if len(pattern) == len(path) and all(
            q in (ANY, seg) for q, seg in zip(pattern, path, strict=True)
        ):
            return p
    return None


def payload_violations(kind: str, payload: Mapping[str, Any], base: Path = ()) -> list[Violation]:
    """Check a request payload against :data:`REQUEST_PAYLOADS` (shape and values).

    Paths are ``(*base, "payload", key)``; rules are the schema's
    (``missing``, ``unknown-field``, ``type``, ``enum``, ``format``). An
    unknown ``kind`` is one ``enum`` violation at ``(*base, "kind")``.
    References (does ``person_id`` name a member?) need the document and are
    checked by the caller.
    """
    spec = REQUEST_PAYLOADS.get(kind)
    if spec is None:
        path = (*base, "kind")
        return [Violation(path, "enum", f"{format_path(path)}: enum: not a request kind")]
    out: list[Violation] = []

    def report(key: str, rule: str) -> None:
        path = (*base, "payload", key)
        out.append(Violation(path, rule, f"{format_path(path)}: {rule}: invalid request payload"))

    allowed = set(spec.required) | set(spec.optional)
    for key in payload:
        if key not in allowed:
            report(str(key), "unknown-field")
    for key in spec.required:
        if payload.get(key) is None:
            report(key, "missing")
    if spec.at_least_one and not any(payload.get(k) is not None for k in spec.optional):
        report(spec.optional[0], "missing")
    for key in allowed:
        value = payload.get(key)
        if value is None:
            continue
        if kind == "change_team":
            field = s.TEAM.fields[key]
            if value == "":
                continue  # unassign the role
        else:
            field = _PAYLOAD_FIELD[key]
        assert isinstance(field, s.Scalar)
        rule = s.check_python_value(field, value)
        if rule is not None:
            report(key, rule)
    return out


# --- reading two documents cheaply ---------------------------------------------


def _map_obj(doc: Document, parent: Any, key: str) -> Any | None:
    got = doc.get(parent, key)
    if got is None or got[0] != ObjType.Map:
        return None
    return got[1]


def _resolve(doc: Document, path: tuple[str, ...]) -> Any | None:
    cur: Any | None = ROOT
    for seg in path:
        cur = _map_obj(doc, cur, seg)
        if cur is None:
            return None
    return cur


def _keys(doc: Document, obj: Any | None) -> set[str]:
    return set(doc.keys(obj)) if obj is not None else set()


def _value(doc: Document, obj: Any | None, key: str) -> Any:
    """A comparable form of the entry at ``obj[key]``: ``(ScalarType, value)``,
    ``(ObjType, id)`` for an object, ``None`` if absent."""
    if obj is None:
        return None
    got = doc.get(obj, key)
    if got is None:
        return None
    if isinstance(got[0], ObjType):
        return got
    return got[0]


def _str(doc: Document, obj: Any | None, key: str) -> str | None:
    v = _value(doc, obj, key)
    if v is None or isinstance(v[0], ObjType) or v[0] != ScalarType.Str:
        return None
    return str(v[1])


def _status(doc: Document) -> object:
    v = _value(doc, ROOT, "status")
    return None if v is None or isinstance(v[0], ObjType) else v[1]


def _compare(
    before: Document, after: Document, pattern: tuple[str, ...], compare: str
) -> list[Path]:
    """Paths where ``before`` and ``after`` differ under one protection pattern."""
    out: list[Path] = []

    def walk(b: Any, a: Any, i: int, prefix: Path) -> None:
        seg = pattern[i]
        last = i == len(pattern) - 1
        if last and compare == "value":
            keys = _keys(before, b) | _keys(after, a) if seg == ANY else {seg}
            for key in sorted(keys):
                if _value(before, b, key) != _value(after, a, key):
                    out.append((*prefix, key))
            return
        keys = _keys(before, b) & _keys(after, a) if seg == ANY else {seg}
        for key in sorted(keys):
            bb = _map_obj(before, b, key) if b is not None else None
            aa = _map_obj(after, a, key) if a is not None else None
            if last:  # compare == "keys"
                for k in sorted(_keys(before, bb) ^ _keys(after, aa)):
                    out.append((*prefix, key, k))
                if (bb is None) != (aa is None):
                    out.append((*prefix, key))  # the map itself appeared or vanished
            elif bb is not None or aa is not None:
                walk(bb, aa, i + 1, (*prefix, key))  # a vanished map compares as empty

    walk(ROOT, ROOT, 0, ())
    return out


# --- the checks -------------------------------------------------------------


def protected_violations(before: Document, after: Document) -> list[Violation]:
    """Protected paths that differ between ``before`` and ``after``.

    Only the place (``locality``, ``county``) when ``before``'s status is
    ``registration``. Rule ``protected-path``; paths ``("members", pid)``,
    ``("members", pid, "presence")``, ``("team", role)``, ``("status",)``,
    ``("locality",)``, ``("county",)``.
    """
    protected = is_protected_status(_status(before))
    out = []
    for p in PROTECTIONS:
        if protected or p.always:
            for path in _compare(before, after, p.path, p.compare):
                out.append(_violation(path, PolicyRule.PROTECTED_PATH))
    return out


def place_violations(before: Document, after: Document) -> list[Violation]:
    """``locality`` or ``county`` differing between ``before`` and ``after``: a move
    that did not come from an approved ``move_household`` (whatever the status or
    the writer's role)."""
    return [_violation(path, PolicyRule.PROTECTED_PATH)
            for p in PROTECTIONS if p.always
            for path in _compare(before, after, p.path, p.compare)]


def decision_violations(
    before: Document, after: Document, role: str | None, same_county: bool
) -> list[Violation]:
    """Change-request writes the writer (``role``, of the household's county or
    not) may not make.

    * ``decision-field``: a decision field of an existing request changed and
      the writer is not a supervisor of the county; or a new request is not
      filed plainly ``pending`` (``status`` other than ``pending``, or any
      other decision field present), whoever wrote it.
    * ``request-immutable``: a filed request's kind, payload, reason,
      requester or time changed, or the request was deleted.
    """
    out: list[Violation] = []
    b_reqs = _resolve(before, ("change_requests",))
    a_reqs = _resolve(after, ("change_requests",))
    decider = may_decide(role, same_county)
    b_ids, a_ids = _keys(before, b_reqs), _keys(after, a_reqs)
    for rid in sorted(b_ids | a_ids):
        base: Path = ("change_requests", rid)
        b = _map_obj(before, b_reqs, rid) if rid in b_ids else None
        a = _map_obj(after, a_reqs, rid) if rid in a_ids else None
        if rid not in b_ids:
            if a is None:
                continue  # not a map: a schema violation
            if _str(after, a, "status") != "pending":
                out.append(_violation((*base, "status"), PolicyRule.DECISION_FIELD))
            for field in DECISION_FIELDS[1:]:
                if _value(after, a, field) is not None:
                    out.append(_violation((*base, field), PolicyRule.DECISION_FIELD))
            continue
        if a is None:
            out.append(_violation(base, PolicyRule.REQUEST_IMMUTABLE))
            continue
        if b is None:
            continue
        if not decider:
            for field in DECISION_FIELDS:
                if _value(before, b, field) != _value(after, a, field):
                    out.append(_violation((*base, field), PolicyRule.DECISION_FIELD))
        for field in _REQUEST_FIELDS:
            if field == "payload":
                if _payload(before, b) != _payload(after, a):
                    out.append(_violation((*base, field), PolicyRule.REQUEST_IMMUTABLE))
            elif _value(before, b, field) != _value(after, a, field):
                out.append(_violation((*base, field), PolicyRule.REQUEST_IMMUTABLE))
    return out


def _payload(doc: Document, request: Any) -> object:
    obj = _map_obj(doc, request, "payload")
    if obj is None:
        return _value(doc, request, "payload")
    return {k: _value(doc, obj, k) for k in doc.keys(obj)}


def _service_statuses(doc: Document) -> dict[str, str | None]:
    plan = _resolve(doc, ("service_plan",))
    if plan is None:
        return {}
    return {sid: _str(doc, _map_obj(doc, plan, sid), "status") for sid in doc.keys(plan)}


def status_regressions(before: Document, after: Document) -> list[tuple[str, str, str]]:
    """Services whose status moved down the lattice: ``(service_id, before, after)``.

    Only services present in both documents with statuses in the lattice are
    compared (anything else is a schema matter). The server uses this after a
    merge to restore :func:`lattice_max` when Automerge's winner is lower.
    """
    b, a = _service_statuses(before), _service_statuses(after)
    out = []
    for sid in sorted(b.keys() & a.keys()):
        bs, as_ = b[sid], a[sid]
        if bs is None or as_ is None or bs not in SERVICE_STATUS_RANK \
                or as_ not in SERVICE_STATUS_RANK:
            continue
        if SERVICE_STATUS_RANK[as_] < SERVICE_STATUS_RANK[bs]:
            out.append((sid, bs, as_))
    return out


def cancel_violations(
    before: Document, after: Document, role: str | None, same_county: bool
) -> list[Violation]:
    """Services newly ``cancelled`` by a writer who is not a supervisor of the
    county (rule ``cancel-needs-supervisor``, path ``("service_plan", id, "status")``)."""
    if role in CANCEL_ROLES and same_county:
        return []
    b, a = _service_statuses(before), _service_statuses(after)
    return [
        _violation(("service_plan", sid, "status"), PolicyRule.CANCEL_NEEDS_SUPERVISOR)
        for sid in sorted(a)
        if a[sid] == "cancelled" and b.get(sid) != "cancelled"
    ]


# --- attribution ---------------------------------------------------------------

ATTRIBUTIONS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "activity": (("by",), ("at",)),
    "assessments": (("by",), ("started_at", "completed_at")),
    "service_plan": (("delivered_by",), ("delivered_at",)),
    "change_requests": (("requested_by", "decided_by"), ("requested_at", "decided_at")),
    "conflicts": (("resolved_by",), ()),
    "attachments": (("by",), ("added_at",)),
    "case_history": (("by",), ("entered_at",)),
    "visits": (("by",), ("recorded_at",)),
    "parents_abroad": (("by",), ("recorded_at",)),
    "referrals": (("by", "status_by"), ("recorded_at", "status_at")),
}
"""Section -> (the fields of its entries that say who wrote them, the ones that say
when). Whoever writes one of these fields names themselves in it: the user of the device
that signs the session (the server names :data:`conflict.household.SERVER_AUTHOR` in
its own changes, or the supervisor whose decision it applies)."""

MAX_CLOCK_SKEW = timedelta(hours=24)
"""How far ahead of the server's clock a recorded time may be. A tablet set to local time
as if it were UTC is up to 3 hours ahead in Romania; a day covers a wrong date setting
without letting a record be dated next week."""


def _entries(doc: Document, section: str) -> dict[str, Any]:
    """The entries of a section: map key -> object, or for the activity list, element id
    -> object (positions shift under concurrent appends; ids do not)."""
    got = doc.get(ROOT, section)
    if got is None or not isinstance(got[0], ObjType):
        return {}
    if got[0] == ObjType.List:
        out = {}
        for value, exid in doc.values(got[1]):
            ident = element_id(exid) if isinstance(value, ObjType) else None
            if ident is not None:
                out[ident] = exid
        return out
    return {key: obj for key in doc.keys(got[1])
            if (obj := _map_obj(doc, got[1], key)) is not None}


def _entry_pairs(before: Document, after: Document, section: str,
                 keys: Collection[str | int] | None) -> list[tuple[str, Any, Any | None]]:
    """``(key, entry in after, the same entry in before or None)`` for the entries of a
    section: all of them (``keys`` None), or only those at ``keys``: map keys, or
    positions in ``after`` of a list section's elements. Looking at the entries a batch
    touched keeps the check's cost to the batch's, not to the feed's length."""
    if keys is None:
        old = _entries(before, section)
        return [(key, obj, old.get(key)) for key, obj in _entries(after, section).items()]
    got = after.get(ROOT, section)
    if got is None or not isinstance(got[0], ObjType):
        return []
    out = []
    if got[0] == ObjType.List:
        for i in sorted(k for k in keys if isinstance(k, int)):
            item = after.get(got[1], i)
            ident = element_id(item[1]) if item and isinstance(item[0], ObjType) else None
            if item is not None and ident is not None:  # an element's id names one object
                out.append((ident, item[1], item[1] if _exists(before, item[1]) else None))
        return out
    was = before.get(ROOT, section)
    for key in sorted(k for k in keys if isinstance(k, str)):
        obj = _map_obj(after, got[1], key)
        if obj is not None:
            out.append((key, obj, _map_obj(before, was[1], key)
                        if was is not None and was[0] == ObjType.Map else None))
    return out


def _exists(doc: Document, obj: Any) -> bool:
    """Whether ``doc`` holds the object ``obj`` (ids are the same in every fork)."""
    try:
        doc.object_type(obj)
    except Exception:  # the binding raises a bare Exception: "invalid obj id"
        return False
    return True


def _section_keys(touched: Collection[tuple[str | int, ...]] | None,
                  section: str) -> Collection[str | int] | None:
    """The keys of a section's entries ``touched`` names; None when it names the section
    as a whole (or nothing is known): then every entry is looked at."""
    if touched is None or (section,) in touched:
        return None
    return {p[1] for p in touched if len(p) >= 2 and p[0] == section}


def attribution_violations(before: Document, after: Document, user: str, now: datetime,
                           sections: Collection[str] | None = None,
                           touched: Collection[tuple[str | int, ...]] | None = None
                           ) -> list[Violation]:
    """Attribution fields (:data:`ATTRIBUTIONS`) that ``after`` writes (an entry new since
    ``before``, or a value changed) naming anyone but ``user`` (``forged-attribution``),
    and times written later than ``now`` plus :data:`MAX_CLOCK_SKEW` (``future-instant``).
    A conflict record says who wrote which value, and when the server saw it: a device
    may not create one or change anything in it but its resolution (``conflict-record``).
    ``sections``: the sections the batch touched (``None``: all); ``touched``: the
    ``(section,)`` and ``(section, key or position)`` prefixes it touched, when known
    (only those entries are looked at). Device batches only (the server's own changes
    are not checked)."""
    latest = now + MAX_CLOCK_SKEW
    feed: list[tuple[str, Any, Any | None]] | None = None
    if sections is None or "activity" in sections:
        rewritten, feed = _activity_violations(before, after,
                                               _section_keys(touched, "activity"))
        if rewritten:  # the batch is refused: the feed is not read a second time
            return rewritten
    out: list[Violation] = []
    if sections is None or "conflicts" in sections:
        out += _conflict_record_violations(before, after, _section_keys(touched, "conflicts"))
    if sections is None or "referrals" in sections:
        out += _referral_violations(before, after, _section_keys(touched, "referrals"), user,
                                    latest)
    for section, (who, when) in ATTRIBUTIONS.items():
        if sections is not None and section not in sections:
            continue
        pairs = feed if section == "activity" and feed is not None else \
            _entry_pairs(before, after, section, _section_keys(touched, section))
        for key, obj, was in pairs:
            for field in (*who, *when):
                value = _value(after, obj, field)
                if value is None or (was is not None and _value(before, was, field) == value):
                    continue  # absent, or written before this batch
                path: Path = (section, key, field)
                written = value[1] if not isinstance(value[0], ObjType) else None
                if field in who and written != user:
                    out.append(_violation(path, PolicyRule.FORGED_ATTRIBUTION))
                elif field in when and isinstance(written, str) and _after(written, latest):
                    out.append(_violation(path, PolicyRule.FUTURE_INSTANT))
    return out


def _activity_violations(before: Document, after: Document,
                         keys: Collection[str | int] | None
                         ) -> tuple[list[Violation], list[tuple[str, Any, Any | None]] | None]:
    """Activity entries of ``before`` that ``after`` wrote into or no longer holds, and
    the entries the attribution check still has to read, as :func:`_entry_pairs` gives
    them (None: let it find them).

    The feed says who did what and when: an entry rewritten under its author's name, or
    removed, would misattribute or lose that. With ``keys`` (the positions a batch
    touched) only those entries are read. A deletion touches the whole feed: the
    entries' ids then tell what was removed, and only when none was is each old entry
    compared (one read of each); the new entries are then the ones left to check."""
    if keys is not None:
        pairs = _entry_pairs(before, after, "activity", keys)
        return [_violation(("activity", ident), PolicyRule.ACTIVITY_RECORD)
                for ident, obj, was in pairs
                if was is not None and _written(after, obj) != _written(before, was)], pairs
    old, now = _entries(before, "activity"), _entries(after, "activity")
    removed = [ident for ident in old if ident not in now]
    if removed:  # refused for these already: the entries' fields are not read
        return [_violation(("activity", ident), PolicyRule.ACTIVITY_RECORD)
                for ident in removed], None
    return [_violation(("activity", ident), PolicyRule.ACTIVITY_RECORD)
            for ident, exid in old.items()
            if _written(after, now[ident]) != _written(before, exid)], \
        [(ident, exid, None) for ident, exid in now.items() if ident not in old]


def _written(doc: Document, obj: Any) -> list[tuple[Any, Any]]:
    """An entry's values, each with the operation that wrote it (actor and counter: the
    same in every document, unlike the binding's ids, which number actors per document).
    Equal lists mean nothing was written into the entry since, not even a value again."""
    return [(value, exid_op(exid)) for value, exid in doc.values(obj)]


#: What a referral says for good once made: who was referred, to whom (the provider as it
#: was), by whom and when. Its reason (a Text) stays editable.
REFERRAL_FIXED = ("person_id", "provider_id", "provider_name", "provider_kind",
                  "provider_contact", "referred_on", "by", "recorded_at")
#: A referral's course: its status and outcome, and who set them and when. A change to
#: any of them names its writer in ``status_by`` and has a ``status_at``.
REFERRAL_COURSE = ("status", "outcome", "status_by", "status_at")


def _referral_violations(before: Document, after: Document, keys: Collection[str | int] | None,
                         user: str, latest: datetime) -> list[Violation]:
    """A referral deleted, its fixed fields changed, dated (``referred_on``) after the
    server's day, or its course changed (any of :data:`REFERRAL_COURSE`, deletions
    included) without ``status_by`` naming the writer and a ``status_at``. When a
    status was set is the tablet's word, as every recorded time is: only a time in the
    future is refused (``future-instant``, by the attribution rule)."""
    out = []
    was_section = before.get(ROOT, "referrals")
    now_section = after.get(ROOT, "referrals")
    if was_section is not None and was_section[0] == ObjType.Map:
        old = _keys(before, was_section[1]) if keys is None else \
            {k for k in keys if isinstance(k, str)} & _keys(before, was_section[1])
        for key in sorted(old):
            if now_section is None or now_section[0] != ObjType.Map or \
                    _map_obj(after, now_section[1], key) is None:
                out.append(_violation(("referrals", key), PolicyRule.REFERRAL_RECORD))
    for key, obj, was in _entry_pairs(before, after, "referrals", keys):
        if was is None:
            day = _plain(after, obj, "referred_on")
            if isinstance(day, tuple) and isinstance(day[1], str) \
                    and day[1] > latest.date().isoformat():
                out.append(_violation(("referrals", key, "referred_on"),
                                      PolicyRule.FUTURE_INSTANT))
            continue
        for field in REFERRAL_FIXED:
            if _plain(after, obj, field) != _plain(before, was, field):
                out.append(_violation(("referrals", key, field), PolicyRule.REFERRAL_RECORD))
        if any(_plain(after, obj, f) != _plain(before, was, f) for f in REFERRAL_COURSE):
            by = _plain(after, obj, "status_by")  # (ScalarType, value) of a scalar
            if not isinstance(by, tuple) or by[1] != user:
                out.append(_violation(("referrals", key, "status_by"),
                                      PolicyRule.FORGED_ATTRIBUTION))
            if not isinstance(_plain(after, obj, "status_at"), tuple):
                out.append(_violation(("referrals", key, "status_at"),
                                      PolicyRule.REFERRAL_RECORD))
    return out


#: The fields of a conflict record a device writes: resolving it.
RESOLUTION_FIELDS = frozenset({"resolved_by", "resolution"})


def _conflict_record_violations(before: Document, after: Document,
                                keys: Collection[str | int] | None) -> list[Violation]:
    out = []
    for key, obj, was in _entry_pairs(before, after, "conflicts", keys):
        if was is None:
            out.append(_violation(("conflicts", key), PolicyRule.CONFLICT_RECORD))
            continue
        for field in sorted((_keys(after, obj) | _keys(before, was)) - RESOLUTION_FIELDS):
            if _plain(after, obj, field) != _plain(before, was, field):
                out.append(_violation(("conflicts", key, field), PolicyRule.CONFLICT_RECORD))
    return out


def _plain(doc: Document, obj: Any, key: str | int) -> Any:
    """The value at ``obj[key]`` as plain Python (maps, lists, text, scalars)."""
    got = doc.get(obj, key)
    if got is None:
        return None
    value, exid = got
    if not isinstance(value, ObjType):
        return value
    if value == ObjType.Map:
        return {k: _plain(doc, exid, k) for k in doc.keys(exid)}
    if value == ObjType.List:
        return [_plain(doc, exid, i) for i in range(doc.length(exid))]
    return doc.text(exid)


def _after(instant: str, latest: datetime) -> bool:
    try:
        return datetime.fromisoformat(instant.replace("Z", "+00:00")) > latest
    except ValueError:
        return False  # not an instant: the schema says so
