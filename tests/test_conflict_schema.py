"""Schema version 1 of the household document: ids, validator, typed API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from automerge.core import ROOT, Document, ObjType, ScalarType
from hypothesis import given, settings
from hypothesis import strategies as st

import conflict
from conflict import (
    Household,
    InvalidValueError,
    UnknownEntityError,
    Violation,
    is_entity_id,
    is_household_id,
    new_entity_id,
    new_household_id,
    validate,
)
from conflict import schema as s
from conflict.catalogue import Indicator, load_catalogue

ACTOR = bytes(range(16))


def make(**kw) -> Household:
    args = {"locality": "54975", "county": "CJ", "address": "Str. Lunga 3", "author": "w-1"}
    args.update(kw)
    return Household.create(**args)


def populated() -> tuple[Household, str, str, str]:
    """A household with one member, one assessment with answers, one service."""
    h = make(team={"social_worker": "w-1", "nurse": "n-1"})
    pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    aid = h.as_author("w-1").start_assessment()
    h.record_answers(aid, pid, {"family_doctor_registered": False, "school_grade": 3})
    sid = h.plan_service("information", pid, "child_no_family_doctor", "2025-02-01")
    return h, pid, aid, sid


def n_changes(h: Household) -> int:
    return len(h.doc.get_changes([]))


def rules(violations: list[Violation]) -> set[tuple[tuple, str]]:
    return {(v.path, v.rule) for v in violations}


def obj(doc: Document, *path: str | int) -> bytes:
    cur = ROOT
    for seg in path:
        got = doc.get(cur, seg)
        assert got is not None and isinstance(got[0], ObjType)
        cur = got[1]
    return cur


# --- public surface -------------------------------------------------------


def test_exported_names_are_exactly_the_public_api():
    assert set(conflict.__all__) == {
        "SERVER_AUTHOR",
        "AuthorRequired",
        "HOUSEHOLD_STATUSES",
        "PRESENCES",
        "REQUEST_KINDS",
        "REQUEST_STATUSES",
        "SCHEMA_VERSION",
        "SERVICE_STATUSES",
        "SEXES",
        "TEAM_ROLES",
        "Household",
        "InvalidValueError",
        "Rule",
        "UnknownEntityError",
        "ValueTooLarge",
        "Violation",
        "format_path",
        "is_entity_id",
        "is_household_id",
        "new_entity_id",
        "new_household_id",
        "utc_instant",
        "validate",
    }
    for name in conflict.__all__:
        assert hasattr(conflict, name)


def test_enumerations():
    assert conflict.SCHEMA_VERSION == 1
    assert conflict.HOUSEHOLD_STATUSES == ("registration", "active", "closed")
    assert conflict.PRESENCES == ("present", "absent", "moved", "deceased")
    assert conflict.SEXES == ("F", "M", "X")
    assert conflict.SERVICE_STATUSES == ("planned", "in_progress", "delivered", "cancelled")
    assert conflict.REQUEST_STATUSES == ("pending", "approved", "rejected")
    assert set(conflict.REQUEST_KINDS) == {
        "add_member",
        "remove_member",
        "change_presence",
        "change_team",
        "close_household",
        "reopen_household",
        "move_household",
    }
    assert set(s.HOUSEHOLD.fields) == {
        "schema", "locality", "county", "address", "gps", "status", "team", "members",
        "assessments", "service_plan", "change_requests", "activity", "conflicts", "notes",
        "attachments", "case", "case_history", "visits", "parents_abroad", "referrals",
    }  # fmt: skip
    assert s.CASE_STAGES == ("identification", "detailed_assessment", "planning", "services",
                             "monitoring", "post_services", "closed")


# --- ids ------------------------------------------------------------------


def test_household_ids():
    a, b = new_household_id(), new_household_id()
    assert a != b
    assert is_household_id(a) and is_household_id(b)
    tampered = a[:-1] + ("2" if a[-1] != "2" else "3")
    for bad in ["", "abc", tampered, a + "x", "automerge:" + a, str(uuid.uuid4()), None, 42]:
        assert not is_household_id(bad), bad


def test_entity_ids():
    e = new_entity_id()
    assert is_entity_id(e) and uuid.UUID(e).version == 4
    assert new_entity_id() != e
    # a UUID7: version nibble 7, RFC 4122 variant
    v7 = uuid.UUID(int=(uuid.uuid4().int & ~(0xF << 76)) | (0x7 << 76))
    assert v7.version == 7
    assert is_entity_id(str(v7))
    for bad in [e.upper(), e.replace("-", ""), str(uuid.uuid1()), "", "x" * 36, None, 7]:
        assert not is_entity_id(bad), bad


# --- creation -------------------------------------------------------------


def test_created_household_validates_clean_and_has_the_skeleton():
    at = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    h = make(team={"social_worker": "w-1"}, actor_id=ACTOR, at=at)
    assert validate(h.doc) == []
    assert n_changes(h) == 1
    assert h.doc.get_actor() == ACTOR
    assert is_household_id(h.household_id)
    assert h.status == "registration"
    assert (h.locality, h.county, h.notes) == ("54975", "CJ", "")
    assert h.activity() == [
        {"at": "2025-03-01T09:30:00Z", "by": "w-1", "kind": "registered", "text": ""}
    ]
    d = h.to_dict()
    assert d["schema"] == 1 and d["team"] == {"social_worker": "w-1"}
    for key in ("members", "assessments", "service_plan", "change_requests", "conflicts"):
        assert d[key] == {}
    assert "gps" not in d
    assert h.household_id not in repr(d)  # the sync id is not stored in the document
    assert h.doc.get(ROOT, "notes")[0] == ObjType.Text


def test_create_with_given_id_and_wrapping():
    hid = new_household_id()
    h = make(household_id=hid)
    assert h.household_id == hid
    again = Household(Document.load(h.doc.save()), hid)
    assert again.to_dict() == h.to_dict()
    with pytest.raises(ValueError):
        Household(h.doc, "not-an-id")
    with pytest.raises(ValueError):
        make(household_id="not-an-id")


@pytest.mark.parametrize(
    ("kw", "path", "rule"),
    [
        ({"locality": "Cluj"}, ("locality",), "format"),
        ({"county": "cj"}, ("county",), "format"),
        ({"county": "CJX"}, ("county",), "format"),
        ({"address": ""}, ("address",), "format"),
        ({"author": ""}, ("activity", 0, "by"), "format"),
        ({"team": {"nurse": 5}}, ("team", "nurse"), "type"),
        ({"team": {"janitor": "u-1"}}, ("team", "janitor"), "unknown-field"),
        ({"at": "yesterday"}, ("activity", 0, "at"), "format"),
    ],
)
def test_create_rejects_invalid_arguments(kw, path, rule):
    with pytest.raises(InvalidValueError) as exc:
        make(**kw)
    assert (exc.value.path, exc.value.rule) == (path, rule)


# --- edits: one change each, still valid ------------------------------------

EDITS: dict[str, Callable[[Household, str, str, str], object]] = {
    "add_member": lambda h, p, a, sv: h.add_member("Ion", "Pop", date(1980, 1, 2), "M", "head"),
    "set_member_field": lambda h, p, a, sv: h.set_member_field(p, "presence", "moved"),
    "set_member_birth_date": lambda h, p, a, sv: h.set_member_field(p, "birth_date", "2015-05-01"),
    "set_address": lambda h, p, a, sv: h.set_address("Str. Scurta 1"),
    "set_gps": lambda h, p, a, sv: h.set_gps(46.77, 23.59, 4.5),
    "set_status": lambda h, p, a, sv: h.set_status("active"),
    "set_team": lambda h, p, a, sv: h.set_team(counsellor="c-1", nurse=None),
    "start_assessment": lambda h, p, a, sv: h.as_author("w-1").start_assessment(),
    "record_answers": lambda h, p, a, sv: h.record_answers(a, p, {"school_enrolled": True,
                                                                 "school_grade": 2}),
    "complete_assessment": lambda h, p, a, sv: h.complete_assessment(a),
    "plan_service": lambda h, p, a, sv: h.plan_service("counselling", p, "school_dropout", "2025-03-01"),
    "set_service_status": lambda h, p, a, sv: h.as_author("w-1").set_service_status(sv, "in_progress"),
    "deliver_service": lambda h, p, a, sv: h.as_author("n-1").set_service_status(sv, "delivered"),
    "set_service_note": lambda h, p, a, sv: h.set_service_note(sv, "called the doctor"),
    "append_activity": lambda h, p, a, sv: h.as_author("w-1").append_activity("visit", "home visit"),
    "set_notes": lambda h, p, a, sv: h.set_notes("first visit"),
    "append_notes": lambda h, p, a, sv: h.append_notes(" — follow up"),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_every_edit_is_one_change_and_stays_valid(name):
    h, pid, aid, sid = populated()
    before = n_changes(h)
    EDITS[name](h, pid, aid, sid)
    assert n_changes(h) == before + 1
    assert validate(h.doc) == []


def test_edits_are_visible_in_reads():
    h, pid, aid, sid = populated()
    h.set_member_field(pid, "presence", "absent")
    h.as_author("n-1").set_service_status(sid, "delivered", at="2025-01-05T10:00:00Z")
    h.set_notes("ăîșț 😀")
    h.set_notes("short")
    h.append_notes("!")
    h.set_gps(46, 23, 10, captured_at=datetime(2025, 1, 1, 12, 0))
    d = h.to_dict()
    assert h.members()[pid]["presence"] == "absent"
    svc = d["service_plan"][sid]
    assert (svc["status"], svc["delivered_at"], svc["delivered_by"]) == (
        "delivered",
        "2025-01-05T10:00:00Z",
        "n-1",
    )
    assert h.notes == "short!"
    assert d["gps"] == {"lat": 46.0, "lon": 23.0, "accuracy_m": 10.0,
                        "captured_at": "2025-01-01T12:00:00Z"}  # fmt: skip
    assert d["assessments"][aid]["answers"][pid] == {"family_doctor_registered": False, "school_grade": 3}


def test_start_assessment_precreates_answer_maps_for_current_members():
    h, pid, _, _ = populated()
    aid = h.as_author("w-1").start_assessment()
    assert h.to_dict()["assessments"][aid]["answers"] == {pid: {}}


def test_unknown_ids_raise_a_key_error_naming_the_kind():
    h, pid, aid, _ = populated()
    missing = new_entity_id()
    cases = [
        ("member", lambda: h.set_member_field(missing, "presence", "absent")),
        ("member", lambda: h.record_answers(aid, missing, {"school_grade": 1})),
        ("member", lambda: h.plan_service("information", missing, "school_absenteeism", "2025-01-01")),
        ("assessment", lambda: h.record_answers(missing, pid, {"school_grade": 1})),
        ("assessment", lambda: h.complete_assessment(missing)),
        ("service", lambda: h.as_author("w-1").set_service_status(missing, "delivered")),
    ]
    before = n_changes(h)
    for kind, call in cases:
        with pytest.raises(KeyError) as exc:
            call()
        assert isinstance(exc.value, UnknownEntityError)
        assert exc.value.kind == kind
        assert kind in str(exc.value)
    assert n_changes(h) == before


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        (lambda h, p, a, sv: h.add_member("A", "B", "2015-04-01", "Q", "child"), "enum"),
        (lambda h, p, a, sv: h.add_member("A", "B", "01.04.2015", "F", "child"), "format"),
        (lambda h, p, a, sv: h.add_member("", "B", "2015-04-01", "F", "child"), "format"),
        (lambda h, p, a, sv: h.add_member("A", "B", "2015-04-01", "F", "x", "gone"), "enum"),
        (
            lambda h, p, a, sv: h.add_member("A", "B", "2015-04-01", "F", "x", person_id="7"),
            "format",
        ),
        (lambda h, p, a, sv: h.set_member_field(p, "presence", "lost"), "enum"),
        (lambda h, p, a, sv: h.set_member_field(p, "nickname", "Ani"), "unknown-field"),
        (lambda h, p, a, sv: h.set_member_field(p, "first_name", 3), "type"),
        (lambda h, p, a, sv: h.set_status("archived"), "enum"),
        (lambda h, p, a, sv: h.set_team(janitor="u-1"), "unknown-field"),
        (lambda h, p, a, sv: h.set_gps(91, 23, 5), "format"),
        (lambda h, p, a, sv: h.set_gps(46, 23, -1), "format"),
        (lambda h, p, a, sv: h.set_gps(float("nan"), 23, 5), "format"),
        (lambda h, p, a, sv: h.set_gps("46", 23, 5), "type"),
        (lambda h, p, a, sv: h.record_answers(a, p, {"school_grade": 1, "bad code": 1}), "format"),
        (lambda h, p, a, sv: h.record_answers(a, p, {"school_grade": [1]}), "type"),
        (lambda h, p, a, sv: h.plan_service("information", p, "school_absenteeism", "soon"), "format"),
        (lambda h, p, a, sv: h.as_author("w-1").set_service_status(sv, "done"), "enum"),
        (lambda h, p, a, sv: h.as_author("").set_service_status(sv, "delivered"), "format"),
        (lambda h, p, a, sv: h.as_author("w-1").append_activity("", "text"), "format"),
        (lambda h, p, a, sv: h.as_author("w-1").start_assessment(at="2025-02-30T00:00:00Z"), "format"),
        (lambda h, p, a, sv: h.set_notes(None), "type"),
    ],
)
def test_invalid_arguments_raise_before_anything_is_written(call, rule):
    h, pid, aid, sid = populated()
    before = h.to_dict()
    count = n_changes(h)
    with pytest.raises(ValueError) as exc:
        call(h, pid, aid, sid)
    assert isinstance(exc.value, InvalidValueError)
    assert exc.value.rule == rule
    assert n_changes(h) == count
    assert h.to_dict() == before


def test_invalid_value_error_does_not_contain_the_value():
    h, pid, _, _ = populated()
    with pytest.raises(InvalidValueError) as exc:
        h.set_member_field(pid, "sex", "SECRET-VALUE")
    assert "SECRET-VALUE" not in str(exc.value)
    assert exc.value.path == ("members", pid, "sex")


def test_duplicate_entity_id_is_refused():
    h, pid, _, _ = populated()
    with pytest.raises(ValueError):
        h.add_member("A", "B", "2015-04-01", "F", "child", person_id=pid)


def test_round_trip_through_save_and_load():
    h, pid, aid, sid = populated()
    for name in sorted(EDITS):
        EDITS[name](h, pid, aid, sid)
    loaded = Household(Document.load(h.doc.save()), h.household_id)
    assert loaded.to_dict() == h.to_dict()
    assert validate(loaded.doc) == []


# --- the validator: each violation class -----------------------------------


def corrupt(mutate: Callable[[Household, object, str, str, str], None]) -> tuple[Household, str]:
    """A valid populated household, then one raw transaction from ``mutate``."""
    h, pid, aid, sid = populated()
    with h.doc.transaction() as tx:
        mutate(h, tx, pid, aid, sid)
    return h, pid


def test_missing_field():
    h, pid = corrupt(lambda h, tx, p, a, sv: tx.delete(obj(h.doc, "members", p), "birth_date"))
    [v] = validate(h.doc)
    assert (v.path, v.rule) == (("members", pid, "birth_date"), "missing")


def test_missing_root_field():
    h, _ = corrupt(lambda h, tx, p, a, sv: tx.delete(ROOT, "locality"))
    assert rules(validate(h.doc)) == {(("locality",), "missing")}


def test_wrong_scalar_type():
    h, pid = corrupt(
        lambda h, tx, p, a, sv: tx.put(obj(h.doc, "members", p), "first_name", ScalarType.Int, 7)
    )
    assert rules(validate(h.doc)) == {(("members", pid, "first_name"), "type")}


def test_object_where_a_scalar_belongs_and_vice_versa():
    def mutate(h, tx, p, a, sv):
        tx.put_object(ROOT, "status", ObjType.Map)
        tx.put(ROOT, "notes", ScalarType.Str, "plain string, not Text")
        tx.put(ROOT, "members", ScalarType.Str, "nope")

    h, _ = corrupt(mutate)
    found = rules(validate(h.doc))
    assert {(("status",), "type"), (("notes",), "type"), (("members",), "type")} <= found
    # with no members map, references into it dangle
    assert any(rule == "reference" for _, rule in found)


def test_bad_enum():
    h, pid = corrupt(
        lambda h, tx, p, a, sv: tx.put(obj(h.doc, "members", p), "presence", ScalarType.Str, "x")
    )
    assert rules(validate(h.doc)) == {(("members", pid, "presence"), "enum")}


@pytest.mark.parametrize(
    ("field", "bad"),
    [("birth_date", "2015-02-30"), ("birth_date", "2015-2-3"), ("last_name", "  ")],
)
def test_bad_format(field, bad):
    h, pid = corrupt(
        lambda h, tx, p, a, sv: tx.put(obj(h.doc, "members", p), field, ScalarType.Str, bad)
    )
    assert rules(validate(h.doc)) == {(("members", pid, field), "format")}


def test_bad_entity_id_key():
    def mutate(h, tx, p, a, sv):
        m = tx.put_object(obj(h.doc, "members"), "person-1", ObjType.Map)
        fields = {"first_name": "A", "last_name": "B", "birth_date": "2001-01-01", "sex": "X",
                  "relation_to_head": "head", "presence": "present"}  # fmt: skip
        for key, value in fields.items():
            tx.put(m, key, ScalarType.Str, value)

    h, _ = corrupt(mutate)
    assert rules(validate(h.doc)) == {(("members", "person-1"), "format")}


def test_unknown_field():
    def mutate(h, tx, p, a, sv):
        tx.put(ROOT, "household_id", ScalarType.Str, "x")
        tx.put(obj(h.doc, "members", p), "nickname", ScalarType.Str, "Ani")

    h, pid = corrupt(mutate)
    assert rules(validate(h.doc)) == {
        (("household_id",), "unknown-field"),
        (("members", pid, "nickname"), "unknown-field"),
    }


def test_dangling_references():
    ghost = new_entity_id()

    def mutate(h, tx, p, a, sv):
        tx.put(obj(h.doc, "service_plan", sv), "person_id", ScalarType.Str, ghost)
        tx.put_object(obj(h.doc, "assessments", a, "answers"), ghost, ObjType.Map)

    h, _ = corrupt(mutate)
    [aid] = h.to_dict()["assessments"]
    [sid] = h.to_dict()["service_plan"]
    assert rules(validate(h.doc)) == {
        (("service_plan", sid, "person_id"), "reference"),
        (("assessments", aid, "answers", ghost), "reference"),
    }


def test_delivered_service_requires_when_and_by_whom():
    h, _ = corrupt(
        lambda h, tx, p, a, sv: tx.put(
            obj(h.doc, "service_plan", sv), "status", ScalarType.Str, "delivered"
        )
    )
    [sid] = h.to_dict()["service_plan"]
    assert rules(validate(h.doc)) == {
        (("service_plan", sid, "delivered_at"), "missing"),
        (("service_plan", sid, "delivered_by"), "missing"),
    }


def test_wrong_schema_version_stops_the_walk():
    def mutate(h, tx, p, a, sv):
        tx.put(ROOT, "schema", ScalarType.Int, 2)
        tx.put(ROOT, "whatever_v2_has", ScalarType.Str, "x")

    h, _ = corrupt(mutate)
    assert rules(validate(h.doc)) == {(("schema",), "schema-version")}


def test_schema_of_wrong_type_is_a_type_violation():
    h, _ = corrupt(lambda h, tx, p, a, sv: tx.put(ROOT, "schema", ScalarType.Str, "1"))
    assert rules(validate(h.doc)) == {(("schema",), "type")}


def test_conflict_and_request_entries_are_checked():
    cid, rid = new_entity_id(), new_entity_id()

    def mutate(h, tx, p, a, sv):
        c = tx.put_object(obj(h.doc, "conflicts"), cid, ObjType.Map)
        path = tx.put_object(c, "path", ObjType.List)
        tx.insert(path, 0, ScalarType.Str, "members")
        tx.insert(path, 1, ScalarType.F64, 1.5)  # segments are Str | Int
        values = tx.put_object(c, "values", ObjType.List)
        tx.insert(values, 0, ScalarType.Null, None)
        tx.put(c, "detected_at", ScalarType.Str, "2025-01-01T00:00:00Z")
        r = tx.put_object(obj(h.doc, "change_requests"), rid, ObjType.Map)
        tx.put(r, "kind", ScalarType.Str, "add_member")
        tx.put_object(r, "payload", ObjType.Map)
        tx.put(r, "reason", ScalarType.Str, "")
        tx.put(r, "requested_by", ScalarType.Str, "w-1")
        tx.put(r, "requested_at", ScalarType.Str, "2025-01-01T00:00:00Z")
        tx.put(r, "status", ScalarType.Str, "maybe")

    h, _ = corrupt(mutate)
    assert rules(validate(h.doc)) == {
        (("conflicts", cid, "path", 1), "type"),
        (("change_requests", rid, "status"), "enum"),
    }


def test_many_violations_are_all_reported_and_messages_hold_no_values():
    secret = "SECRET-Ionescu"
    ghost = new_entity_id()

    def mutate(h, tx, p, a, sv):
        member = obj(h.doc, "members", p)
        tx.put(member, "sex", ScalarType.Str, secret)
        tx.delete(member, "last_name")
        tx.put(member, "birth_date", ScalarType.Str, secret)
        tx.put(ROOT, "county", ScalarType.Str, secret)
        tx.put(ROOT, "extra", ScalarType.Str, secret)
        tx.put(obj(h.doc, "service_plan", sv), "person_id", ScalarType.Str, ghost)
        tx.put(ROOT, "status", ScalarType.Int, 3)
        entry = tx.insert_object(obj(h.doc, "activity"), 1, ObjType.Map)
        tx.put(entry, "at", ScalarType.Str, secret)

    h, pid = corrupt(mutate)
    [sid] = h.to_dict()["service_plan"]
    violations = validate(h.doc)
    assert rules(violations) == {
        (("members", pid, "sex"), "enum"),
        (("members", pid, "last_name"), "missing"),
        (("members", pid, "birth_date"), "format"),
        (("county",), "format"),
        (("extra",), "unknown-field"),
        (("service_plan", sid, "person_id"), "reference"),
        (("status",), "type"),
        (("activity", 1, "at"), "format"),
        (("activity", 1, "by"), "missing"),
        (("activity", 1, "kind"), "missing"),
        (("activity", 1, "text"), "missing"),
    }
    for v in violations:
        assert secret not in v.message
        assert v.rule in v.message


def test_violation_is_a_frozen_value():
    v = Violation(("a",), "missing", "a: missing")
    with pytest.raises(AttributeError):
        v.rule = "type"  # type: ignore[misc]
    assert v == Violation(("a",), "missing", "a: missing")


def test_empty_document_reports_every_required_root_field():
    found = rules(validate(Document()))
    required = {k for k, f in s.HOUSEHOLD.fields.items() if f.required}
    assert found == {((k,), "missing") for k in required}


# --- the validator: path prefix filter --------------------------------------


def test_only_checks_the_given_subtree():
    def mutate(h, tx, p, a, sv):
        tx.put(obj(h.doc, "members", p), "sex", ScalarType.Str, "Q")
        tx.put(ROOT, "county", ScalarType.Str, "??")

    h, pid = corrupt(mutate)
    assert rules(validate(h.doc, only=("members", pid))) == {(("members", pid, "sex"), "enum")}
    assert rules(validate(h.doc, only=("members", pid, "sex"))) == {
        (("members", pid, "sex"), "enum")
    }
    assert validate(h.doc, only=("members", pid, "presence")) == []
    assert rules(validate(h.doc, only=("county",))) == {(("county",), "format")}
    assert validate(h.doc, only=("service_plan",)) == []
    assert len(validate(h.doc)) == 2


def test_only_handles_absent_and_malformed_targets():
    h, pid, _, _ = populated()
    assert validate(h.doc, only=("members", new_entity_id())) == []  # removed: not a violation
    assert rules(validate(h.doc, only=("members", "bad-key"))) == {
        (("members", "bad-key"), "format")
    }
    assert validate(h.doc, only=("activity", 0)) == []
    assert validate(h.doc, only=("activity", 5)) == []
    assert rules(validate(h.doc, only=("gps", "lat"))) == set()  # gps is optional
    with h.doc.transaction() as tx:
        tx.delete(obj(h.doc, "members", pid), "sex")
    assert rules(validate(h.doc, only=("members", pid, "sex"))) == {
        (("members", pid, "sex"), "missing")
    }
    for bad in [("nope",), ("members", pid, "nickname"), ("activity", "x")]:
        with pytest.raises(ValueError):
            validate(h.doc, only=bad)


def test_only_still_checks_the_schema_version():
    h, pid = corrupt(lambda h, tx, p, a, sv: tx.put(ROOT, "schema", ScalarType.Int, 9))
    assert rules(validate(h.doc, only=("members", pid))) == {(("schema",), "schema-version")}


# --- properties -------------------------------------------------------------

codes = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
names = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, categories=("L", "Zs")),
    min_size=1,
).filter(lambda t: t.strip())
CATALOGUE = load_catalogue()


def _valid_value(indicator: Indicator) -> st.SearchStrategy[object]:
    """Answers the catalogue accepts for ``indicator`` (issue 12: answers are checked)."""
    if indicator.type == "bool":
        return st.booleans()
    if indicator.type == "int":
        return st.integers(indicator.minimum or 0, indicator.maximum or 100)
    if indicator.type == "choice":
        return st.sampled_from(sorted(indicator.option_codes))
    if indicator.type == "date":
        return st.dates().map(str)
    return st.text(max_size=20)


user_ids = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
catalogue_answers = st.sampled_from(sorted(CATALOGUE.indicators)).flatmap(
    lambda code: st.tuples(st.just(code), _valid_value(CATALOGUE.indicators[code])))


def random_edit(h: Household, data: st.DataObject) -> None:
    d = h.to_dict()
    members, assessments, services = (
        list(d["members"]),
        list(d["assessments"]),
        list(d["service_plan"]),
    )
    ops = ["add_member", "set_address", "set_gps", "set_status", "set_team", "start_assessment",
           "append_activity", "set_notes", "append_notes"]  # fmt: skip
    if members:
        ops += ["set_member_field", "plan_service"]
    if members and assessments:
        ops += ["record_answers", "complete_assessment"]
    if services:
        ops += ["set_service_status"]
    op = data.draw(st.sampled_from(ops))
    draw = data.draw
    if op == "add_member":
        h.add_member(draw(names), draw(names), draw(st.dates(date(1900, 1, 1))),
                     draw(st.sampled_from(s.SEXES)), draw(names),
                     draw(st.sampled_from(s.PRESENCES)))  # fmt: skip
    elif op == "set_member_field":
        field = draw(st.sampled_from(["first_name", "presence", "sex", "birth_date"]))
        value = {
            "first_name": names,
            "presence": st.sampled_from(s.PRESENCES),
            "sex": st.sampled_from(s.SEXES),
            "birth_date": st.dates(date(1900, 1, 1)),
        }[field]
        h.set_member_field(draw(st.sampled_from(members)), field, draw(value))
    elif op == "set_address":
        h.set_address(draw(names))
    elif op == "set_gps":
        h.set_gps(draw(st.floats(-90, 90)), draw(st.floats(-180, 180)),
                  draw(st.floats(0, 1e4)), draw(instants))  # fmt: skip
    elif op == "set_status":
        h.set_status(draw(st.sampled_from(s.HOUSEHOLD_STATUSES)))
    elif op == "set_team":
        roles = draw(st.dictionaries(st.sampled_from(s.TEAM_ROLES), st.none() | user_ids))
        h.set_team(**roles)
    elif op == "start_assessment":
        h.as_author(draw(user_ids)).start_assessment(at=draw(instants))
    elif op == "record_answers":
        h.record_answers(draw(st.sampled_from(assessments)), draw(st.sampled_from(members)),
                         dict(draw(st.lists(catalogue_answers, max_size=4))))  # fmt: skip
    elif op == "complete_assessment":
        h.complete_assessment(draw(st.sampled_from(assessments)), at=draw(instants))
    elif op == "plan_service":
        h.plan_service(draw(st.sampled_from(sorted(CATALOGUE.services))),
                       draw(st.sampled_from(members)),
                       draw(st.sampled_from(sorted(CATALOGUE.vulnerabilities))), draw(st.dates()))
    elif op == "set_service_status":
        h.as_author(draw(user_ids)).set_service_status(draw(st.sampled_from(services)),
                             draw(st.sampled_from(s.SERVICE_STATUSES)))  # fmt: skip
    elif op == "append_activity":
        h.as_author(draw(user_ids)).append_activity(draw(codes), draw(st.text(max_size=30)))
    elif op == "set_notes":
        h.set_notes(draw(st.text(max_size=30)))
    elif op == "append_notes":
        h.append_notes(draw(st.text(max_size=30)))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_valid_edits_always_validate_clean(data):
    h = make()
    for _ in range(data.draw(st.integers(1, 12))):
        before = n_changes(h)
        random_edit(h, data)
        assert n_changes(h) - before in (0, 1)  # 0 only when nothing differed
        assert validate(h.doc) == []
    loaded = Household(Document.load(h.doc.save()), h.household_id)
    assert loaded.to_dict() == h.to_dict()


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_concurrent_valid_edits_merge_into_a_valid_document(data):
    """Two devices edit forks of one household offline; the merge is valid."""
    base = make(actor_id=b"\x01" * 16)
    for _ in range(data.draw(st.integers(0, 4))):
        random_edit(base, data)
    a_doc, b_doc = base.doc.fork(), base.doc.fork()
    a_doc.set_actor(b"\x02" * 16)
    b_doc.set_actor(b"\x03" * 16)
    a, b = Household(a_doc, base.household_id), Household(b_doc, base.household_id)
    for _ in range(data.draw(st.integers(1, 6))):
        random_edit(a, data)
        random_edit(b, data)
    a.doc.merge(b.doc)
    assert validate(a.doc) == []


def test_a_value_over_the_limit_is_refused_before_it_is_written() -> None:
    """Issue 13, faults 7 and 8: a 3 MB note took the server 18-20 s and 1.6 GiB (a text
    is one Automerge operation per character), and a 4.5 MB one never synced; the
    tablet had accepted both. Now every value a device writes, a string or a text
    after the edit, holds at most ``MAX_TEXT_CHARS`` characters: beyond, the edit is
    refused as ``value-too-large`` and nothing reaches the document."""
    h = make()
    pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    sid = h.plan_service("counselling", pid, "school_absenteeism", "2026-12-20")
    heads = h.doc.get_heads()
    over = "x" * (s.MAX_TEXT_CHARS + 1)
    for edit in (lambda: h.set_notes(over),
                 lambda: h.set_service_note(sid, over),
                 lambda: h.as_author("sw").append_activity("visit", over),
                 lambda: h.set_address(over)):
        with pytest.raises(conflict.ValueTooLarge) as refused:
            edit()
        assert refused.value.rule == "value-too-large"
        assert refused.value.length == s.MAX_TEXT_CHARS + 1
        assert f"{s.MAX_TEXT_CHARS:,}" in str(refused.value)
    assert h.doc.get_heads() == heads  # nothing written
    h.set_notes("x" * s.MAX_TEXT_CHARS)  # at the limit: written
    with pytest.raises(conflict.ValueTooLarge):
        h.append_notes("y")  # the text after the edit counts
    assert h.notes == "x" * s.MAX_TEXT_CHARS


def test_an_attachment_is_kept_in_parts_and_read_back_checked() -> None:
    """A multi-megabyte note cannot be a text (issue 13, fault 7: one Automerge
    operation per character, 1.6 GiB on the server for 3 MB); it is kept as an
    attachment, its bytes in parts of ``ATTACHMENT_PART_BYTES``, each its own change."""
    h = make()
    content = bytes(range(256)) * 2049  # 524,544 bytes: four parts and a bit
    before = h.doc.get_heads()
    aid = h.attach("raport.pdf", content, media_type="application/pdf")
    assert len(h.doc.get_changes(before)) == 1 + 5  # the record, then each part
    assert h.attachment(aid) == content
    [(got_id, record)] = h.attachments().items()
    assert got_id == aid and record["complete"] and record["size"] == len(content)
    assert record["by"] == "w-1" and record["media_type"] == "application/pdf"
    assert validate(h.doc) == []

    # a copy that has the record and only some parts is incomplete, not invalid
    partial = Household(h.doc.fork(), h.household_id, author="w-1")
    with partial.doc.transaction() as tx:
        parts = partial.doc.get(partial.doc.get(partial.doc.get(ROOT, "attachments")[1],
                                                aid)[1], "parts")[1]
        tx.delete(parts, 4)
    assert validate(partial.doc) == []
    assert not partial.attachments()[aid]["complete"]
    with pytest.raises(InvalidValueError) as missing:
        partial.attachment(aid)
    assert missing.value.rule == "incomplete"


def test_an_attachment_over_the_limit_is_refused_before_it_is_written() -> None:
    h = make()
    heads = h.doc.get_heads()
    with pytest.raises(conflict.ValueTooLarge) as refused:
        h.attach("scan.tiff", b"\0" * (s.MAX_ATTACHMENT_BYTES + 1))
    assert refused.value.rule == "value-too-large" and "bytes" in str(refused.value)
    with pytest.raises(InvalidValueError):
        h.attach("note.txt", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        h.attach("note.txt", b"x", media_type="text")  # not type/subtype
    assert h.doc.get_heads() == heads


def test_an_oversized_part_or_a_wrong_digest_breaks_the_schema() -> None:
    """What the server checks of a device's attachment: each part at most
    ``ATTACHMENT_PART_BYTES``, a size within the limit, a SHA-256 in hex."""
    h = make()
    aid = h.attach("note.txt", b"hello", media_type="text/plain")
    record = h.doc.get(h.doc.get(ROOT, "attachments")[1], aid)[1]
    with h.doc.transaction() as tx:
        parts = h.doc.get(record, "parts")[1]
        tx.insert(parts, 1, ScalarType.Bytes, b"\0" * (s.ATTACHMENT_PART_BYTES + 1))
        tx.put(record, "sha256", ScalarType.Str, "not-hex")
        tx.put(record, "size", ScalarType.Int, s.MAX_ATTACHMENT_BYTES + 1)
    assert sorted((v.path[2:], v.rule) for v in validate(h.doc)) == [
        (("parts", 1), "format"), (("sha256",), "format"), (("size",), "format")]
