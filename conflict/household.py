"""A typed API over one household document.

Every edit method is exactly one Automerge change (one transaction), and
checks its arguments against :mod:`conflict.schema` *before* writing, so an
invalid value never reaches the document::

    hh = Household.create(locality="54975", county="CJ", address="Str. Lunga 3",
                          created_by="worker-7")
    pid = hh.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    hh.set_member_field(pid, "presence", "absent")

Errors:

* :class:`UnknownEntityError` (a ``KeyError``) — an id that names no member,
  assessment or service; ``.kind`` says which.
* :class:`InvalidValueError` (a ``ValueError``) — an argument violating the
  schema; ``.path`` and ``.rule`` say where and which rule. Like the
  validator, the message never contains the value.
* :class:`ProtectedPathError` (an ``InvalidValueError``) — with the guard on,
  a direct edit of a path :mod:`conflict.policy` protects (rule
  ``protected-path``), or a decision made outside the server's path (rule
  ``decision-field``); ``.request_kinds`` names the change request to file.

**The guard.** ``Household(doc, hid, guard=True)`` (and ``create(...,
guard=True)``) applies :mod:`conflict.policy` before writing: once the
household is no longer in ``registration``, :meth:`Household.add_member`,
:meth:`Household.set_member_field` on ``presence``, :meth:`Household.set_team`
and :meth:`Household.set_status` raise :class:`ProtectedPathError` instead of
writing (offline too); the worker files :meth:`Household.request_change`
instead. The client SDK's replica opens every household guarded. The guard
only stops an honest client early: the server enforces the same policy
against any client. Without ``guard`` the API is policy-neutral (tests,
tools, server-side code).

**Change requests.** :meth:`Household.request_change` files a request (one
change, works offline), :meth:`Household.change_requests` lists them.
:meth:`Household.apply_request` and :meth:`Household.reject_request` are the
server's path (keyword ``as_server=True``): the server applies an approval as
its own change — the structural edit, the decision fields and an activity
entry in one change — bypassing the guard on purpose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from . import answers as answers_rules
from . import paths, policy
from . import schema as s
from .catalogue import LATEST_VERSION, age_on
from .ids import is_household_id, new_entity_id, new_household_id
from .validate import Path, format_path

__all__ = [
    "SERVER_AUTHOR",
    "AuthorRequired",
    "Household",
    "InvalidValueError",
    "ProtectedPathError",
    "UnknownEntityError",
    "utc_instant",
]

REGISTERED_ACTIVITY = "registered"
APPROVED_ACTIVITY = "change_approved"

_SCALAR_TYPE = {
    s.Kind.STR: ScalarType.Str,
    s.Kind.BYTES: ScalarType.Bytes,
    s.Kind.INT: ScalarType.Int,
    s.Kind.NUMBER: ScalarType.F64,
    s.Kind.BOOL: ScalarType.Boolean,
}


class UnknownEntityError(KeyError):
    """An id names no entity of the given kind in this household."""

    def __init__(self, kind: str, entity_id: str) -> None:
        super().__init__(kind, entity_id)
        self.kind = kind
        self.entity_id = entity_id

    def __str__(self) -> str:
        return f"unknown {self.kind} id {self.entity_id!r}"


SERVER_AUTHOR = "vatra"
"""Whom the server's own changes name (a restored status, a recorded conflict): a user
id no person can be given."""


class AuthorRequired(ValueError):
    """An attributed edit on a household opened without an author (see
    :attr:`Household.author`)."""


class InvalidValueError(ValueError):
    """An argument would violate the schema; nothing was written."""

    def __init__(self, path: Path, rule: str) -> None:
        super().__init__(f"{format_path(path)}: {rule}")
        self.path = path
        self.rule = rule


class ValueTooLarge(InvalidValueError):
    """A value longer than :data:`conflict.schema.MAX_TEXT_CHARS` characters, or an
    attachment over :data:`conflict.schema.MAX_ATTACHMENT_BYTES`; nothing was written
    (rule ``value-too-large``)."""

    def __init__(self, path: Path, length: int, limit: int = s.MAX_TEXT_CHARS,
                 unit: str = "characters") -> None:
        super().__init__(path, "value-too-large")
        self.length, self.limit = length, limit
        self.args = (f"{format_path(path)}: value-too-large: {length:,} {unit}, more "
                     f"than the {limit:,} a value may hold",)


class ProtectedPathError(InvalidValueError):
    """An edit the permission policy forbids here; nothing was written.

    ``.path`` is the protected path, ``.rule`` the policy rule
    (``"protected-path"``, ``"decision-field"``, ``"conflict-record"`` or
    ``"case-closing"``), ``.request_kinds`` the
    change request kind(s) that would make the change (empty if none does).
    """

    _WHY = {
        "protected-path": "the household's structure is protected while it is not in registration",
        "decision-field": "only the server applies a decision on a change request",
        "conflict-record": "only the server records a conflict; a device resolves it",
        "case-closing": "a case closes and reopens only by an approved change request",
    }

    def __init__(self, path: Path, rule: str = "protected-path",
                 request_kinds: tuple[str, ...] = ()) -> None:
        super().__init__(path, rule)
        self.request_kinds = tuple(request_kinds)
        hint = f"; file a change request ({', '.join(self.request_kinds)})" if self.request_kinds else ""
        self.args = (f"{format_path(path)}: {rule}: {self._WHY.get(rule, 'forbidden')}{hint}",)


def utc_instant(at: datetime | str | None = None) -> str:
    """Return ``at`` (default: now) as ``"YYYY-MM-DDTHH:MM:SSZ"``.

    A naive datetime is taken to be UTC; a string is returned unchanged (and
    checked by the caller).
    """
    if isinstance(at, str):
        return at
    if at is None:
        at = datetime.now(UTC)
    elif at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date_str(d: date | str) -> str:
    # datetime is a date subclass: keep only its date part.
    if isinstance(d, datetime):
        return d.date().isoformat()
    return d.isoformat() if isinstance(d, date) else d


def _scalar(spec: s.Spec, path: Path, value: Any) -> tuple[ScalarType, Any]:
    """Check ``value`` against a scalar ``spec``; return what to ``put``."""
    if not isinstance(spec, s.Scalar):
        raise InvalidValueError(path, "type")
    rule = s.check_python_value(spec, value)
    if rule is not None:
        raise InvalidValueError(path, rule)
    if isinstance(value, str) and len(value) > s.MAX_TEXT_CHARS:
        raise ValueTooLarge(path, len(value))
    if spec.kind in _SCALAR_TYPE:
        stype = _SCALAR_TYPE[spec.kind]
    elif isinstance(value, bool):
        stype = ScalarType.Boolean
    elif isinstance(value, int):
        stype = ScalarType.Int
    elif isinstance(value, float):
        stype = ScalarType.F64
    elif value is None:
        stype = ScalarType.Null
    else:
        stype = ScalarType.Str
    if stype is ScalarType.F64:
        value = float(value)
    return stype, value


def _check_text(path: Path, value: object) -> None:
    """A new Text field's initial value: a ``str`` within :data:`schema.MAX_TEXT_CHARS`."""
    if not isinstance(value, str):
        raise InvalidValueError(path, "type")
    if len(value) > s.MAX_TEXT_CHARS:
        raise ValueTooLarge(path, len(value))


def _put_text(tx: Any, obj: bytes, key: str, value: str) -> None:
    """Make ``obj[key]`` a Text holding ``value`` (checked by :func:`_check_text`)."""
    text = tx.put_object(obj, key, ObjType.Text)
    tx.splice_text(text, 0, 0, value)


def _record_values(spec: s.Record, path: Path, values: Mapping[str, Any]
                   ) -> list[tuple[str, ScalarType, Any]]:
    """Check a whole new record; return ``(key, ScalarType, value)`` to write.

    ``None`` values of optional fields are dropped; Text fields are skipped
    (the caller creates them).
    """
    out = []
    for key, field in spec.fields.items():
        value = values.get(key)
        if value is None:
            if field.required and isinstance(field, s.Scalar):
                raise InvalidValueError((*path, key), "missing")
            continue
        out.append((key, *_scalar(field, (*path, key), value)))
    return out


class Household:
    """One household document with typed reads and single-change edits."""

    def __init__(self, doc: Document, household_id: str, *, guard: bool = False,
                 author: str | None = None) -> None:
        if not is_household_id(household_id):
            raise ValueError("not a household id")
        if author is not None and not s.FORMATS["user_id"](author):
            raise InvalidValueError(("author",), "format")
        self.doc = doc
        self.household_id = household_id
        self.guard = guard
        self._author = author

    @property
    def author(self) -> str | None:
        """The user every attribution this object writes names (``activity[].by``,
        ``assessments.*.by``, ``delivered_by``, ``requested_by``, ``decided_by``,
        ``resolved_by``): the user of the device that signs the session. The server
        refuses a batch naming anyone else (``forged-attribution``); the SDK binds it from
        the replica's credentials, so no edit takes a ``by`` it could get wrong."""
        return self._author

    def as_author(self, user_id: str) -> Household:
        """The same document, edited as ``user_id`` (the server writes as ``vatra`` or as the
        supervisor who decided; tools that build histories write as each worker)."""
        return type(self)(self.doc, self.household_id, guard=self.guard, author=user_id)

    def _by(self) -> str:
        if self._author is None:
            raise AuthorRequired("this household was opened without an author: open it "
                                 "from an enrolled replica (or give author=) to edit it")
        return self._author

    # --- creation ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        locality: str,
        county: str,
        address: str,
        author: str,
        team: Mapping[str, str] | None = None,
        household_id: str | None = None,
        actor_id: bytes | None = None,
        at: datetime | str | None = None,
        guard: bool = False,
    ) -> Household:
        """Create a new household: the whole skeleton in one change.

        Status starts as ``"registration"``; the activity feed gets a first
        ``"registered"`` entry by ``author``, who edits the returned object. The team is
        who may sync the household: without one given, the author is its social worker
        (the server registers no household of its own, and accepts none whose team leaves
        out the worker registering it).
        """
        if team is None and author != SERVER_AUTHOR:
            team = {"social_worker": author}
        if guard and author not in (team or {}).values():
            # the server refuses it (invalid-team-member): say so before it is written
            raise InvalidValueError(("team",), "registrar")
        household_id = household_id if household_id is not None else new_household_id()
        if not is_household_id(household_id):
            raise ValueError("not a household id")
        root = _record_values(
            s.HOUSEHOLD,
            (),
            {
                "schema": s.SCHEMA_VERSION,
                "locality": locality,
                "county": county,
                "address": address,
                "status": "registration",
            },
        )
        entry = _record_values(
            s.ACTIVITY_ENTRY,
            ("activity", 0),
            {"at": utc_instant(at), "by": author, "kind": REGISTERED_ACTIVITY, "text": ""},
        )
        team_values = _record_values(s.TEAM, ("team",), team or {})
        unknown = set(team or {}) - set(s.TEAM_ROLES)
        if unknown:
            raise InvalidValueError(("team", sorted(unknown)[0]), "unknown-field")

        doc = Document(actor_id=actor_id) if actor_id is not None else Document()
        with doc.transaction() as tx:
            for key, stype, value in root:
                tx.put(ROOT, key, stype, value)
            team_obj = tx.put_object(ROOT, "team", ObjType.Map)
            for key, stype, value in team_values:
                tx.put(team_obj, key, stype, value)
            # every section a device writes into is made here, once: two tablets making
            # one concurrently would each get its own, and one would hide the other's
            for key in ("members", "assessments", "service_plan", "change_requests", "conflicts",
                        "attachments", "visits", "case", "parents_abroad", "referrals"):
                tx.put_object(ROOT, key, ObjType.Map)
            tx.put_object(ROOT, "case_history", ObjType.List)
            activity = tx.put_object(ROOT, "activity", ObjType.List)
            first = tx.insert_object(activity, 0, ObjType.Map)
            for key, stype, value in entry:
                tx.put(first, key, stype, value)
            tx.put_object(ROOT, "notes", ObjType.Text)
        return cls(doc, household_id, guard=guard, author=author)

    # --- lookup helpers ---------------------------------------------------

    def _obj(self, parent: bytes, key: str | int) -> bytes | None:
        got = self.doc.get(parent, key)
        if got is None or not isinstance(got[0], ObjType):
            return None
        return got[1]

    def _new_entry(self, section: str, entry_id: str | None) -> tuple[bytes, str, Path]:
        """(the section's map, made at registration; the new entry's id, given or new;
        its path) for an entity about to be recorded. Refuses an id that is not an
        entity id (``format``) or is already there."""
        entry_id = entry_id if entry_id is not None else new_entity_id()
        base: Path = (section, entry_id)
        if not s.FORMATS["entity_id"](entry_id):
            raise InvalidValueError(base, "format")
        obj = self._root_obj(section)
        if self._obj(obj, entry_id) is not None:
            raise ValueError(f"{format_path(base)}: already exists")
        return obj, entry_id, base

    def _root_obj(self, key: str) -> bytes:
        obj = self._obj(ROOT, key)
        if obj is None:
            raise InvalidValueError((key,), "missing")
        return obj

    def _entity(self, collection: str, kind: str, entity_id: str) -> bytes:
        obj = (
            self._obj(self._root_obj(collection), entity_id) if isinstance(entity_id, str) else None
        )
        if obj is None:
            raise UnknownEntityError(kind, entity_id)
        return obj

    def _member(self, person_id: str) -> bytes:
        return self._entity("members", "member", person_id)

    def _new_id(self, collection: str, entity_id: str | None) -> str:
        entity_id = entity_id if entity_id is not None else new_entity_id()
        path: Path = (collection, entity_id)
        if not s.FORMATS["entity_id"](entity_id):
            raise InvalidValueError(path, "format")
        if self._obj(self._root_obj(collection), entity_id) is not None:
            raise ValueError(f"{format_path(path)}: already exists")
        return entity_id

    def _put_root_field(self, key: str, value: Any) -> None:
        stype, v = _scalar(s.HOUSEHOLD.fields[key], (key,), value)
        with self.doc.transaction() as tx:
            tx.put(ROOT, key, stype, v)

    def _guard(self, path: Path, request_kinds: tuple[str, ...] | None = None) -> None:
        """Raise :class:`ProtectedPathError` if the guard is on and ``path`` is
        protected in the household's current status."""
        if not self.guard:
            return
        protection = policy.protection_for(path)
        if protection is not None and (protection.always
                                       or policy.is_protected_status(self.status)):
            kinds = protection.request_kinds if request_kinds is None else request_kinds
            raise ProtectedPathError(path, policy.PolicyRule.PROTECTED_PATH.value, kinds)

    def _member_values(self, person_id: str, fields: Mapping[str, Any]
                       ) -> list[tuple[str, ScalarType, Any]]:
        return _record_values(
            s.MEMBER,
            ("members", person_id),
            {
                "first_name": fields.get("first_name"),
                "last_name": fields.get("last_name"),
                "birth_date": _date_str(fields["birth_date"])
                if fields.get("birth_date") is not None
                else None,
                "sex": fields.get("sex"),
                "relation_to_head": fields.get("relation_to_head"),
                "presence": fields.get("presence", "present"),
            },
        )

    def _team_writes(self, roles: Mapping[str, str | None]) -> list[tuple[str, ScalarType | None, Any]]:
        writes: list[tuple[str, ScalarType | None, Any]] = []
        for role, user_id in roles.items():
            path: Path = ("team", role)
            spec = s.TEAM.fields.get(role)
            if spec is None:
                raise InvalidValueError(path, "unknown-field")
            if user_id is None:
                writes.append((role, None, None))
            else:
                writes.append((role, *_scalar(spec, path, user_id)))
        return writes

    @staticmethod
    def _write_team(tx: Any, team: bytes, writes: list[tuple[str, ScalarType | None, Any]]) -> None:
        for role, stype, value in writes:
            if stype is None:
                if tx.get(team, role) is not None:
                    tx.delete(team, role)
            else:
                tx.put(team, role, stype, value)

    # --- edits (each one Automerge change) --------------------------------

    def add_member(
        self,
        first_name: str,
        last_name: str,
        birth_date: date | str,
        sex: str,
        relation_to_head: str,
        presence: str = "present",
        person_id: str | None = None,
    ) -> str:
        """Add a member; returns the person id (new UUID4 unless given).

        Guarded: once the household is active, file an ``add_member`` request.
        """
        if person_id is None:
            person_id = new_entity_id()
        self._guard(("members", person_id))
        person_id = self._new_id("members", person_id)
        values = self._member_values(
            person_id,
            {
                "first_name": first_name,
                "last_name": last_name,
                "birth_date": birth_date,
                "sex": sex,
                "relation_to_head": relation_to_head,
                "presence": presence,
            },
        )
        members = self._root_obj("members")
        with self.doc.transaction() as tx:
            obj = tx.put_object(members, person_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
        return person_id

    def set_member_field(self, person_id: str, field: str, value: Any) -> None:
        """Set one field of a member (e.g. ``presence``).

        Guarded for ``presence``: once the household is active, file a
        ``change_presence`` request (writing the current value is a no-op).
        """
        obj = self._member(person_id)
        path: Path = ("members", person_id, field)
        spec = s.MEMBER.fields.get(field)
        if spec is None:
            raise InvalidValueError(path, "unknown-field")
        if field == "birth_date":
            value = _date_str(value)
        stype, v = _scalar(spec, path, value)
        if self.guard and policy.protection_for(path) is not None:
            if self._read_key(obj, field) == v:
                return
            self._guard(path)
        with self.doc.transaction() as tx:
            tx.put(obj, field, stype, v)

    def set_address(self, address: str) -> None:
        """Replace the address."""
        self._put_root_field("address", address)

    def set_status(self, status: str) -> None:
        """Set the household status (registration | active | closed).

        Guarded: once the household is active, any status change needs a
        request (``close_household``, ``reopen_household``).
        """
        _scalar(s.HOUSEHOLD.fields["status"], ("status",), status)
        current = self.status
        if current != status:
            kinds = tuple(k for k, tr in policy.STATUS_REQUESTS.items() if tr == (current, status))
            self._guard(("status",), kinds)
        self._put_root_field("status", status)

    def set_gps(
        self,
        lat: float,
        lon: float,
        accuracy_m: float,
        captured_at: datetime | str | None = None,
    ) -> None:
        """Replace the GPS fix as a whole (a new map), so a concurrent fix
        never mixes one device's latitude with another's longitude."""
        values = _record_values(
            s.GPS,
            ("gps",),
            {
                "lat": lat,
                "lon": lon,
                "accuracy_m": accuracy_m,
                "captured_at": utc_instant(captured_at),
            },
        )
        with self.doc.transaction() as tx:
            obj = tx.put_object(ROOT, "gps", ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)

    def set_team(self, **roles: str | None) -> None:
        """Set team roles by name (``set_team(nurse="u-12")``); ``None`` removes one.

        Guarded: once the household is active, changing a role needs a
        ``change_team`` request (re-writing the current values is a no-op).
        """
        writes = self._team_writes(roles)
        team = self._root_obj("team")
        if self.guard:
            changed = [role for role, _, value in writes if self._read_key(team, role) != value]
            if not changed:
                return
            self._guard(("team", changed[0]))
        with self.doc.transaction() as tx:
            self._write_team(tx, team, writes)

    def start_assessment(
        self,
        assessment_id: str | None = None,
        at: datetime | str | None = None,
    ) -> str:
        """Start an assessment; returns its id.

        An empty answers map is created for every current member up front, so
        two workers recording answers for the same person concurrently write
        into one shared map instead of racing to create it (the loser's map,
        with its answers, would otherwise be hidden by the winner's).
        """
        assessment_id = self._new_id("assessments", assessment_id)
        values = _record_values(
            s.ASSESSMENT, ("assessments", assessment_id),
            {"started_at": utc_instant(at), "by": self._by(),
             "catalogue_version": LATEST_VERSION}
        )
        assessments = self._root_obj("assessments")
        person_ids = self.doc.keys(self._root_obj("members"))
        with self.doc.transaction() as tx:
            obj = tx.put_object(assessments, assessment_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            answers = tx.put_object(obj, "answers", ObjType.Map)
            for pid in person_ids:
                tx.put_object(answers, pid, ObjType.Map)
        return assessment_id

    def record_answers(
        self,
        assessment_id: str,
        person_id: str,
        answers: Mapping[str, str | int | float | bool],
    ) -> None:
        """Record indicator answers for one member (an empty mapping writes nothing).

        Each answer is checked against the catalogue version the assessment records
        (:mod:`conflict.answers`): an unknown indicator, a wrong type, a value outside the
        options or the range raises :class:`InvalidValueError` naming the rule, and
        nothing is written."""
        obj = self._entity("assessments", "assessment", assessment_id)
        self._member(person_id)
        base: Path = ("assessments", assessment_id, "answers", person_id)
        answers_map = s.ASSESSMENT.fields["answers"]
        assert isinstance(answers_map, s.MapOf)
        answer_spec = answers_map.values
        assert isinstance(answer_spec, s.MapOf)
        version = self._read_key(obj, "catalogue_version")
        catalogue = answers_rules.catalogue_for(version if isinstance(version, int) else 1)
        if catalogue is None:
            raise InvalidValueError(("assessments", assessment_id, "catalogue_version"),
                                    "catalogue-version")
        writes = []
        for code, value in answers.items():
            if answer_spec.key_format is not None and not s.FORMATS[answer_spec.key_format](code):
                raise InvalidValueError((*base, code), "format")
            found = answers_rules.answer_violation(catalogue, (*base, code), code, value)
            if found is not None:
                raise InvalidValueError(found.path, found.rule)
            writes.append((code, *_scalar(answer_spec.values, (*base, code), value)))
        answers_obj = self._obj(obj, "answers")
        if answers_obj is None:
            raise InvalidValueError(base[:-1], "missing")
        person_obj = self._obj(answers_obj, person_id)
        with self.doc.transaction() as tx:
            if person_obj is None and writes:
                person_obj = tx.put_object(answers_obj, person_id, ObjType.Map)
            for code, stype, value in writes:
                assert person_obj is not None  # made above when there is a write
                tx.put(person_obj, code, stype, value)

    def complete_assessment(self, assessment_id: str, at: datetime | str | None = None) -> None:
        """Mark an assessment completed at ``at`` (default: now)."""
        obj = self._entity("assessments", "assessment", assessment_id)
        path: Path = ("assessments", assessment_id, "completed_at")
        stype, v = _scalar(s.ASSESSMENT.fields["completed_at"], path, utc_instant(at))
        with self.doc.transaction() as tx:
            tx.put(obj, "completed_at", stype, v)

    def plan_service(
        self,
        code: str,
        person_id: str,
        vulnerability: str,
        deadline: date | str,
        service_id: str | None = None,
    ) -> str:
        """Plan a service for a member (status ``planned``); returns its id. ``code`` and
        ``vulnerability`` must be codes of the catalogue."""
        self._member(person_id)
        service_id = self._new_id("service_plan", service_id)
        if code not in answers_rules.known_services():
            raise InvalidValueError(("service_plan", service_id, "code"), "unknown-service")
        if vulnerability not in answers_rules.known_vulnerabilities():
            raise InvalidValueError(("service_plan", service_id, "vulnerability"),
                                    "unknown-vulnerability")
        values = _record_values(
            s.SERVICE,
            ("service_plan", service_id),
            {
                "code": code,
                "person_id": person_id,
                "vulnerability": vulnerability,
                "deadline": _date_str(deadline),
                "status": "planned",
            },
        )
        plan = self._root_obj("service_plan")
        with self.doc.transaction() as tx:
            obj = tx.put_object(plan, service_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            tx.put_object(obj, "note", ObjType.Text)
        return service_id

    def set_service_status(
        self,
        service_id: str,
        status: str,
        at: datetime | str | None = None,
    ) -> None:
        """Set a service's status; ``delivered`` also records when and by whom (the author).

        Leaving ``delivered`` keeps ``delivered_at``/``delivered_by`` (so a
        concurrent merge never yields a delivered service without them).
        Forward-only ordering is a merge policy, not enforced here.
        """
        obj = self._entity("service_plan", "service", service_id)
        base: Path = ("service_plan", service_id)
        writes = [("status", *_scalar(s.SERVICE.fields["status"], (*base, "status"), status))]
        by_spec = s.SERVICE.fields["delivered_by"]
        by = self._by()
        if status == "delivered":
            writes.append(
                (
                    "delivered_at",
                    *_scalar(
                        s.SERVICE.fields["delivered_at"], (*base, "delivered_at"), utc_instant(at)
                    ),
                )
            )
            writes.append(("delivered_by", *_scalar(by_spec, (*base, "delivered_by"), by)))
        with self.doc.transaction() as tx:
            for key, stype, value in writes:
                tx.put(obj, key, stype, value)

    def set_service_note(self, service_id: str, text: str) -> None:
        """Replace a service's note text."""
        obj = self._entity("service_plan", "service", service_id)
        note = self._obj(obj, "note")
        if note is None:
            raise InvalidValueError(("service_plan", service_id, "note"), "missing")
        self._replace_text(note, text, ("service_plan", service_id, "note"))

    # --- case management ----------------------------------------------------

    def _append_stage(self, tx: Any, stage: str, at: datetime | str | None,
                      from_stage: str | None = None) -> None:
        history = self._root_obj("case_history")
        n = tx.length(history)
        fields = {"stage": stage, "entered_at": utc_instant(at), "by": self._by()}
        if from_stage is not None:
            fields["from"] = from_stage
        entry = _record_values(s.CASE_HISTORY_ENTRY, ("case_history", n), fields)
        obj = tx.insert_object(history, n, ObjType.Map)
        for key, stype, value in entry:
            tx.put(obj, key, stype, value)

    def open_case(self, *, identified_at: datetime | str | None = None,
                  emergency: bool = False, model: str = "aurora",
                  at: datetime | str | None = None) -> None:
        """Open the household's case at the rule table's first stage (identification),
        following the latest case rule table: one change, the ``case`` record's fields and
        its first ``case_history`` entry (two teammates opening it offline write the same
        fields: a difference is a same-field conflict, recorded, never a hidden record).
        A household registered before cases existed has no ``case`` section
        (:class:`InvalidValueError`, rule ``missing``). ``identified_at``: the referral or identification
        the deadlines count from (default: now); ``emergency``: the initial assessment is
        due within the table's emergency window; ``model``: the re-assessment interval
        (``aurora``: 9 months, ``case_management``: 3)."""
        from . import case as rules_mod

        obj = self._root_obj("case")  # made at registration: households from before have none
        self._root_obj("case_history")
        if rules_mod.case_record(self.doc) is not None:
            raise ValueError("case: already opened")
        rules = rules_mod.load_rules()
        values = _record_values(s.CASE, ("case",), {
            "stage": rules.initial_stage, "model": model, "rules_version": rules.version,
            "identified_at": utc_instant(identified_at if identified_at is not None else at),
            "emergency": emergency})
        with self.doc.transaction() as tx:
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            self._append_stage(tx, rules.initial_stage, at)

    def _case_obj(self) -> bytes:
        from . import case as rules_mod

        if rules_mod.case_record(self.doc) is None:
            raise UnknownEntityError("case", "case")
        return self._root_obj("case")

    def move_stage(self, stage: str, at: datetime | str | None = None) -> None:
        """Move the case to ``stage`` along the rule table's transitions, recording when,
        by whom and from which stage it entered it (one change). With the guard on (the
        SDK's replica), a move the table does not allow raises :class:`InvalidValueError`
        (rule ``stage-transition``), and closing and reopening raise
        :class:`ProtectedPathError`: they are change requests (``close_household``,
        ``reopen_household``) a supervisor approves. The server refuses both from any
        client (:func:`conflict.case.case_violations`)."""
        from . import case as rules_mod

        obj = self._case_obj()
        record = rules_mod.case_record(self.doc) or {}
        _scalar(s.CASE.fields["stage"], ("case", "stage"), stage)
        current = record.get("stage")
        if "closed" in (stage, current) and self.guard:
            kinds = ("close_household",) if stage == "closed" else ("reopen_household",)
            raise ProtectedPathError(("case", "stage"), "case-closing", kinds)
        version = record.get("rules_version")
        rules = rules_mod.load_rules(version if isinstance(version, int) else None)
        if self.guard and (not isinstance(current, str) or not rules.may_move(current, stage)):
            raise InvalidValueError(("case", "stage"), rules_mod.STAGE_TRANSITION)
        current = current if current in s.CASE_STAGES else None
        with self.doc.transaction() as tx:
            tx.put(obj, "stage", ScalarType.Str, stage)
            self._append_stage(tx, stage, at, current)

    def record_initial_report(self, at: datetime | str | None = None) -> None:
        """Record that the initial assessment was reported to the superior (the method
        asks for it within 24 hours of the assessment)."""
        obj = self._case_obj()
        stype, v = _scalar(s.CASE.fields["initial_report_at"], ("case", "initial_report_at"),
                           utc_instant(at))
        with self.doc.transaction() as tx:
            tx.put(obj, "initial_report_at", stype, v)

    def case(self) -> dict[str, Any] | None:
        """The case: its record's fields, ``entered`` (stage -> when it was last entered)
        and ``history`` (every stage entered, in order), or None if none is open."""
        from . import case as rules_mod

        record = rules_mod.case_record(self.doc)
        if record is None:
            return None
        return {**record, "entered": rules_mod.stage_entered(self.doc),
                "history": [entry for _, entry in rules_mod.history(self.doc)]}

    def deadlines(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The case's deadlines as of ``now`` (conflict/case.py): code, kind, due, state
        (``met``, ``met_late``, ``open``, ``overdue``; ``running``, ``complete`` for a
        minimum period), met_at. Works offline, from the document alone."""
        from . import case as rules_mod

        return [d.to_json() for d in rules_mod.deadlines(self.doc, now)]

    def record_visit(self, *, visited_on: date | str, place: str, purpose: str,
                     participants: Sequence[str], synthesis: str,
                     next_visit: date | str | None = None, visit_id: str | None = None,
                     at: datetime | str | None = None) -> str:
        """Record a visit report (one change); returns its id. ``participants``: member
        ids or roles ("teacher"); ``synthesis`` is a Text others may edit;
        ``next_visit`` (a date) feeds the case's next-visit deadline."""
        visits, visit_id, base = self._new_entry("visits", visit_id)
        fields: dict[str, Any] = {"visited_on": _date_str(visited_on), "place": place,
                                  "purpose": purpose, "by": self._by(),
                                  "recorded_at": utc_instant(at)}
        if next_visit is not None:
            fields["next_visit"] = _date_str(next_visit)
        values = _record_values(s.VISIT, base, fields)
        if isinstance(participants, str) or not isinstance(participants, Sequence):
            raise InvalidValueError((*base, "participants"), "type")
        item_spec = s.VISIT.fields["participants"]
        assert isinstance(item_spec, s.ListOf) and isinstance(item_spec.items, s.Scalar)
        people = [_scalar(item_spec.items, (*base, "participants", i), p)
                  for i, p in enumerate(participants)]
        _check_text((*base, "synthesis"), synthesis)
        with self.doc.transaction() as tx:
            obj = tx.put_object(visits, visit_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            plist = tx.put_object(obj, "participants", ObjType.List)
            for i, (stype, value) in enumerate(people):
                tx.insert(plist, i, stype, value)
            _put_text(tx, obj, "synthesis", synthesis)
        return visit_id

    def record_parent_abroad(self, child_id: str, *, parent: str, country: str,
                             since: date | str, carer_name: str, carer_relation: str,
                             carer_person_id: str | None = None,
                             notified_on: date | str | None = None,
                             record_id: str | None = None,
                             at: datetime | str | None = None) -> str:
        """Record that a parent (``mother`` or ``father``) of a child of the household works
        abroad (GD 691/2015): in which country (ISO 3166-1 alpha-2) since when, who cares
        for the child meanwhile, and when the parent notified the local public social
        assistance service. One change; returns the record's id. Refused
        (:class:`InvalidValueError`) before anything is written: a child who is not a
        member, or was 18 or older when the parent left; a departure or a notice dated in
        the future (the law asks for the notice at least 40 days before leaving; a late one
        is recorded as it was given, and the annex shows both dates)."""
        section, record_id, base = self._new_entry("parents_abroad", record_id)
        member = self.members().get(child_id)
        if member is None:
            raise UnknownEntityError("member", child_id)
        fields: dict[str, Any] = {
            "child_id": child_id, "parent": parent, "country": country,
            "since": _date_str(since), "carer_name": carer_name,
            "carer_relation": carer_relation, "by": self._by(), "recorded_at": utc_instant(at)}
        if carer_person_id is not None:
            if carer_person_id not in self.members():
                raise InvalidValueError((*base, "carer_person_id"), "reference")
            fields["carer_person_id"] = carer_person_id
        if notified_on is not None:
            fields["notified_on"] = _date_str(notified_on)
        values = _record_values(s.PARENT_ABROAD, base, fields)
        # (a day of slack: the tablet's date in Romania is a day ahead of UTC's at night)
        latest = datetime.now(UTC).date() + timedelta(days=1)
        for key in ("since", "notified_on"):
            if key in fields and date.fromisoformat(fields[key]) > latest:
                raise InvalidValueError((*base, key), "future-date")
        born = member.get("birth_date")
        if isinstance(born, str) and s.FORMATS["date"](born) and \
                age_on(born, date.fromisoformat(fields["since"])) >= 18:
            raise InvalidValueError((*base, "child_id"), "not-a-child")
        with self.doc.transaction() as tx:
            obj = tx.put_object(section, record_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
        return record_id

    def parents_abroad(self) -> dict[str, dict[str, Any]]:
        """Parents working abroad, by record id (GD 691/2015)."""
        got = self.doc.get(ROOT, "parents_abroad")
        if got is None or got[0] != ObjType.Map:
            return {}
        read: dict[str, dict[str, Any]] = self._read(got)
        return read

    # --- referrals ----------------------------------------------------------

    def refer(self, provider: Mapping[str, Any], *, reason: str,
              person_id: str | None = None, referred_on: date | str | None = None,
              referral_id: str | None = None, at: datetime | str | None = None) -> str:
        """Refer the household (or one member, ``person_id``) to ``provider``, a provider
        of the county's directory as ``client_sdk.Replica.directory`` or the web API give
        it: its id, and its name, kind and contact as they are today (the referral keeps
        them). ``reason`` is a Text others may edit. One change, status ``sent``;
        returns the referral's id."""
        section, referral_id, base = self._new_entry("referrals", referral_id)
        if person_id is not None and person_id not in self.members():
            raise UnknownEntityError("member", person_id)
        recorded = utc_instant(at)
        fields: dict[str, Any] = {
            "provider_id": provider.get("id"), "provider_name": provider.get("name"),
            "provider_kind": provider.get("kind"), "status": "sent",
            "referred_on": _date_str(referred_on) if referred_on is not None else recorded[:10],
            "by": self._by(), "recorded_at": recorded}
        contact = " / ".join(str(provider[k]) for k in ("phone", "email") if provider.get(k))
        if contact:
            fields["provider_contact"] = contact
        if person_id is not None:
            fields["person_id"] = person_id
        values = _record_values(s.REFERRAL, base, fields)
        # (a day of slack: the tablet's date in Romania is a day ahead of UTC's at night)
        if date.fromisoformat(fields["referred_on"]) > datetime.now(UTC).date() + timedelta(days=1):
            raise InvalidValueError((*base, "referred_on"), "future-date")
        _check_text((*base, "reason"), reason)
        with self.doc.transaction() as tx:
            obj = tx.put_object(section, referral_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            _put_text(tx, obj, "reason", reason)
        return referral_id

    def set_referral_status(self, referral_id: str, status: str, *,
                            outcome: str | None = None,
                            at: datetime | str | None = None) -> None:
        """Record where a referral stands (``accepted``, ``refused``, ``completed``,
        ``cancelled``) and what came of it (none: ``""``); who and when are recorded with
        it (the server refuses a status change without them, ``referral-record``). One
        change. Two teammates setting different statuses offline leave a recorded
        conflict, as any field does."""
        obj = self._entity("referrals", "referral", referral_id)
        base: Path = ("referrals", referral_id)
        # The outcome is always written ("" for none): a later status never keeps an
        # earlier outcome, and two teammates' concurrent outcomes are a recorded conflict.
        fields: dict[str, Any] = {"status": status, "status_by": self._by(),
                                  "status_at": utc_instant(at), "outcome": outcome or ""}
        writes = [(key, *_scalar(s.REFERRAL.fields[key], (*base, key), value))
                  for key, value in fields.items()]
        with self.doc.transaction() as tx:
            for key, stype, value in writes:
                tx.put(obj, key, stype, value)

    def referrals(self) -> dict[str, dict[str, Any]]:
        """Referrals by id (the reason as ``str``)."""
        got = self.doc.get(ROOT, "referrals")
        if got is None or got[0] != ObjType.Map:
            return {}
        read: dict[str, dict[str, Any]] = self._read(got)
        return read

    def visits(self) -> dict[str, dict[str, Any]]:
        """Visit reports by id (the synthesis as ``str``)."""
        got = self.doc.get(ROOT, "visits")
        if got is None or got[0] != ObjType.Map:
            return {}
        read: dict[str, dict[str, Any]] = self._read(got)
        return read

    # --- same-field conflicts ---------------------------------------------

    def record_conflict(self, path: Sequence[str | int], values: Sequence[Any],
                        at: datetime | str | None = None,
                        written: Sequence[tuple[str, datetime | str]] | None = None) -> str:
        """Record that concurrent edits left ``values`` at ``path`` (the server does this
        when it detects them); ``written[i]`` is ``(user id, when)`` for ``values[i]``.
        Returns the conflict's id. One change. A guarded household (a tablet's) refuses:
        a device's batch that records a conflict is refused as ``forged-attribution``."""
        if self.guard:
            raise ProtectedPathError(("conflicts",), policy.PolicyRule.CONFLICT_RECORD.value)
        if written is not None and len(written) != len(values):
            raise ValueError("one writer per value")
        cid = new_entity_id()
        conflicts = self._root_obj("conflicts")
        with self.doc.transaction() as tx:
            obj = tx.put_object(conflicts, cid, ObjType.Map)
            p = tx.put_object(obj, "path", ObjType.List)
            for i, seg in enumerate(path):
                tx.insert(p, i, ScalarType.Int if isinstance(seg, int) else ScalarType.Str, seg)
            v = tx.put_object(obj, "values", ObjType.List)
            for i, value in enumerate(values):
                tx.insert(v, i, *_any_scalar(value))
            if written is not None:
                w = tx.put_object(obj, "written", ObjType.List)
                for i, (by, when) in enumerate(written):
                    entry = tx.insert_object(w, i, ObjType.Map)
                    tx.put(entry, "by", ScalarType.Str, by)
                    tx.put(entry, "at", ScalarType.Str, utc_instant(when))
            tx.put(obj, "detected_at", ScalarType.Str, utc_instant(at))
        return cid

    def conflicts(self, *, open_only: bool = False) -> list[dict[str, Any]]:
        """Recorded conflicts (``conflict_id``, ``path``, ``values``, ``written`` (who
        wrote each value, when: a list of ``{"by", "at"}``, or None), ``detected_at``,
        ``resolved_by``, ``resolution``); ``open_only`` leaves out the resolved ones."""
        out = []
        for cid, c in (self._read_key(ROOT, "conflicts") or {}).items():
            if isinstance(c, dict) and not (open_only and c.get("resolved_by")):
                out.append({"conflict_id": cid, "path": c.get("path"), "values": c.get("values"),
                            "written": c.get("written"), "detected_at": c.get("detected_at"),
                            "resolved_by": c.get("resolved_by"),
                            "resolution": c.get("resolution")})
        return out

    def resolve_conflict(self, conflict_id: str, value: Any) -> None:
        """Choose ``value`` for a conflict: it is written at the conflict's path and the
        conflict is marked resolved, in one change, and nothing else is written (but for
        the case's stage, which changes only by a move its rule table allows from the
        stage that stands, recorded in its history; another value raises
        :class:`InvalidValueError`, rule ``stage-transition``). The path
        must be a plain field (not protected: the guard applies as for any other edit); a
        list element on it is found by its id (:mod:`conflict.paths`), wherever merges
        have moved it."""
        obj = self._entity("conflicts", "conflict", conflict_id)
        record = self._read_key(ROOT, "conflicts")[conflict_id]
        path = list(record.get("path") or [])
        if not path:
            raise InvalidValueError(("conflicts", conflict_id, "path"), "missing")
        if self.guard and policy.protection_for(tuple(path)) is not None:
            raise ProtectedPathError(tuple(path), "protected-path")
        if any(isinstance(seg, int) for seg in path[:-1]):
            # Recorded by a server that named list elements by position: the position
            # may hold another entry by now, so writing there could change the wrong one.
            raise InvalidValueError(tuple(path), "list-position")
        field = paths.field_at(self.doc, path)
        if field is None or not isinstance(field[1], str):
            raise InvalidValueError(tuple(path), "missing")
        parent, key = field
        by = self._by()
        move = None
        if path == ["case", "stage"]:
            # the stage changes by a move the rule table allows, recorded in the history
            from . import case as rules_mod

            record = rules_mod.case_record(self.doc) or {}
            current, version = record.get("stage"), record.get("rules_version")
            rules = rules_mod.load_rules(version if isinstance(version, int) else None)
            if value != current:
                if not isinstance(current, str) or not isinstance(value, str) \
                        or "closed" in (current, value) or not rules.may_move(current, value):
                    raise InvalidValueError(("case", "stage"), rules_mod.STAGE_TRANSITION)
                move = current
        # A referral's status or outcome is part of its course: who chose it and when are
        # written with it (the server refuses it otherwise, referral-record).
        course = len(path) == 3 and path[0] == "referrals" and path[2] in policy.REFERRAL_COURSE
        with self.doc.transaction() as tx:
            if path != ["case", "stage"] or move is not None:
                tx.put(parent, key, *_any_scalar(value))
            if move is not None:
                self._append_stage(tx, str(value), None, move)
            if course:
                tx.put(parent, "status_by", ScalarType.Str, by)
                tx.put(parent, "status_at", ScalarType.Str, utc_instant())
            tx.put(obj, "resolved_by", ScalarType.Str, by)  # the author, checked above
            tx.put(obj, "resolution", ScalarType.Str, str(value))

    def append_activity(self, kind: str, text: str, at: datetime | str | None = None) -> None:
        """Append an entry by the author to the activity feed."""
        activity = self._root_obj("activity")
        n = self.doc.length(activity)
        values = _record_values(
            s.ACTIVITY_ENTRY,
            ("activity", n),
            {"at": utc_instant(at), "by": self._by(), "kind": kind, "text": text},
        )
        with self.doc.transaction() as tx:
            obj = tx.insert_object(activity, n, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)

    def attach(self, name: str, content: bytes, *,
               media_type: str = "application/octet-stream",
               at: datetime | str | None = None) -> str:
        """Keep ``content`` with the household (a scanned report, a note too long for the
        notes text), by the author: a record (name, media type, size, SHA-256, who,
        when), then the bytes in parts of :data:`conflict.schema.ATTACHMENT_PART_BYTES`,
        each part its own change, so that a sync can send them in steps. Refused beyond
        :data:`conflict.schema.MAX_ATTACHMENT_BYTES` (:class:`ValueTooLarge`) before
        anything is written. Returns the attachment's id."""
        if not isinstance(content, bytes | bytearray):
            raise InvalidValueError(("attachments",), "type")
        content = bytes(content)
        if len(content) > s.MAX_ATTACHMENT_BYTES:
            raise ValueTooLarge(("attachments",), len(content), s.MAX_ATTACHMENT_BYTES, "bytes")
        section = self._obj(ROOT, "attachments")
        if section is None:  # registered before attachments existed (decision 66)
            raise InvalidValueError(("attachments",), "missing")
        aid = new_entity_id()
        values = _record_values(s.ATTACHMENT, ("attachments", aid), {
            "name": name, "media_type": media_type, "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(), "added_at": utc_instant(at),
            "by": self._by()})
        with self.doc.transaction() as tx:
            obj = tx.put_object(section, aid, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            parts = tx.put_object(obj, "parts", ObjType.List)
        step = s.ATTACHMENT_PART_BYTES
        for n, i in enumerate(range(0, len(content), step)):
            with self.doc.transaction() as tx:
                tx.insert(parts, n, ScalarType.Bytes, content[i:i + step])
        return aid

    def attachments(self) -> dict[str, dict[str, Any]]:
        """Attachment id -> its record without the bytes (name, media type, size, SHA-256,
        who, when), and ``complete``: whether every part has arrived."""
        out = {}
        for aid, record in (self._read_key(ROOT, "attachments") or {}).items():
            parts = record.pop("parts", [])
            record["complete"] = _joined(parts, record) is not None
            out[aid] = record
        return out

    def attachment(self, attachment_id: str) -> bytes:
        """An attachment's bytes, checked against its size and SHA-256. Raises
        :class:`UnknownEntityError`, or :class:`InvalidValueError` (rule ``incomplete``)
        while parts are still on their way from another device."""
        obj = self._entity("attachments", "attachment", attachment_id)
        record = self._read((ObjType.Map, obj))
        content = _joined(record.get("parts", []), record)
        if content is None:
            raise InvalidValueError(("attachments", attachment_id, "parts"), "incomplete")
        return content

    def set_notes(self, text: str) -> None:
        """Replace the whole notes text (one splice)."""
        self._replace_text(self._root_obj("notes"), text, ("notes",))

    def append_notes(self, text: str) -> None:
        """Append to the notes text."""
        if not isinstance(text, str):
            raise InvalidValueError(("notes",), "type")
        notes = self._root_obj("notes")
        if self.doc.length(notes) + len(text) > s.MAX_TEXT_CHARS:
            raise ValueTooLarge(("notes",), self.doc.length(notes) + len(text))
        with self.doc.transaction() as tx:
            tx.splice_text(notes, tx.length(notes), 0, text)  # type: ignore[attr-defined]

    # --- change requests ----------------------------------------------------

    def request_change(
        self,
        kind: str,
        payload: Mapping[str, Any],
        reason: str,
        at: datetime | str | None = None,
        *,
        request_id: str | None = None,
    ) -> str:
        """File a change request (one change, works offline); returns its id.

        ``payload`` by ``kind`` (see :data:`conflict.policy.REQUEST_PAYLOADS`):

        * ``add_member``: ``first_name``, ``last_name``, ``birth_date``,
          ``sex``, ``relation_to_head``, optional ``presence``; a
          ``person_id`` is chosen now unless given, so the new member's id is
          known before approval;
        * ``remove_member``: ``person_id``;
        * ``change_presence``: ``person_id``, ``presence``;
        * ``change_team``: one or more ``role=user_id`` (``None`` or ``""``
          unassigns the role);
        * ``close_household``, ``reopen_household``: empty;
        * ``move_household``: ``locality`` (SIRUTA) and ``county``: the household
          moves when the supervisor of its current county approves.

        The request is filed ``pending`` by the author; ``reason`` must not be empty.
        Raises :class:`InvalidValueError` (or :class:`UnknownEntityError` for
        a ``person_id`` naming no member) before anything is written.
        """
        request_id = self._new_id("change_requests", request_id)
        base: Path = ("change_requests", request_id)
        _scalar(s.CHANGE_REQUEST.fields["kind"], (*base, "kind"), kind)
        if not isinstance(payload, Mapping):
            raise InvalidValueError((*base, "payload"), "type")
        payload = dict(payload)
        if kind == "add_member":
            payload.setdefault("person_id", new_entity_id())
            if isinstance(payload.get("birth_date"), date):
                payload["birth_date"] = _date_str(payload["birth_date"])
        elif kind == "change_team":
            payload = {k: "" if v is None else v for k, v in payload.items()}
        violations = policy.payload_violations(kind, payload, base)
        if violations:
            raise InvalidValueError(violations[0].path, violations[0].rule)
        pid = payload.get("person_id")
        if kind == "add_member":
            assert isinstance(pid, str)  # set above, and checked by payload_violations
            if self._obj(self._root_obj("members"), pid) is not None:
                raise ValueError(f"{format_path(('members', pid))}: already exists")
        elif pid is not None:
            self._member(pid)
        payload_writes = [
            (key, *_scalar(s.Scalar(s.Kind.SCALAR), (*base, "payload", key), value))
            for key, value in sorted(payload.items())
        ]
        if not (isinstance(reason, str) and reason.strip()):
            raise InvalidValueError((*base, "reason"), "format" if isinstance(reason, str) else "type")
        values = _record_values(
            s.CHANGE_REQUEST,
            base,
            {
                "kind": kind,
                "reason": reason,
                "requested_by": self._by(),
                "requested_at": utc_instant(at),
                "status": "pending",
            },
        )
        requests = self._root_obj("change_requests")
        with self.doc.transaction() as tx:
            obj = tx.put_object(requests, request_id, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)
            pobj = tx.put_object(obj, "payload", ObjType.Map)
            for key, stype, value in payload_writes:
                tx.put(pobj, key, stype, value)
        return request_id

    def change_requests(self) -> list[dict[str, Any]]:
        """Every change request, oldest first: ``request_id`` and every field of
        the schema (``None`` where absent), e.g. ``status`` and ``decision_note``."""
        out = []
        for rid, req in (self._read_key(ROOT, "change_requests") or {}).items():
            if isinstance(req, dict):
                out.append({"request_id": rid, **{k: req.get(k) for k in s.CHANGE_REQUEST.fields}})
        out.sort(key=lambda r: (str(r["requested_at"]), r["request_id"]))
        return out

    def _decision(
        self, request_id: str, as_server: bool, at: datetime | str | None, note: str | None,
    ) -> tuple[bytes, dict[str, Any], list[tuple[str, ScalarType, Any]]]:
        """Checks shared by approve and reject: the request object, its fields,
        and the decision fields to write."""
        base: Path = ("change_requests", request_id)
        if not as_server:
            raise ProtectedPathError((*base, "status"), policy.PolicyRule.DECISION_FIELD.value)
        obj = self._entity("change_requests", "change request", request_id)
        req = self._read((ObjType.Map, obj))
        decision = []
        for key, value in (("decided_by", self._by()), ("decided_at", utc_instant(at)),
                           ("decision_note", note)):
            if value is not None:
                decision.append((key, *_scalar(s.CHANGE_REQUEST.fields[key], (*base, key), value)))
        return obj, req, decision

    def apply_request(
        self,
        request_id: str,
        at: datetime | str | None = None,
        *,
        as_server: bool = False,
        note: str | None = None,
    ) -> bool:
        """Approve a pending request and apply its structural change — **the
        server's path**: ``as_server=True`` is required and bypasses the guard
        (the server applies approvals as its own change, after checking the
        approver is a supervisor of the county).

        One change: the structural edit, ``status="approved"``,
        ``decided_by``/``decided_at`` (and ``decision_note`` if ``note``),
        and an activity entry by the author (the approver) naming requester and approver.
        Returns ``False`` and writes nothing if the request is already
        approved (approving twice applies once). Raises
        :class:`InvalidValueError` (rule ``decided``) for a rejected request,
        and the schema errors if the payload or the household no longer allow
        the change (e.g. removing a member still referenced by a service or
        by recorded answers); nothing is written then.
        """
        obj, req, decision = self._decision(request_id, as_server, at, note)
        base: Path = ("change_requests", request_id)
        if req.get("status") == "approved":
            return False
        if req.get("status") != "pending":
            raise InvalidValueError((*base, "status"), "decided")

        def decide(tx: Any) -> None:
            tx.put(obj, "status", ScalarType.Str, "approved")
            for key, stype, value in decision:
                tx.put(obj, key, stype, value)

        self._apply_structural(base, req, self._by(), at, also=decide)
        return True

    def apply_decided(self, request_id: str, at: datetime | str | None = None, *,
                      as_server: bool = False) -> None:
        """Apply the structural change of a request a supervisor already approved through
        sync (its decision fields are written) — the server's path, like
        :meth:`apply_request`; the server calls it once, when it sees the request move
        from pending to approved. One change: the structural edit and an activity entry."""
        base: Path = ("change_requests", request_id)
        if not as_server:
            raise ProtectedPathError((*base, "status"), policy.PolicyRule.DECISION_FIELD.value)
        obj = self._entity("change_requests", "change request", request_id)
        req = self._read((ObjType.Map, obj))
        if req.get("status") != "approved":
            raise InvalidValueError((*base, "status"), "decided")
        self._apply_structural(base, req, str(req.get("decided_by") or SERVER_AUTHOR), at)

    def _apply_structural(self, base: Path, req: dict[str, Any], approver: str,
                          at: datetime | str | None, also: Any = None) -> None:
        """Check a request's payload against the household now, then write its structural
        change, ``also(tx)`` if given, and an activity entry naming requester and approver,
        in one change."""
        kind, payload = req.get("kind"), req.get("payload")
        if not isinstance(payload, dict):
            raise InvalidValueError((*base, "payload"), "type")
        if not isinstance(kind, str):
            raise InvalidValueError((*base, "kind"), "type")
        violations = policy.payload_violations(kind, payload, base)
        if violations:
            raise InvalidValueError(violations[0].path, violations[0].rule)
        write = self._structural(kind, payload)
        entry = _record_values(s.ACTIVITY_ENTRY, ("activity", 0), {
            "at": utc_instant(at), "by": approver, "kind": APPROVED_ACTIVITY,
            "text": f"{kind} requested by {req.get('requested_by')}, approved by {approver}"})
        activity = self._root_obj("activity")
        with self.doc.transaction() as tx:
            write(tx)
            if also is not None:
                also(tx)
            item = tx.insert_object(activity, tx.length(activity), ObjType.Map)
            for key, stype, value in entry:
                tx.put(item, key, stype, value)

    def reject_request(
        self,
        request_id: str,
        note: str | None = None,
        at: datetime | str | None = None,
        *,
        as_server: bool = False,
    ) -> bool:
        """Reject a pending request — the server's path, like :meth:`apply_request`.

        Changes nothing but the request (status and decision fields). Returns
        ``False`` if it is already rejected; raises :class:`InvalidValueError`
        (rule ``decided``) if it was approved.
        """
        obj, req, decision = self._decision(request_id, as_server, at, note)
        if req.get("status") == "rejected":
            return False
        if req.get("status") != "pending":
            raise InvalidValueError(("change_requests", request_id, "status"), "decided")
        with self.doc.transaction() as tx:
            tx.put(obj, "status", ScalarType.Str, "rejected")
            for key, stype, value in decision:
                tx.put(obj, key, stype, value)
        return True

    def _structural(self, kind: str, payload: dict[str, Any]) -> Any:
        """Check an approved request against the household now; return the
        function writing its structural change inside a transaction."""
        members = self._root_obj("members")
        if kind == "add_member":
            pid = self._new_id("members", payload["person_id"])
            values = self._member_values(pid, payload)

            def write(tx: Any) -> None:
                obj = tx.put_object(members, pid, ObjType.Map)
                for key, stype, value in values:
                    tx.put(obj, key, stype, value)

            return write
        if kind == "remove_member":
            pid = payload["person_id"]
            self._member(pid)
            answer_maps = self._answer_maps_of(pid)
            for svc in (self._read_key(ROOT, "service_plan") or {}).values():
                if isinstance(svc, dict) and svc.get("person_id") == pid:
                    raise InvalidValueError(("members", pid), "reference")
            for abroad in self.parents_abroad().values():
                if pid in (abroad.get("child_id"), abroad.get("carer_person_id")):
                    raise InvalidValueError(("members", pid), "reference")

            def write(tx: Any) -> None:
                for answers in answer_maps:
                    tx.delete(answers, pid)
                tx.delete(members, pid)

            return write
        if kind == "change_presence":
            pid = payload["person_id"]
            obj = self._member(pid)
            path: Path = ("members", pid, "presence")
            stype, v = _scalar(s.MEMBER.fields["presence"], path, payload["presence"])
            return lambda tx: tx.put(obj, "presence", stype, v)
        if kind == "change_team":
            writes = self._team_writes({k: v or None for k, v in payload.items()})
            team = self._root_obj("team")
            return lambda tx: self._write_team(tx, team, writes)
        if kind == "move_household":
            place = [(key, *_scalar(s.HOUSEHOLD.fields[key], (key,), payload[key]))
                     for key in policy.PLACE_FIELDS]

            def move(tx: Any) -> None:
                for key, stype, value in place:
                    tx.put(ROOT, key, stype, value)

            return move
        src, dst = policy.STATUS_REQUESTS[kind]
        current = self.status
        if current not in (src, dst):
            raise InvalidValueError(("status",), "transition")
        from . import case as rules_mod

        record = rules_mod.case_record(self.doc)
        case = self.doc.get(ROOT, "case")
        stage = was = None
        if record is not None and case is not None:  # an open case follows the household
            version, was = record.get("rules_version"), record.get("stage")
            rules = rules_mod.load_rules(version if isinstance(version, int) else None)
            stage = "closed" if dst == "closed" else rules.reopened_stage

        def close_or_reopen(tx: Any) -> None:
            tx.put(ROOT, "status", ScalarType.Str, dst)
            if stage is not None and case is not None:
                tx.put(case[1], "stage", ScalarType.Str, stage)
                self._append_stage(tx, stage, None,
                                   was if was in s.CASE_STAGES and was != stage else None)

        return close_or_reopen

    def _answer_maps_of(self, person_id: str) -> list[bytes]:
        """The answer maps holding ``person_id``; raises if any holds answers."""
        out = []
        assessments = self._root_obj("assessments")
        for aid in self.doc.keys(assessments):
            a = self._obj(assessments, aid)
            answers = self._obj(a, "answers") if a is not None else None
            if answers is None or self.doc.get(answers, person_id) is None:
                continue
            mine = self._obj(answers, person_id)
            if mine is not None and self.doc.keys(mine):
                raise InvalidValueError(("members", person_id), "reference")
            out.append(answers)
        return out

    def _replace_text(self, obj: bytes, text: str, path: Path) -> None:
        if not isinstance(text, str):
            raise InvalidValueError(path, "type")
        if len(text) > s.MAX_TEXT_CHARS:
            raise ValueTooLarge(path, len(text))
        with self.doc.transaction() as tx:
            tx.splice_text(obj, 0, tx.length(obj), text)  # type: ignore[attr-defined]

    # --- reads ------------------------------------------------------------

    def _read(self, entry: tuple[Any, Any]) -> Any:
        head, obj = entry
        if isinstance(head, ObjType):
            if head == ObjType.Text:
                return self.doc.text(obj)
            if head == ObjType.List:
                return [self._read(e) for e in self.doc.values(obj)]
            return {
                k: self._read(e)
                for k, e in zip(self.doc.keys(obj), self.doc.values(obj), strict=True)
            }
        return head[1]

    def _read_key(self, parent: bytes, key: str) -> Any:
        got = self.doc.get(parent, key)
        return None if got is None else self._read(got)

    def to_dict(self) -> dict[str, Any]:
        """The whole document as plain Python values (Text as ``str``)."""
        whole: dict[str, Any] = self._read((ObjType.Map, ROOT))
        return whole

    def members(self) -> dict[str, dict[str, Any]]:
        """``{person_id: {field: value}}``."""
        return self._read_key(ROOT, "members") or {}

    def activity(self) -> list[dict[str, Any]]:
        """The activity feed, oldest first."""
        return self._read_key(ROOT, "activity") or []

    @property
    def status(self) -> str | None:
        value = self._read_key(ROOT, "status")
        return value if isinstance(value, str) else None

    @property
    def locality(self) -> str | None:
        value = self._read_key(ROOT, "locality")
        return value if isinstance(value, str) else None

    @property
    def county(self) -> str | None:
        value = self._read_key(ROOT, "county")
        return value if isinstance(value, str) else None

    @property
    def notes(self) -> str:
        return self._read_key(ROOT, "notes") or ""

    def __repr__(self) -> str:
        return f"Household({self.household_id!r})"


def _joined(parts: Sequence[Any], record: Mapping[str, Any]) -> bytes | None:
    """An attachment's parts joined, or None unless they add up to its size and SHA-256."""
    if not all(isinstance(p, bytes) for p in parts):
        return None
    content = b"".join(parts)
    if len(content) != record.get("size") or \
            hashlib.sha256(content).hexdigest() != record.get("sha256"):
        return None
    return content


def _any_scalar(value: Any) -> tuple[ScalarType, Any]:
    """The Automerge scalar type for a plain Python value (conflict values)."""
    if value is None:
        return ScalarType.Null, None
    if isinstance(value, bool):
        return ScalarType.Boolean, value
    if isinstance(value, int):
        return ScalarType.Int, value
    if isinstance(value, float):
        return ScalarType.F64, value
    return ScalarType.Str, str(value)
