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

The API does not enforce the permission policy (who may change protected
paths once a household is active); that is a separate layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from . import schema as s
from .ids import is_household_id, new_entity_id, new_household_id
from .validate import Path, format_path

__all__ = ["Household", "InvalidValueError", "UnknownEntityError", "utc_instant"]

REGISTERED_ACTIVITY = "registered"

_SCALAR_TYPE = {
    s.Kind.STR: ScalarType.Str,
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


class InvalidValueError(ValueError):
    """An argument would violate the schema; nothing was written."""

    def __init__(self, path: Path, rule: str) -> None:
        super().__init__(f"{format_path(path)}: {rule}")
        self.path = path
        self.rule = rule


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


def _record_values(spec: s.Record, path: Path, values: Mapping[str, Any]) -> list[tuple]:
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

    def __init__(self, doc: Document, household_id: str) -> None:
        if not is_household_id(household_id):
            raise ValueError("not a household id")
        self.doc = doc
        self.household_id = household_id

    # --- creation ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        locality: str,
        county: str,
        address: str,
        created_by: str,
        team: Mapping[str, str] | None = None,
        household_id: str | None = None,
        actor_id: bytes | None = None,
        at: datetime | str | None = None,
    ) -> Household:
        """Create a new household: the whole skeleton in one change.

        Status starts as ``"registration"``; the activity feed gets a first
        ``"registered"`` entry by ``created_by``.
        """
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
        team_values = _record_values(s.TEAM, ("team",), team or {})
        unknown = set(team or {}) - set(s.TEAM_ROLES)
        if unknown:
            raise InvalidValueError(("team", sorted(unknown)[0]), "unknown-field")
        entry = _record_values(
            s.ACTIVITY_ENTRY,
            ("activity", 0),
            {"at": utc_instant(at), "by": created_by, "kind": REGISTERED_ACTIVITY, "text": ""},
        )

        doc = Document(actor_id=actor_id) if actor_id is not None else Document()
        with doc.transaction() as tx:
            for key, stype, value in root:
                tx.put(ROOT, key, stype, value)
            team_obj = tx.put_object(ROOT, "team", ObjType.Map)
            for key, stype, value in team_values:
                tx.put(team_obj, key, stype, value)
            for key in ("members", "assessments", "service_plan", "change_requests", "conflicts"):
                tx.put_object(ROOT, key, ObjType.Map)
            activity = tx.put_object(ROOT, "activity", ObjType.List)
            first = tx.insert_object(activity, 0, ObjType.Map)
            for key, stype, value in entry:
                tx.put(first, key, stype, value)
            tx.put_object(ROOT, "notes", ObjType.Text)
        return cls(doc, household_id)

    # --- lookup helpers ---------------------------------------------------

    def _obj(self, parent: bytes, key: str | int) -> bytes | None:
        got = self.doc.get(parent, key)
        if got is None or not isinstance(got[0], ObjType):
            return None
        return got[1]

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
        """Add a member; returns the person id (new UUID4 unless given)."""
        person_id = self._new_id("members", person_id)
        values = _record_values(
            s.MEMBER,
            ("members", person_id),
            {
                "first_name": first_name,
                "last_name": last_name,
                "birth_date": _date_str(birth_date),
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
        """Set one field of a member (e.g. ``presence``)."""
        obj = self._member(person_id)
        path: Path = ("members", person_id, field)
        spec = s.MEMBER.fields.get(field)
        if spec is None:
            raise InvalidValueError(path, "unknown-field")
        if field == "birth_date":
            value = _date_str(value)
        stype, v = _scalar(spec, path, value)
        with self.doc.transaction() as tx:
            tx.put(obj, field, stype, v)

    def set_address(self, address: str) -> None:
        """Replace the address."""
        self._put_root_field("address", address)

    def set_status(self, status: str) -> None:
        """Set the household status (registration | active | closed)."""
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
        """Set team roles by name (``set_team(nurse="u-12")``); ``None`` removes one."""
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
        team = self._root_obj("team")
        with self.doc.transaction() as tx:
            for role, stype, value in writes:
                if stype is None:
                    if tx.get(team, role) is not None:
                        tx.delete(team, role)
                else:
                    tx.put(team, role, stype, value)

    def start_assessment(
        self,
        by: str,
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
            s.ASSESSMENT, ("assessments", assessment_id), {"started_at": utc_instant(at), "by": by}
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
        """Record indicator answers for one member (an empty mapping writes nothing)."""
        obj = self._entity("assessments", "assessment", assessment_id)
        self._member(person_id)
        base: Path = ("assessments", assessment_id, "answers", person_id)
        answer_spec = s.ASSESSMENT.fields["answers"].values  # type: ignore[union-attr]
        writes = []
        for code, value in answers.items():
            if not s.FORMATS[answer_spec.key_format](code):
                raise InvalidValueError((*base, code), "format")
            writes.append((code, *_scalar(answer_spec.values, (*base, code), value)))
        answers_obj = self._obj(obj, "answers")
        if answers_obj is None:
            raise InvalidValueError(base[:-1], "missing")
        person_obj = self._obj(answers_obj, person_id)
        with self.doc.transaction() as tx:
            if person_obj is None and writes:
                person_obj = tx.put_object(answers_obj, person_id, ObjType.Map)
            for code, stype, value in writes:
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
        """Plan a service for a member (status ``planned``); returns its id."""
        self._member(person_id)
        service_id = self._new_id("service_plan", service_id)
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
        by: str,
        at: datetime | str | None = None,
    ) -> None:
        """Set a service's status; ``delivered`` also records when and by whom.

        Leaving ``delivered`` keeps ``delivered_at``/``delivered_by`` (so a
        concurrent merge never yields a delivered service without them).
        Forward-only ordering is a merge policy, not enforced here.
        """
        obj = self._entity("service_plan", "service", service_id)
        base: Path = ("service_plan", service_id)
        writes = [("status", *_scalar(s.SERVICE.fields["status"], (*base, "status"), status))]
        by_spec = s.SERVICE.fields["delivered_by"]
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
        else:
            _scalar(by_spec, (*base, "delivered_by"), by)  # still a user id
        with self.doc.transaction() as tx:
            for key, stype, value in writes:
                tx.put(obj, key, stype, value)

    def set_service_note(self, service_id: str, text: str) -> None:
        """Replace a service's note text."""
        obj = self._entity("service_plan", "service", service_id)
        note = self._obj(obj, "note")
        if note is None:
            raise InvalidValueError(("service_plan", service_id, "note"), "missing")
        self._replace_text(note, text)

    def append_activity(
        self, by: str, kind: str, text: str, at: datetime | str | None = None
    ) -> None:
        """Append an entry to the activity feed."""
        activity = self._root_obj("activity")
        n = self.doc.length(activity)
        values = _record_values(
            s.ACTIVITY_ENTRY,
            ("activity", n),
            {"at": utc_instant(at), "by": by, "kind": kind, "text": text},
        )
        with self.doc.transaction() as tx:
            obj = tx.insert_object(activity, n, ObjType.Map)
            for key, stype, value in values:
                tx.put(obj, key, stype, value)

    def set_notes(self, text: str) -> None:
        """Replace the whole notes text (one splice)."""
        self._replace_text(self._root_obj("notes"), text)

    def append_notes(self, text: str) -> None:
        """Append to the notes text."""
        if not isinstance(text, str):
            raise InvalidValueError(("notes",), "type")
        notes = self._root_obj("notes")
        with self.doc.transaction() as tx:
            tx.splice_text(notes, tx.length(notes), 0, text)

    def _replace_text(self, obj: bytes, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidValueError(("notes",), "type")
        with self.doc.transaction() as tx:
            tx.splice_text(obj, 0, tx.length(obj), text)

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
        return self._read((ObjType.Map, ROOT))

    def members(self) -> dict[str, dict[str, Any]]:
        """``{person_id: {field: value}}``."""
        return self._read_key(ROOT, "members") or {}

    def activity(self) -> list[dict[str, Any]]:
        """The activity feed, oldest first."""
        return self._read_key(ROOT, "activity") or []

    @property
    def status(self) -> str | None:
        return self._read_key(ROOT, "status")

    @property
    def locality(self) -> str | None:
        return self._read_key(ROOT, "locality")

    @property
    def county(self) -> str | None:
        return self._read_key(ROOT, "county")

    @property
    def notes(self) -> str:
        return self._read_key(ROOT, "notes") or ""

    def __repr__(self) -> str:
        return f"Household({self.household_id!r})"
