"""The household document, schema version 1, as data.

One household is one Automerge document. Its root map::

    schema           Int      1                                   required
    locality         Str      SIRUTA code, digits ("54975")       required
    county           Str      county code, 1-2 uppercase ("CJ")   required
    address          Str      non-empty                           required
    gps              Map      (absent until a fix is captured)    optional
        lat          F64      -90..90
        lon          F64      -180..180
        accuracy_m   F64      >= 0
        captured_at  Str      instant
    status           Str      registration | active | closed      required
    team             Map      every role optional, a user id      required
        social_worker, nurse, counsellor, case_responsible
    members          Map      person_id -> member                 required
        first_name        Str   non-empty
        last_name         Str   non-empty
        birth_date        Str   date
        sex               Str   F | M | X
        relation_to_head  Str   non-empty free text ("head", "child", ...)
        presence          Str   present | absent | moved | deceased
    assessments      Map      assessment_id -> assessment         required
        started_at        Str   instant
        completed_at      Str   instant                           optional
        by                Str   user id
        catalogue_version Int   the indicator catalogue's version     optional
                                (absent: 1; conflict/catalogue.py)
        answers           Map   person_id (a member) ->
                                Map indicator_code -> Str | Int | F64 | Boolean
                                (checked against that catalogue version: conflict/answers.py)
    service_plan     Map      service_id -> service               required
        code              Str   service code
        person_id         Str   entity id of a member
        vulnerability     Str   vulnerability code
        deadline          Str   date
        status            Str   planned | in_progress | delivered | cancelled
        delivered_at      Str   instant     optional; required when delivered
        delivered_by      Str   user id     optional; required when delivered
        note              Text
    change_requests  Map      request_id -> request               required
        kind              Str   add_member | remove_member | change_presence |
                                change_team | close_household | reopen_household |
                                move_household
        payload           Map   code -> Str | Int | F64 | Boolean (kind-specific,
                                checked by the permission policy, not here)
        reason            Str
        requested_by      Str   user id
        requested_at      Str   instant
        status            Str   pending | approved | rejected
        decided_by        Str   user id     optional
        decided_at        Str   instant     optional
        decision_note     Str               optional
    activity         List     append-only feed of maps            required
        at Str instant, by Str user id, kind Str code, text Str
    conflicts        Map      conflict_id -> conflict             required
        path              List  of Str | Int segments (a list element by its
                                id, "counter@actor": conflict/paths.py)
        values            List  of Str | Int | F64 | Boolean | Null
        detected_at       Str   instant
        resolved_by       Str   user id     optional
        resolution        Str               optional
    notes            Text                                         required
    case             Map      the case: empty until one is opened     optional
                              (households registered before cases have none)
        stage             Str   identification | detailed_assessment | planning |
                                services | monitoring | post_services | closed
        model             Str   case_management | aurora (re-assessment interval)
        rules_version     Int   the case rule table it follows (conflict/case.py)
        identified_at     Str   instant: the referral or identification
        emergency         Boolean  the initial assessment is due within the
                                emergency window                   optional
        initial_report_at Str   instant: initial assessment reported  optional
    case_history     List     append-only: each stage entered          optional
        stage Str, entered_at Str instant, by Str user id,
        from Str (the stage it moved from; absent on the entry opening the case)
    visits           Map      visit_id -> visit report               optional
        visited_on        Str   date
        place             Str   non-empty ("home", "school", ...)
        purpose           Str   non-empty
        participants      List  of Str: member ids or roles ("teacher")
        synthesis         Text
        next_visit        Str   date                               optional
        by                Str   user id
        recorded_at       Str   instant
    parents_abroad   Map      record_id -> a parent of a child working abroad
                              (GD 691/2015; conflict/household.py)  optional
        child_id          Str   entity id of a member (a child)
        parent            Str   mother | father
        country           Str   ISO 3166-1 alpha-2, not RO
        since             Str   date: when the parent left
        carer_name        Str   non-empty: the child's designated carer
        carer_relation    Str   non-empty ("grandmother")
        carer_person_id   Str   the carer, if a member             optional
        notified_on       Str   date: the parent's notification to
                                the local public social assistance service  optional
        by                Str   user id
        recorded_at       Str   instant
    referrals        Map      referral_id -> a referral to a provider of the
                              county's directory (conflict/directory.py)  optional
        person_id         Str   entity id of the member referred (kept if they leave)
                                optional (absent: the household)
        provider_id       Str   the provider's id (a UUID)
        provider_name     Str   non-empty  } the provider as it was when
        provider_kind     Str   a kind     } the family was referred
        provider_contact  Str   phone / e-mail            optional
        reason            Text
        status            Str   sent | accepted | refused | completed | cancelled
        outcome           Str   what came of it           optional
        referred_on       Str   date
        by                Str   user id (who referred)
        recorded_at       Str   instant
        status_by         Str   user id (who set the status last)  optional
        status_at         Str   instant                            optional
    attachments      Map  entity id -> attachment                  optional
        name              Str   nonempty
        media_type        Str   type/subtype
        size              Int   bytes, at most MAX_ATTACHMENT_BYTES
        sha256            Str   64 lowercase hex digits
        parts             List  of Bytes, each at most ATTACHMENT_PART_BYTES
        added_at          Str   instant
        by                Str   user id

Conventions:

* Keys of ``members``, ``assessments``, ``service_plan``, ``change_requests``
  and ``conflicts`` are entity ids (see :mod:`conflict.ids`). The household id
  is the document's sync id and is not stored in the document.
* Ids and enumerations are plain ``Str`` scalars. Numbers are ``F64`` (``Int``
  is accepted where a number is expected). Free text that several people may
  edit concurrently (``notes``, a service's ``note``) is an Automerge ``Text``.
* Dates are ``"YYYY-MM-DD"``; instants are ``"YYYY-MM-DDTHH:MM:SSZ"`` in UTC.
* An optional field is either absent or holds a value of its type; ``Null``
  is not used to mean "unset".
* ``sex`` follows the Romanian civil registry (``F``, ``M``) plus ``X`` for
  "not recorded / other", so a worker is never forced to guess.

The layout is expressed below with five spec classes (:class:`Scalar`,
:class:`Text`, :class:`Record`, :class:`MapOf`, :class:`ListOf`); the
validator and the typed :class:`~conflict.household.Household` API both read
it, so there is one source of truth for types, enumerations and formats.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from .directory import PROVIDER_KINDS, is_provider_id
from .ids import is_entity_id

__all__ = [
    "ACTIVITY_ENTRY",
    "ASSESSMENT",
    "CASE",
    "CASE_HISTORY_ENTRY",
    "CASE_MODELS",
    "CASE_STAGES",
    "CHANGE_REQUEST",
    "CONFLICT",
    "ELEMENT_ID",
    "FORMATS",
    "GPS",
    "HOUSEHOLD",
    "HOUSEHOLD_STATUSES",
    "MEMBER",
    "PARENTS",
    "PARENT_ABROAD",
    "PRESENCES",
    "REQUEST_KINDS",
    "REQUEST_STATUSES",
    "SCHEMA_VERSION",
    "SERVICE",
    "SERVICE_STATUSES",
    "SEXES",
    "TEAM",
    "TEAM_ROLES",
    "VISIT",
    "Kind",
    "ListOf",
    "MapOf",
    "Record",
    "Scalar",
    "Spec",
    "Text",
    "check_python_value",
    "check_scalar",
    "child_spec",
]

SCHEMA_VERSION = 1

#: The longest value, in characters, a device writes: a string field, or a text (the
#: notes) after an edit. Above it the SDK refuses the edit before it touches the
#: replica (``value-too-large``). Automerge keeps a text as one operation per character
#: (~300 bytes of memory each on the server and the tablet alike), and the server takes
#: at most 100,000 deletions per message: a text this long can still be replaced in one
#: edit. docs/decisions.md, decision 64.
MAX_TEXT_CHARS = 100_000

#: The biggest attachment a device adds, in bytes (a scanned report, a long note kept as
#: a file). Above it the SDK refuses it before it touches the replica
#: (``value-too-large``). Decision 66.
MAX_ATTACHMENT_BYTES = 8 * 1024 * 1024

#: Bytes in one part of an attachment: each part is written by a change of its own, so
#: the SDK can send an attachment in steps that fit any frame (client_sdk/_sync.py).
ATTACHMENT_PART_BYTES = 128 * 1024

HOUSEHOLD_STATUSES = ("registration", "active", "closed")
PRESENCES = ("present", "absent", "moved", "deceased")
SEXES = ("F", "M", "X")
SERVICE_STATUSES = ("planned", "in_progress", "delivered", "cancelled")
#: Services still to be delivered: the ones that can be overdue.
OPEN_SERVICE = ("planned", "in_progress")
REQUEST_STATUSES = ("pending", "approved", "rejected")
REQUEST_KINDS = (
    "add_member",
    "remove_member",
    "change_presence",
    "change_team",
    "close_household",
    "reopen_household",
    "move_household",
)
TEAM_ROLES = ("social_worker", "nurse", "counsellor", "case_responsible")
#: The stages of case management (Order 288/2006), in order; the legal moves between
#: them and the deadlines are the versioned rule table's (conflict/case.py).
CASE_STAGES = ("identification", "detailed_assessment", "planning", "services", "monitoring",
               "post_services", "closed")
#: Which re-assessment interval a case follows: the case-management standard's or the
#: Aurora model's (conflict/case_rules_v1.json).
CASE_MODELS = ("case_management", "aurora")


class Kind(enum.Enum):
    """The scalar type a field holds (an Automerge ``ScalarType`` family)."""

    STR = "str"
    INT = "int"
    NUMBER = "number"  # F64, or Int
    BOOL = "bool"
    SCALAR = "scalar"  # Str | Int | F64 | Boolean (indicator answers, payloads)
    SCALAR_OR_NULL = "scalar_or_null"
    SEGMENT = "segment"  # Str | Int (a path segment)
    BYTES = "bytes"  # Bytes (a part of an attachment)


# --- formats -------------------------------------------------------------

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INSTANT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_SIRUTA_RE = re.compile(r"\d{1,6}")
_COUNTY_RE = re.compile(r"[A-Z]{1,2}")
_USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
ELEMENT_ID = re.compile(r"[0-9]{1,19}@[0-9a-f]{2,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COUNTRY_RE = re.compile(r"[A-Z]{2}")
_MEDIA_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,62}/[a-z0-9][a-z0-9.+-]{0,62}")
"""A list element's id in a path: its creating operation's counter, ``@``, the actor in
hex (Automerge's notation for an object id; see :mod:`conflict.paths`)."""


def _is_date(v: object) -> bool:
    if not isinstance(v, str) or not _DATE_RE.fullmatch(v):
        return False
    try:
        date.fromisoformat(v)
    except ValueError:
        return False
    return True


def _is_instant(v: object) -> bool:
    if not isinstance(v, str) or not _INSTANT_RE.fullmatch(v):
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def _matches(pattern: re.Pattern[str]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


def _in_range(lo: float, hi: float) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int | float) and lo <= v <= hi


FORMATS: Mapping[str, Callable[[object], bool]] = {
    "nonempty": lambda v: isinstance(v, str) and v.strip() != "",
    "date": _is_date,
    "instant": _is_instant,
    "siruta": _matches(_SIRUTA_RE),
    "county": _matches(_COUNTY_RE),
    "entity_id": is_entity_id,
    "user_id": _matches(_USER_ID_RE),
    "code": _matches(_CODE_RE),
    "latitude": _in_range(-90.0, 90.0),
    "longitude": _in_range(-180.0, 180.0),
    "non_negative": _in_range(0.0, math.inf),
    "positive": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "attachment_size": lambda v: (isinstance(v, int) and not isinstance(v, bool)
                                  and 0 <= v <= MAX_ATTACHMENT_BYTES),
    "sha256": _matches(_SHA256_RE),
    # a country abroad: ISO 3166-1 alpha-2, and not Romania
    "country": lambda v: isinstance(v, str) and _COUNTRY_RE.fullmatch(v) is not None
    and v != "RO",
    "media_type": _matches(_MEDIA_TYPE_RE),
    "provider_id": is_provider_id,
    "part": lambda v: isinstance(v, bytes) and len(v) <= ATTACHMENT_PART_BYTES,
    "schema_version": lambda v: v == SCHEMA_VERSION,
}
"""Named value formats: name -> predicate over the plain Python value."""


# --- spec classes --------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    """A scalar field. ``ref="members"``: the value must be a member id."""

    kind: Kind
    required: bool = True
    enum: tuple[str, ...] | None = None
    format: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class Text:
    """An Automerge Text object."""

    required: bool = True


@dataclass(frozen=True)
class Record:
    """A map with a fixed set of fields; any other key is an unknown field."""

    fields: Mapping[str, Spec]
    required: bool = True


@dataclass(frozen=True)
class MapOf:
    """A map from free keys (checked by ``key_format``/``key_ref``) to ``values``."""

    values: Spec
    key_format: str | None = None
    key_ref: str | None = None
    required: bool = True


@dataclass(frozen=True)
class ListOf:
    """A list whose every item follows ``items``."""

    items: Spec
    required: bool = True


Spec = Scalar | Text | Record | MapOf | ListOf


def _s(fmt: str | None = None, *, required: bool = True, ref: str | None = None) -> Scalar:
    return Scalar(Kind.STR, required=required, format=fmt, ref=ref)


def _enum(values: tuple[str, ...]) -> Scalar:
    return Scalar(Kind.STR, enum=values)


# --- the layout ----------------------------------------------------------

GPS = Record(
    {
        "lat": Scalar(Kind.NUMBER, format="latitude"),
        "lon": Scalar(Kind.NUMBER, format="longitude"),
        "accuracy_m": Scalar(Kind.NUMBER, format="non_negative"),
        "captured_at": _s("instant"),
    },
    required=False,
)

TEAM = Record({role: _s("user_id", required=False) for role in TEAM_ROLES})

MEMBER = Record(
    {
        "first_name": _s("nonempty"),
        "last_name": _s("nonempty"),
        "birth_date": _s("date"),
        "sex": _enum(SEXES),
        "relation_to_head": _s("nonempty"),
        "presence": _enum(PRESENCES),
    }
)

ASSESSMENT = Record(
    {
        "started_at": _s("instant"),
        "completed_at": _s("instant", required=False),
        "by": _s("user_id"),
        "catalogue_version": Scalar(Kind.INT, required=False, format="positive"),
        "answers": MapOf(
            MapOf(Scalar(Kind.SCALAR), key_format="code"),
            key_format="entity_id",
            key_ref="members",
        ),
    }
)

SERVICE = Record(
    {
        "code": _s("code"),
        "person_id": _s("entity_id", ref="members"),
        "vulnerability": _s("code"),
        "deadline": _s("date"),
        "status": _enum(SERVICE_STATUSES),
        "delivered_at": _s("instant", required=False),
        "delivered_by": _s("user_id", required=False),
        "note": Text(),
    }
)

CHANGE_REQUEST = Record(
    {
        "kind": _enum(REQUEST_KINDS),
        "payload": MapOf(Scalar(Kind.SCALAR), key_format="code"),
        "reason": _s(),
        "requested_by": _s("user_id"),
        "requested_at": _s("instant"),
        "status": _enum(REQUEST_STATUSES),
        "decided_by": _s("user_id", required=False),
        "decided_at": _s("instant", required=False),
        "decision_note": _s(required=False),
    }
)

ACTIVITY_ENTRY = Record(
    {
        "at": _s("instant"),
        "by": _s("user_id"),
        "kind": _s("code"),
        "text": _s(),
    }
)

ATTACHMENT = Record(
    {
        "name": _s("nonempty"),
        "media_type": _s("media_type"),
        "size": Scalar(Kind.INT, format="attachment_size"),
        "sha256": _s("sha256"),
        "parts": ListOf(Scalar(Kind.BYTES, format="part")),
        "added_at": _s("instant"),
        "by": _s("user_id"),
    }
)
"""A file kept with the household: its bytes in ``parts`` of at most
:data:`ATTACHMENT_PART_BYTES`, in order; ``size`` and ``sha256`` say what they add up to
(a copy whose parts have not all arrived yet is incomplete, not invalid)."""

CASE = Record(
    {
        # all optional to the schema: the section is made empty at registration, and a
        # case is open once it has a stage (conflict/case.py checks an open one is whole)
        "stage": Scalar(Kind.STR, required=False, enum=CASE_STAGES),
        "model": Scalar(Kind.STR, required=False, enum=CASE_MODELS),
        "rules_version": Scalar(Kind.INT, required=False, format="positive"),
        "identified_at": _s("instant", required=False),
        "emergency": Scalar(Kind.BOOL, required=False),
        "initial_report_at": _s("instant", required=False),
    },
    required=False,
)

CASE_HISTORY_ENTRY = Record({"stage": _enum(CASE_STAGES), "entered_at": _s("instant"),
                             "by": _s("user_id"),
                             # the stage its writer moved the case from (absent: opened)
                             "from": Scalar(Kind.STR, required=False, enum=CASE_STAGES)})

VISIT = Record(
    {
        "visited_on": _s("date"),
        "place": _s("nonempty"),
        "purpose": _s("nonempty"),
        "participants": ListOf(_s("nonempty")),
        "synthesis": Text(),
        "next_visit": _s("date", required=False),
        "by": _s("user_id"),
        "recorded_at": _s("instant"),
    }
)
"""A visit report: what the method's detailed assessment and monitoring stand on."""

PARENTS = ("mother", "father")

PARENT_ABROAD = Record(
    {
        "child_id": _s("entity_id", ref="members"),
        "parent": _enum(PARENTS),
        "country": _s("country"),
        "since": _s("date"),
        "carer_name": _s("nonempty"),
        "carer_relation": _s("nonempty"),
        "carer_person_id": _s("entity_id", required=False, ref="members"),
        "notified_on": _s("date", required=False),
        "by": _s("user_id"),
        "recorded_at": _s("instant"),
    }
)
"""A parent of a child who works abroad: what the annex of GD 691/2015 needs."""

#: A referral's course: sent, then the provider accepts or refuses it; an accepted one is
#: completed (the service was given); either side may cancel it.
REFERRAL_STATUSES = ("sent", "accepted", "refused", "completed", "cancelled")

REFERRAL = Record(
    {
        # absent: the household. Not a live reference: the record stays when the member
        # leaves the household (Household.refer checks the member when it is made).
        "person_id": _s("entity_id", required=False),
        "provider_id": _s("provider_id"),
        "provider_name": _s("nonempty"),
        "provider_kind": _enum(PROVIDER_KINDS),
        "provider_contact": _s(required=False),
        "reason": Text(),
        "status": _enum(REFERRAL_STATUSES),
        "outcome": _s(required=False),
        "referred_on": _s("date"),
        "by": _s("user_id"),
        "recorded_at": _s("instant"),
        "status_by": _s("user_id", required=False),
        "status_at": _s("instant", required=False),
    }
)
"""A referral to a provider of the county's directory (conflict/directory.py), with the
provider's name, kind and contact as they were when the family was referred."""

WRITER = Record({"by": _s("user_id"), "at": _s("instant")})
"""Who wrote one of a conflict's values, and when the server received it."""

CONFLICT = Record(
    {
        "path": ListOf(Scalar(Kind.SEGMENT)),
        "values": ListOf(Scalar(Kind.SCALAR_OR_NULL)),
        # written[i] is who wrote values[i] (optional: records made before it existed)
        "written": ListOf(WRITER, required=False),
        "detected_at": _s("instant"),
        "resolved_by": _s("user_id", required=False),
        "resolution": _s(required=False),
    }
)

HOUSEHOLD = Record(
    {
        "schema": Scalar(Kind.INT, format="schema_version"),
        "locality": _s("siruta"),
        "county": _s("county"),
        "address": _s("nonempty"),
        "gps": GPS,
        "status": _enum(HOUSEHOLD_STATUSES),
        "team": TEAM,
        "members": MapOf(MEMBER, key_format="entity_id"),
        "assessments": MapOf(ASSESSMENT, key_format="entity_id"),
        "service_plan": MapOf(SERVICE, key_format="entity_id"),
        "change_requests": MapOf(CHANGE_REQUEST, key_format="entity_id"),
        "activity": ListOf(ACTIVITY_ENTRY),
        "conflicts": MapOf(CONFLICT, key_format="entity_id"),
        "notes": Text(),
        # optional: households registered before cases and visit reports existed have none
        "case": CASE,
        "case_history": ListOf(CASE_HISTORY_ENTRY, required=False),
        "visits": MapOf(VISIT, key_format="entity_id", required=False),
        "parents_abroad": MapOf(PARENT_ABROAD, key_format="entity_id", required=False),
        "referrals": MapOf(REFERRAL, key_format="entity_id", required=False),
        # optional: households registered before attachments existed have none
        "attachments": MapOf(ATTACHMENT, key_format="entity_id", required=False),
    }
)
"""The root of a household document."""


# --- checks shared by the validator and the typed API ---------------------


def check_scalar(spec: Scalar, value: object) -> str | None:
    """Check a value already known to have the right type against ``spec``.

    Returns the violated rule name (``"enum"``, ``"format"`` or
    ``"schema-version"``) or ``None``. References are not checked here: they
    need the document.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "format"
    if spec.enum is not None and value not in spec.enum:
        return "enum"
    if spec.format is not None and not FORMATS[spec.format](value):
        return "schema-version" if spec.format == "schema_version" else "format"
    return None


def _python_type_ok(kind: Kind, value: object) -> bool:
    if kind is Kind.SCALAR_OR_NULL and value is None:
        return True
    if isinstance(value, bytes):
        return kind is Kind.BYTES
    if isinstance(value, bool):
        return kind in (Kind.BOOL, Kind.SCALAR, Kind.SCALAR_OR_NULL)
    if isinstance(value, int):
        return kind not in (Kind.STR, Kind.BOOL, Kind.BYTES)
    if isinstance(value, float):
        return kind in (Kind.NUMBER, Kind.SCALAR, Kind.SCALAR_OR_NULL)
    if isinstance(value, str):
        return kind in (Kind.STR, Kind.SCALAR, Kind.SCALAR_OR_NULL, Kind.SEGMENT)
    return False


def check_python_value(spec: Scalar, value: object) -> str | None:
    """Check a Python value about to be written; returns a rule name or ``None``."""
    if not _python_type_ok(spec.kind, value):
        return "type"
    return check_scalar(spec, value)


def child_spec(spec: Spec, segment: str | int) -> Spec | None:
    """The spec of ``segment`` under ``spec``, or ``None`` if the schema has none."""
    if isinstance(spec, Record):
        return spec.fields.get(segment) if isinstance(segment, str) else None
    if isinstance(spec, MapOf):
        return spec.values if isinstance(segment, str) else None
    if isinstance(spec, ListOf):  # a position, or an element's id (conflict.paths)
        return spec.items if isinstance(segment, int) or ELEMENT_ID.fullmatch(segment) else None
    return None
