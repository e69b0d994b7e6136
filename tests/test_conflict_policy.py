"""The permission and merge policy (conflict.policy) and its SDK side (guard, requests)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from _offline import offline_replica
from automerge.core import ROOT, Document, ObjType, ScalarType
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict import Household, InvalidValueError, UnknownEntityError, validate
from conflict import schema as s
from conflict.household import ProtectedPathError
from conflict.paths import element_id
from conflict.policy import (
    DECISION_FIELDS,
    PROTECTIONS,
    REQUEST_PAYLOADS,
    SERVICE_STATUS_RANK,
    attribution_violations,
    cancel_violations,
    decision_violations,
    lattice_max,
    payload_violations,
    protected_violations,
    protection_for,
    status_regressions,
)

ADD = {
    "first_name": "Ioana",
    "last_name": "Pop",
    "birth_date": "2019-03-02",
    "sex": "F",
    "relation_to_head": "child",
}


def make(status: str = "active", *, guard: bool = False) -> tuple[Household, str]:
    """A household with a team and one member, in ``status``."""
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="w-1",
                         team={"social_worker": "w-1", "nurse": "n-1"}, actor_id=b"\x01" * 16)  # fmt: skip
    pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    if status != "registration":
        h.set_status("active")
    if status == "closed":
        h.set_status("closed")
    h.guard = guard
    return h, pid


def fork(h: Household, actor: int = 2, *, guard: bool = False) -> Household:
    doc = h.doc.fork()
    doc.set_actor(bytes([actor]) * 16)
    return Household(doc, h.household_id, guard=guard)


def merged(committed: Household, device: Household) -> Document:
    """What the server computes: a fork of the committed document with the device's changes."""
    after = committed.doc.fork()
    after.merge(device.doc)
    return after


def n_changes(h: Household) -> int:
    return len(h.doc.get_changes([]))


def paths(violations) -> set[tuple]:
    return {(v.path, v.rule) for v in violations}


def raw_delete(h: Household, *path: str) -> None:
    cur = ROOT
    for seg in path[:-1]:
        cur = h.doc.get(cur, seg)[1]
    with h.doc.transaction() as tx:
        tx.delete(cur, path[-1])


# --- the policy as data ---------------------------------------------------


def test_policy_data_covers_the_schema():
    assert set(REQUEST_PAYLOADS) == set(s.REQUEST_KINDS)
    assert {k for p in PROTECTIONS for k in p.request_kinds} == set(s.REQUEST_KINDS)
    assert set(SERVICE_STATUS_RANK) == set(s.SERVICE_STATUSES)
    assert set(DECISION_FIELDS) <= set(s.CHANGE_REQUEST.fields)
    assert protection_for(("members", "x")).name == "members"
    assert protection_for(("members", "x", "presence")).name == "presence"
    assert protection_for(("members", "x", "first_name")) is None
    assert protection_for(("team", "nurse")).name == "team"
    assert protection_for(("status",)).name == "status"
    assert protection_for(("address",)) is None


# --- protected_violations ---------------------------------------------------

NEW_PID = "4b1c7f0e-8f6a-4d0e-9a57-2f6a1b9c3d11"

PROTECTED_EDITS: dict[str, tuple[str, Callable[[Household, str], None], Callable[[str], tuple]]] = {
    "add member": ("active", lambda h, p: h.add_member(**ADD, person_id=NEW_PID),
                   lambda p: ("members", NEW_PID)),
    "remove member": ("active", lambda h, p: raw_delete(h, "members", p), lambda p: ("members", p)),
    "presence": ("active", lambda h, p: h.set_member_field(p, "presence", "moved"),
                 lambda p: ("members", p, "presence")),
    "team change": ("active", lambda h, p: h.set_team(nurse="n-2"), lambda p: ("team", "nurse")),
    "team unassign": ("active", lambda h, p: h.set_team(nurse=None), lambda p: ("team", "nurse")),
    "team assign": ("active", lambda h, p: h.set_team(counsellor="c-1"),
                    lambda p: ("team", "counsellor")),
    "close": ("active", lambda h, p: h.set_status("closed"), lambda p: ("status",)),
    "back to registration": ("active", lambda h, p: h.set_status("registration"),
                             lambda p: ("status",)),
    "reopen": ("closed", lambda h, p: h.set_status("active"), lambda p: ("status",)),
    "add member to closed": ("closed", lambda h, p: h.add_member(**ADD, person_id=NEW_PID),
                             lambda p: ("members", NEW_PID)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROTECTED_EDITS))
def test_each_protected_path_changed_in_a_fork_is_detected_after_the_merge(name):
    status, edit, path = PROTECTED_EDITS[name]
    committed, pid = make(status)
    device = fork(committed)
    edit(device, pid)
    assert paths(protected_violations(committed.doc, merged(committed, device))) == {
        (path(pid), "protected-path")
    }


@pytest.mark.parametrize("name", sorted(PROTECTED_EDITS))
def test_nothing_is_protected_in_registration(name):
    _, edit, _ = PROTECTED_EDITS[name]
    committed, pid = make("registration")
    device = fork(committed)
    edit(device, pid)
    assert protected_violations(committed.doc, merged(committed, device)) == []


def test_unprotected_edits_of_an_active_household_pass():
    committed, pid = make("active")
    device = fork(committed)
    device.set_member_field(pid, "first_name", "Anca")
    device.set_member_field(pid, "presence", "present")  # the value it already has
    device.set_address("Str. Scurta 1")
    device.set_notes("visit")
    sid = device.plan_service("information", pid, "school_absenteeism", "2025-02-01")
    device.as_author("n-1").set_service_status(sid, "delivered")
    aid = device.as_author("w-1").start_assessment()
    device.record_answers(aid, pid, {"school_enrolled": True})
    device.as_author("w-1").request_change("change_presence",
                                           {"person_id": pid, "presence": "moved"}, "moved")
    assert protected_violations(committed.doc, merged(committed, device)) == []


def test_a_vanished_team_map_reports_every_role():
    committed, _ = make("active")
    device = fork(committed)
    raw_delete(device, "team")
    assert paths(protected_violations(committed.doc, device.doc)) == {
        (("team", "nurse"), "protected-path"),
        (("team", "social_worker"), "protected-path"),
    }


def test_several_protected_changes_are_all_reported_without_values():
    committed, pid = make("active")
    device = fork(committed)
    device.set_team(nurse="SECRET-user")
    device.set_member_field(pid, "presence", "deceased")
    device.add_member("SECRET", "NAME", "2000-01-01", "M", "head", person_id=NEW_PID)
    found = protected_violations(committed.doc, merged(committed, device))
    assert {v.path for v in found} == {
        ("team", "nurse"), ("members", pid, "presence"), ("members", NEW_PID)
    }  # fmt: skip
    for v in found:
        assert "SECRET" not in v.message and "deceased" not in v.message
        assert v.message.startswith(f"{'.'.join(map(str, v.path))}: protected-path")


# --- the SDK guard -----------------------------------------------------------

GUARDED: dict[str, tuple[str, Callable[[Household, str], None], Callable[[str], tuple], tuple]] = {
    "add_member": ("active", lambda h, p: h.add_member(**ADD, person_id=NEW_PID),
                   lambda p: ("members", NEW_PID), ("add_member", "remove_member")),
    "presence": ("active", lambda h, p: h.set_member_field(p, "presence", "absent"),
                 lambda p: ("members", p, "presence"), ("change_presence",)),
    "set_team": ("active", lambda h, p: h.set_team(social_worker="w-1", counsellor="c-1"),
                 lambda p: ("team", "counsellor"), ("change_team",)),
    "close": ("active", lambda h, p: h.set_status("closed"), lambda p: ("status",),
              ("close_household",)),
    "to registration": ("active", lambda h, p: h.set_status("registration"), lambda p: ("status",),
                        ()),
    "reopen": ("closed", lambda h, p: h.set_status("active"), lambda p: ("status",),
               ("reopen_household",)),
    "presence of closed": ("closed", lambda h, p: h.set_member_field(p, "presence", "moved"),
                           lambda p: ("members", p, "presence"), ("change_presence",)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_the_guard_raises_naming_path_and_rule_and_writes_nothing(name):
    status, edit, path, kinds = GUARDED[name]
    h, pid = make(status, guard=True)
    before, count = h.to_dict(), n_changes(h)
    with pytest.raises(ProtectedPathError) as exc:
        edit(h, pid)
    err = exc.value
    assert isinstance(err, InvalidValueError) and isinstance(err, ValueError)
    assert (err.path, err.rule, err.request_kinds) == (path(pid), "protected-path", kinds)
    assert "protected-path" in str(err) and ".".join(path(pid)) in str(err)
    assert n_changes(h) == count and h.to_dict() == before


def test_the_guard_lets_registration_and_unprotected_edits_through():
    h, pid = make("registration", guard=True)
    h.add_member(**ADD)
    h.set_member_field(pid, "presence", "absent")
    h.set_team(counsellor="c-1")
    h.set_status("active")
    count = n_changes(h)
    h.set_member_field(pid, "presence", "absent")  # no-op: the current value
    h.set_team(counsellor="c-1", nurse="n-1")  # no-op
    assert n_changes(h) == count
    h.set_member_field(pid, "first_name", "Anca")
    h.set_address("Str. Scurta 1")
    assert validate(h.doc) == []

    # A household closed during registration (e.g. the family declined) is
    # closed for good: reopening it is a request like any other.
    declined, _ = make("registration", guard=True)
    declined.set_status("closed")
    with pytest.raises(ProtectedPathError) as exc:
        declined.set_status("registration")
    assert exc.value.request_kinds == ()


def test_the_replica_opens_households_guarded(tmp_path):
    r = offline_replica(tmp_path / "tablet", "w-1")
    hid = r.create_household(locality="54975", county="CJ", address="Str. Lunga 3").household_id
    with r.edit(hid) as h:
        pid = h.add_member(**ADD)
        h.set_status("active")
        with pytest.raises(ProtectedPathError):
            h.set_member_field(pid, "presence", "moved")
    hid = h.household_id
    reopened = offline_replica(tmp_path / "tablet", "w-1").household(hid)
    with pytest.raises(ProtectedPathError):
        reopened.add_member(**ADD)
    rid = reopened.request_change("change_presence", {"person_id": pid, "presence": "moved"},
                                  "moved to Cluj")  # as the replica's user
    assert [req["request_id"] for req in reopened.change_requests()] == [rid]


# --- change requests -----------------------------------------------------------

REQUESTS: dict[str, tuple[str, Callable[[str], dict], Callable[[dict, str], None]]] = {
    "add_member": ("active", lambda p: {**ADD, "person_id": NEW_PID},
                   lambda d, p: d["members"][NEW_PID] == {**ADD, "presence": "present"}),
    "remove_member": ("active", lambda p: {"person_id": p}, lambda d, p: p not in d["members"]),
    "change_presence": ("active", lambda p: {"person_id": p, "presence": "deceased"},
                        lambda d, p: d["members"][p]["presence"] == "deceased"),
    "change_team": ("active", lambda p: {"nurse": None, "counsellor": "c-1"},
                    lambda d, p: d["team"] == {"social_worker": "w-1", "counsellor": "c-1"}),
    "close_household": ("active", lambda p: {}, lambda d, p: d["status"] == "closed"),
    "reopen_household": ("closed", lambda p: {}, lambda d, p: d["status"] == "active"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_request_round_trip_filed_offline_applied_by_the_server_once(kind):
    status, payload, check = REQUESTS[kind]
    server, pid = make(status)
    tablet = fork(server, guard=True)  # offline: no server involved until the merge

    rid = tablet.as_author("w-1").request_change(kind, payload(pid), "reason", at="2025-03-01T09:00:00Z")
    [req] = tablet.change_requests()
    assert req["request_id"] == rid and req["kind"] == kind and req["status"] == "pending"
    assert req["decided_by"] is None and req["decision_note"] is None
    assert validate(tablet.doc) == []

    # The server's checks accept the filing batch from a worker.
    after = merged(server, tablet)
    assert protected_violations(server.doc, after) == []
    assert decision_violations(server.doc, after, "worker", True) == []
    server.doc.merge(tablet.doc)

    # Only the server's path decides.
    count = n_changes(server)
    with pytest.raises(ProtectedPathError) as exc:
        server.as_author("sup-1").apply_request(rid)
    assert exc.value.rule == "decision-field"
    assert n_changes(server) == count

    assert server.as_author("sup-1").apply_request(rid, at="2025-03-02T10:00:00Z", as_server=True,
                                note="ok") is True  # fmt: skip
    assert n_changes(server) == count + 1  # one change
    d = server.to_dict()
    check(d, pid)
    [req] = server.change_requests()
    assert (req["status"], req["decided_by"], req["decided_at"], req["decision_note"]) == (
        "approved", "sup-1", "2025-03-02T10:00:00Z", "ok")  # fmt: skip
    last = d["activity"][-1]
    assert (last["by"], last["kind"]) == ("sup-1", "change_approved")
    assert "w-1" in last["text"] and "sup-1" in last["text"]
    assert validate(server.doc) == []

    # Applying twice applies once.
    assert server.as_author("sup-2").apply_request(rid, as_server=True) is False
    assert n_changes(server) == count + 1

    # The approval reaches the tablet by merge.
    tablet.doc.merge(server.doc)
    check(tablet.to_dict(), pid)


def test_reject_changes_only_the_request():
    server, pid = make("active")
    rid = server.as_author("w-1").request_change("remove_member", {"person_id": pid}, "duplicate")
    before = server.to_dict()
    assert server.as_author("sup-1").reject_request(rid, "not a duplicate", as_server=True) is True
    after = server.to_dict()
    req = after["change_requests"].pop(rid)
    assert (req["status"], req["decided_by"], req["decision_note"]) == (
        "rejected", "sup-1", "not a duplicate")  # fmt: skip
    before["change_requests"].pop(rid)
    assert after == before
    assert server.as_author("sup-1").reject_request(rid, as_server=True) is False
    with pytest.raises(InvalidValueError) as exc:
        server.as_author("sup-1").apply_request(rid, as_server=True)
    assert exc.value.rule == "decided"
    approved = server.as_author("w-1").request_change("close_household", {}, "moved away")
    server.as_author("sup-1").apply_request(approved, as_server=True)
    with pytest.raises(InvalidValueError):
        server.as_author("sup-1").reject_request(approved, as_server=True)
    assert validate(server.doc) == []


@pytest.mark.parametrize(
    ("kind", "payload", "path_end", "rule"),
    [
        ("add_member", {**ADD, "first_name": None}, ("payload", "first_name"), "missing"),
        ("add_member", {**ADD, "sex": "Q"}, ("payload", "sex"), "enum"),
        ("add_member", {**ADD, "birth_date": "01.02.2019"}, ("payload", "birth_date"), "format"),
        ("add_member", {**ADD, "nickname": "Io"}, ("payload", "nickname"), "unknown-field"),
        ("add_member", {**ADD, "person_id": "7"}, ("payload", "person_id"), "format"),
        ("remove_member", {}, ("payload", "person_id"), "missing"),
        ("change_presence", {"person_id": "PID"}, ("payload", "presence"), "missing"),
        ("change_presence", {"person_id": "PID", "presence": "lost"}, ("payload", "presence"), "enum"),
        ("change_team", {}, ("payload", "social_worker"), "missing"),
        ("change_team", {"janitor": "u-1"}, ("payload", "janitor"), "unknown-field"),
        ("change_team", {"nurse": "bad id!"}, ("payload", "nurse"), "format"),
        ("close_household", {"when": "now"}, ("payload", "when"), "unknown-field"),
        ("merge_households", {}, ("kind",), "enum"),
    ],
)
def test_request_payloads_are_checked_per_kind_before_writing(kind, payload, path_end, rule):
    h, pid = make("active", guard=True)
    payload = {k: pid if v == "PID" else v for k, v in payload.items()}
    before, count = h.to_dict(), n_changes(h)
    with pytest.raises(InvalidValueError) as exc:
        h.as_author("w-1").request_change(kind, payload, "reason")
    assert exc.value.path[0] == "change_requests" and exc.value.path[2:] == path_end
    assert exc.value.rule == rule
    assert n_changes(h) == count and h.to_dict() == before


def test_other_request_arguments_are_checked():
    h, pid = make("active", guard=True)
    count = n_changes(h)
    with pytest.raises(UnknownEntityError):
        h.as_author("w-1").request_change("remove_member", {"person_id": NEW_PID}, "gone")
    with pytest.raises(ValueError, match="already exists"):
        h.as_author("w-1").request_change("add_member", {**ADD, "person_id": pid}, "again")
    with pytest.raises(InvalidValueError):
        h.as_author("w-1").request_change("close_household", {}, "  ")
    with pytest.raises(InvalidValueError):
        h.as_author("").request_change("close_household", {}, "reason")
    with pytest.raises(InvalidValueError):
        h.as_author("w-1").request_change("close_household", ["not", "a", "map"], "reason")
    assert n_changes(h) == count
    assert payload_violations("close_household", {}) == []


def test_add_member_request_chooses_the_person_id_at_filing():
    h, _ = make("active")
    rid = h.as_author("w-1").request_change("add_member", ADD, "newborn")
    pid = h.change_requests()[0]["payload"]["person_id"]
    h.as_author("sup-1").apply_request(rid, as_server=True)
    assert h.members()[pid]["first_name"] == "Ioana"


def test_remove_member_refuses_a_member_still_referenced_and_drops_empty_answer_maps():
    h, pid = make("active")
    aid = h.as_author("w-1").start_assessment()  # pre-creates an empty answers map for pid
    rid = h.as_author("w-1").request_change("remove_member", {"person_id": pid}, "duplicate")
    h.as_author("sup-1").apply_request(rid, as_server=True)
    assert pid not in h.members() and h.to_dict()["assessments"][aid]["answers"] == {}
    assert validate(h.doc) == []

    h2, pid2 = make("active")
    h2.plan_service("information", pid2, "school_absenteeism", "2025-02-01")
    rid2 = h2.as_author("w-1").request_change("remove_member", {"person_id": pid2}, "duplicate")
    count = n_changes(h2)
    with pytest.raises(InvalidValueError) as exc:
        h2.as_author("sup-1").apply_request(rid2, as_server=True)
    assert (exc.value.path, exc.value.rule) == (("members", pid2), "reference")
    assert n_changes(h2) == count and h2.change_requests()[0]["status"] == "pending"


# --- decision fields -------------------------------------------------------------


def put_request_field(h: Household, rid: str, key: str, value: str) -> None:
    obj = h.doc.get(h.doc.get(ROOT, "change_requests")[1], rid)[1]
    with h.doc.transaction() as tx:
        tx.put(obj, key, ScalarType.Str, value)


@pytest.fixture
def filed() -> tuple[Household, str]:
    h, pid = make("active")
    rid = h.as_author("w-1").request_change("change_presence", {"person_id": pid, "presence": "moved"}, "r")
    return h, rid


@pytest.mark.parametrize("field", DECISION_FIELDS)
@pytest.mark.parametrize(
    ("role", "same_county", "allowed"),
    [("worker", True, False), ("supervisor", True, True), ("supervisor", False, False),
     ("national", True, False), ("admin", True, False)],
)  # fmt: skip
def test_only_a_supervisor_of_the_county_writes_decision_fields(filed, field, role, same_county,
                                                               allowed):  # fmt: skip
    committed, rid = filed
    device = fork(committed)
    value = {"status": "approved", "decided_at": "2025-03-02T10:00:00Z"}.get(field, "sup-1")
    put_request_field(device, rid, field, value)
    found = decision_violations(committed.doc, merged(committed, device), role, same_county)
    expected = set() if allowed else {(("change_requests", rid, field), "decision-field")}
    assert paths(found) == expected


def test_new_requests_must_be_filed_pending(filed):
    committed, _ = filed
    device = fork(committed)
    rid = device.as_author("w-1").request_change("close_household", {}, "moving")
    put_request_field(device, rid, "decided_by", "w-1")
    put_request_field(device, rid, "status", "approved")
    found = decision_violations(committed.doc, merged(committed, device), "supervisor", True)
    assert paths(found) == {
        (("change_requests", rid, "status"), "decision-field"),
        (("change_requests", rid, "decided_by"), "decision-field"),
    }


def test_a_filed_request_is_immutable_and_never_deleted(filed):
    committed, rid = filed
    device = fork(committed)
    payload = device.doc.get(device.doc.get(device.doc.get(ROOT, "change_requests")[1], rid)[1],
                             "payload")[1]  # fmt: skip
    with device.doc.transaction() as tx:
        tx.put(payload, "presence", ScalarType.Str, "deceased")
    put_request_field(device, rid, "reason", "other")
    found = decision_violations(committed.doc, merged(committed, device), "supervisor", True)
    assert paths(found) == {
        (("change_requests", rid, "payload"), "request-immutable"),
        (("change_requests", rid, "reason"), "request-immutable"),
    }
    device2 = fork(committed)
    raw_delete(device2, "change_requests", rid)
    assert paths(decision_violations(committed.doc, device2.doc, "supervisor", True)) == {
        (("change_requests", rid), "request-immutable")
    }


def test_the_servers_approval_passes_the_supervisor_check(filed):
    committed, rid = filed
    after = fork(committed)
    after.as_author("sup-1").apply_request(rid, as_server=True, note="ok")
    assert decision_violations(committed.doc, after.doc, "supervisor", True) == []
    assert paths(decision_violations(committed.doc, after.doc, "worker", True)) == {
        (("change_requests", rid, f), "decision-field")
        for f in ("status", "decided_by", "decided_at", "decision_note")
    }


# --- the service status lattice ------------------------------------------------------


def test_lattice_max():
    order = ["planned", "in_progress", "cancelled", "delivered"]
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            assert lattice_max(a, b) == order[max(i, j)]
    with pytest.raises(ValueError):
        lattice_max("planned", "done")


def with_service(status: str = "planned") -> tuple[Household, str]:
    h, pid = make("active")
    sid = h.plan_service("information", pid, "school_absenteeism", "2025-02-01")
    if status != "planned":
        h.as_author("n-1").set_service_status(sid, status)
    return h, sid


@pytest.mark.parametrize(
    ("start", "to", "regress"),
    [("planned", "in_progress", False), ("in_progress", "delivered", False),
     ("delivered", "in_progress", True), ("delivered", "planned", True),
     ("in_progress", "planned", True), ("cancelled", "in_progress", True),
     ("delivered", "cancelled", True), ("planned", "cancelled", False),
     ("cancelled", "delivered", False), ("delivered", "delivered", False)],
)  # fmt: skip
def test_status_regressions_sequential(start, to, regress):
    committed, sid = with_service(start)
    device = fork(committed)
    device.as_author("w-1").set_service_status(sid, to)
    found = status_regressions(committed.doc, merged(committed, device))
    assert found == ([(sid, start, to)] if regress else [])


@pytest.mark.parametrize("delivered_actor", [2, 3])
def test_concurrent_in_progress_vs_delivered_merge(delivered_actor):
    """Two tablets change one service concurrently; the server has committed
    ``delivered`` and merges ``in_progress``. Whenever Automerge's winner is
    the lower status, it is reported as a regression with the lattice max."""
    base, sid = with_service("planned")
    nurse = fork(base, delivered_actor)
    worker = fork(base, 5 - delivered_actor)
    nurse.as_author("n-1").set_service_status(sid, "delivered")
    worker.as_author("w-1").set_service_status(sid, "in_progress")
    committed = fork(nurse, 9)  # the server committed the nurse's batch first
    after = merged(committed, worker)
    winner = Household(after, base.household_id).to_dict()["service_plan"][sid]["status"]
    found = status_regressions(committed.doc, after)
    if winner == "in_progress":
        assert found == [(sid, "delivered", "in_progress")]
        assert lattice_max(found[0][1], found[0][2]) == "delivered"
    else:
        assert winner == "delivered" and found == []
    # The other arrival order: the server holds in_progress, delivered arrives.
    committed2 = fork(worker, 9)
    after2 = merged(committed2, nurse)
    assert status_regressions(committed2.doc, after2) == []


def test_the_higher_actor_wins_so_the_regression_case_is_really_exercised():
    base, sid = with_service("planned")
    nurse, worker = fork(base, 2), fork(base, 3)
    nurse.as_author("n-1").set_service_status(sid, "delivered")
    worker.as_author("w-1").set_service_status(sid, "in_progress")
    after = merged(nurse, worker)
    assert Household(after, base.household_id).to_dict()["service_plan"][sid]["status"] == (
        "in_progress")  # fmt: skip
    assert status_regressions(nurse.doc, after) == [(sid, "delivered", "in_progress")]


@pytest.mark.parametrize(
    ("role", "same_county", "allowed"),
    [("worker", True, False), ("supervisor", True, True), ("supervisor", False, False)],
)
def test_only_a_supervisor_of_the_county_cancels(role, same_county, allowed):
    committed, sid = with_service("in_progress")
    device = fork(committed)
    device.as_author("sup-1").set_service_status(sid, "cancelled")
    found = cancel_violations(committed.doc, merged(committed, device), role, same_county)
    expected = set() if allowed else {(("service_plan", sid, "status"), "cancel-needs-supervisor")}
    assert paths(found) == expected


# --- property: detection is exact ---------------------------------------------------


def protected_snapshot(h: Household) -> dict:
    d = h.to_dict()
    return {
        "members": set(d["members"]),
        "presence": {p: m.get("presence") for p, m in d["members"].items()},
        "team": dict(d["team"]),
        "status": d["status"],
    }


def expected_paths(before: dict, after: dict) -> set[tuple]:
    if before["status"] == "registration":
        return set()
    out = {("members", p) for p in before["members"] ^ after["members"]}
    out |= {("members", p, "presence") for p in before["members"] & after["members"]
            if before["presence"][p] != after["presence"][p]}  # fmt: skip
    out |= {("team", r) for r in set(before["team"]) | set(after["team"])
            if before["team"].get(r) != after["team"].get(r)}  # fmt: skip
    if before["status"] != after["status"]:
        out.add(("status",))
    return out


def random_edit(h: Household, data: st.DataObject) -> None:
    members = list(h.members())
    ops = ["add_member", "set_team", "set_status", "set_address"]
    if members:
        ops += ["presence", "first_name", "remove_member"]
    op = data.draw(st.sampled_from(ops))
    if op == "add_member":
        h.add_member(**ADD)
    elif op == "set_team":
        h.set_team(**data.draw(st.dictionaries(st.sampled_from(s.TEAM_ROLES),
                                               st.none() | st.sampled_from(["u-1", "u-2"]))))  # fmt: skip
    elif op == "set_status":
        h.set_status(data.draw(st.sampled_from(s.HOUSEHOLD_STATUSES)))
    elif op == "set_address":
        h.set_address(data.draw(st.sampled_from(["a", "b"])))
    elif op == "presence":
        h.set_member_field(data.draw(st.sampled_from(members)), "presence",
                           data.draw(st.sampled_from(s.PRESENCES)))  # fmt: skip
    elif op == "first_name":
        h.set_member_field(data.draw(st.sampled_from(members)), "first_name", "X")
    elif op == "remove_member":
        raw_delete(h, "members", data.draw(st.sampled_from(members)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_protected_violations_are_exactly_the_protected_changes(data):
    """Two devices edit concurrently; the server committed one and merges the
    other: a violation is reported exactly for each protected path that differs."""
    committed, _ = make(data.draw(st.sampled_from(s.HOUSEHOLD_STATUSES)))
    other = fork(committed, 3)
    device = fork(committed, 2)
    for _ in range(data.draw(st.integers(0, 3))):
        random_edit(other, data)
    committed.doc.merge(other.doc)
    for _ in range(data.draw(st.integers(0, 4))):
        random_edit(device, data)
    after = merged(committed, device)
    found = protected_violations(committed.doc, after)
    assert all(v.rule == "protected-path" for v in found)
    assert {v.path for v in found} == expected_paths(
        protected_snapshot(committed), protected_snapshot(Household(after, committed.household_id))
    )


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_the_guard_never_lets_a_protected_change_through(data):
    """A guarded household's edits never change a protected path once active."""
    h, _ = make(data.draw(st.sampled_from(s.HOUSEHOLD_STATUSES)), guard=True)
    for _ in range(data.draw(st.integers(1, 6))):
        before = h.doc.fork()
        try:
            random_edit(h, data)
        except ProtectedPathError:
            assert h.doc.get_heads() == before.get_heads()
            continue
        except KeyError:
            continue
        if not _was_raw(h, before):
            assert protected_violations(before, h.doc) == []


def _was_raw(h: Household, before: Document) -> bool:
    """raw_delete (a bypassing client) is outside the guard's reach."""
    b = set(before.keys(before.get(ROOT, "members")[1]))
    a = set(h.doc.keys(h.doc.get(ROOT, "members")[1]))
    return bool(b - a)


# --- conflict records are the server's -------------------------------------


def test_a_device_may_resolve_a_conflict_record_but_not_write_one() -> None:
    """Before (found in review of issue 12): ``conflicts.*.written`` (who wrote each value)
    and the record itself were not attributions: a device could record a conflict naming
    anyone, or edit one the server recorded. Now anything but ``resolved_by`` and
    ``resolution`` is refused (``conflict-record``), and a tablet's own copy will not
    record one."""
    h, _ = make()
    server = h.as_author("vatra")
    cid = server.record_conflict(("address",), ["Str. A 1", "Str. B 2"],
                                 written=[("ana", "2026-11-30T10:00:00Z"),
                                          ("ion", "2026-11-30T10:00:01Z")])
    before = h.doc.fork()
    now = datetime.now(UTC)

    resolved = Household(before.fork(), h.household_id, author="ana")
    resolved.resolve_conflict(cid, "Str. A 1")
    assert attribution_violations(before, resolved.doc, "ana", now) == []

    edited = before.fork()
    with edited.transaction() as tx:
        record = edited.get(edited.get(ROOT, "conflicts")[1], cid)[1]
        tx.put(record, "detected_at", ScalarType.Str, "2020-01-01T00:00:00Z")
        values = edited.get(record, "values")[1]
        tx.put(values, 1, ScalarType.Str, "Str. C 3")
    assert sorted(v.path for v in attribution_violations(before, edited, "ana", now)) == [
        ("conflicts", cid, "detected_at"), ("conflicts", cid, "values")]

    forged = Household(before.fork(), h.household_id, author="ana")
    new = forged.record_conflict(("address",), ["x", "y"])
    [v] = attribution_violations(before, forged.doc, "ana", now)
    assert (v.path, v.rule) == (("conflicts", new), "conflict-record")

    tablet = Household(before.fork(), h.household_id, author="ana", guard=True)
    with pytest.raises(ProtectedPathError) as refused:
        tablet.record_conflict(("address",), ["x", "y"])
    assert refused.value.rule == "conflict-record"



# --- the activity feed is append-only ----------------------------------------


def test_an_activity_entry_is_never_rewritten_or_removed() -> None:
    """Before: the feed was append-only by convention only. A teammate's batch that
    rewrote the text of a nurse's entry (leaving ``by`` naming her) or removed it was
    accepted, so the feed could say she wrote what she did not, or lose what she did
    (reproduced by editing the entry in a fork and checking it against the server's
    copy: no violation). Now both are refused (``activity-record``), whether the batch's
    touched entries are known or the whole feed is compared; appending is not."""
    from sync_server.sync.touched import touched_prefixes

    h, _ = make()
    h.as_author("n-1").append_activity("visit", "Vizita la domiciliu, copilul este bine")
    before = h.doc.fork()
    now = datetime.now(UTC)
    feed = before.get(ROOT, "activity")[1]
    entry = before.get(feed, before.length(feed) - 1)[1]
    ident = element_id(entry)

    def check(doc: Document) -> list[tuple[object, str]]:
        full = attribution_violations(before, doc, "w-1", now)
        known = attribution_violations(before, doc, "w-1", now,
                                       touched=touched_prefixes(doc, before.get_heads()))
        assert full == known, (full, known)
        return [(v.path, v.rule) for v in full]

    rewritten = before.fork()
    with rewritten.transaction() as tx:
        tx.put(entry, "text", ScalarType.Str, "Familia a refuzat vizita")
    assert check(rewritten) == [(("activity", ident), "activity-record")]

    removed = before.fork()
    with removed.transaction() as tx:
        tx.delete(feed, removed.length(feed) - 1)
    assert check(removed) == [(("activity", ident), "activity-record")]

    replaced = before.fork()
    with replaced.transaction() as tx:  # the whole feed swapped for a new list
        tx.put_object(ROOT, "activity", ObjType.List)
    assert (("activity", ident), "activity-record") in check(replaced)

    # A tablet whose actor id sorts first: the binding's ids number actors in sorted
    # order, so every id of the old entries changes bytes in the merged copy (a first
    # version compared those bytes and refused each honest append like this).
    appended = Household(before.fork(), h.household_id, author="w-1")
    appended.doc.set_actor(b"\x00" * 16)
    appended.append_activity("note", "Am sunat la scoala")
    assert check(appended.doc) == []

    forged = Household(before.fork(), h.household_id, author="n-1")  # w-1 signs it
    forged.append_activity("note", "Am sunat la scoala")
    new = element_id(forged.doc.get(feed, forged.doc.length(feed) - 1)[1])
    assert check(forged.doc) == [(("activity", new, "by"), "forged-attribution")]


def test_the_feed_rule_bench_runs_each_case(capsys) -> None:
    """``python -m vatra_devtools.bench_feed_rule`` (decision 93's figures) at a small
    size: every case prints, the honest ones accepted and the others refused by the
    rule (the bench stops if a case is judged otherwise)."""
    from vatra_devtools.bench_feed_rule import main

    main(["--entries", "200", "--appends", "10", "--runs", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("200 entries; schema of the whole feed (baseline): ")
    verdicts = {line.split(":")[0].strip(): line.rsplit("refused: ", 1)[1] for line in lines[1:]}
    assert verdicts == {"appends": "-", "appends, nothing known": "-",
                        "one rewritten": "activity-record", "one removed": "activity-record"}
