"""The county directory (conflict/directory.py) and referrals in the household model:
what an import accepts and refuses, which providers are nearest, and a referral's
record (pure: no server)."""

from __future__ import annotations

import pytest

from conflict import Household, InvalidValueError, UnknownEntityError, validate
from conflict.directory import distance_km, nearest, provider_id, validate_directory, version

GOOD = [
    {"name": "DGASPC Cluj", "kind": "child_protection", "address": "Str. Motilor 7, Cluj-Napoca",
     "lat": 46.7693, "lon": 23.5814, "phone": "0264 420 000", "accessibility": ["wheelchair"],
     "hours": "L-V 8-16"},
    {"name": "Centrul de zi Floresti", "kind": "day_centre", "address": "Str. Avram Iancu 1",
     "lat": 46.7466, "lon": 23.4906, "email": "centru@floresti.ro"},
    {"name": "Cabinet medical Gilau", "kind": "health", "address": "Str. Principala 10",
     "lat": 46.7535, "lon": 23.3800, "phone": "+40 264 371 111",
     "accessibility": ["wheelchair", "free_of_charge"]},
    {"name": "CPECA Cluj", "kind": "addiction", "address": "Str. Republicii 1",
     "phone": "0264 591 000"},  # no coordinates: listed, never ranked
]


def test_a_good_file_is_normalised_with_stable_ids() -> None:
    providers, problems = validate_directory("CJ", GOOD)
    assert problems == [] and len(providers) == 4
    assert providers[0]["id"] == provider_id("CJ", "DGASPC Cluj") == \
        provider_id("CJ", "  dgaspc cluj ")  # a re-import with another spelling keeps it
    assert providers[1]["phone"] is None and providers[1]["accessibility"] == []
    assert version(providers) == version(list(reversed(providers)))
    assert version(providers) != version(providers[:3])


def test_every_problem_is_named_and_nothing_is_kept() -> None:
    bad = [{**GOOD[0], "kind": "spa"}, {**GOOD[1], "lat": 91.0}, {"name": "x"},
           {**GOOD[2], "accessibility": ["lift"], "colour": "red"},
           {**GOOD[0], "name": "DGASPC CLUJ"},  # the same derived id as the first
           {**GOOD[0], "id": "not-a-uuid", "email": "nobody"}, "a string"]
    providers, problems = validate_directory("CJ", bad)
    assert providers == []
    assert {str(p) for p in problems} >= {
        "providers[0].kind: unknown-kind", "providers[1].lat: range",
        "providers[2].kind: unknown-kind", "providers[2].address: missing",
        "providers[2].phone: a-phone-or-an-email", "providers[3].accessibility[0]: unknown-code",
        "providers[3].colour: unknown-field", "providers[4].id: same-as-providers[0]",
        "providers[5].id: format", "providers[5].email: format", "providers[6]: type"}
    assert validate_directory("CJ", {"not": "a list"})[1][0].rule == "type"


def test_the_nearest_suitable_providers_come_first() -> None:
    providers, _ = validate_directory("CJ", GOOD)
    gilau = (46.7580, 23.3850)
    found = nearest(providers, *gilau)
    assert [p["name"] for p in found] == ["Cabinet medical Gilau", "Centrul de zi Floresti",
                                         "DGASPC Cluj"]
    assert found[0]["distance_km"] < 1.0 < found[1]["distance_km"] < found[2]["distance_km"]
    assert [p["name"] for p in nearest(providers, *gilau, kind="child_protection")] == \
        ["DGASPC Cluj"]
    assert [p["name"] for p in nearest(providers, *gilau, accessibility=["wheelchair"])] == \
        ["Cabinet medical Gilau", "DGASPC Cluj"]
    assert nearest(providers, *gilau, kind="addiction") == []  # it has no coordinates
    assert len(nearest(providers, *gilau, limit=1)) == 1
    assert abs(distance_km(45.0, 23.0, 46.0, 23.0) - 111.195) < 0.01  # a degree of meridian


def test_a_referral_keeps_the_provider_as_it_was_and_its_course() -> None:
    providers, _ = validate_directory("CJ", GOOD)
    h = Household.create(locality="54975", county="CJ", address="Str. Mare 1", author="ana",
                         at="2026-01-05T09:00:00Z")
    pid = h.add_member("Ion", "Pop", "2014-02-03", "M", "child")
    rid = h.refer(providers[0], reason="suspected neglect", person_id=pid,
                  at="2026-01-06T09:00:00Z")
    h.set_referral_status(rid, "accepted", outcome="assessment on 2026-01-10",
                          at="2026-01-07T09:00:00Z")
    [(got_id, r)] = h.referrals().items()
    assert got_id == rid and validate(h.doc) == []
    assert r == {**r, "provider_name": "DGASPC Cluj", "provider_kind": "child_protection",
                 "provider_contact": "0264 420 000", "reason": "suspected neglect",
                 "status": "accepted", "referred_on": "2026-01-06", "by": "ana",
                 "status_by": "ana", "outcome": "assessment on 2026-01-10"}
    with pytest.raises(InvalidValueError, match="status"):
        h.set_referral_status(rid, "lost")
    with pytest.raises(UnknownEntityError):
        h.refer(providers[0], reason="x", person_id="0b8e7c36-55a0-4d55-8a5e-3c8a3b0e0d11")
    with pytest.raises(InvalidValueError, match="provider_kind"):
        h.refer({**providers[0], "kind": "spa"}, reason="x")
    with pytest.raises(InvalidValueError, match="future-date"):
        h.refer(providers[0], reason="x", referred_on="2999-01-01")


@pytest.mark.parametrize("bad, rule", [
    ({"lat": "north"}, "providers[0].lat: range"),
    ({"lat": [46.7]}, "providers[0].lat: range"),
    ({"lat": 10**400}, "providers[0].lat: range"),
    ({"lat": float("nan")}, "providers[0].lat: range"),
    ({"accessibility": [["wheelchair"]]}, "providers[0].accessibility[0]: unknown-code"),
    ({"accessibility": ["wheelchair", 1]}, "providers[0].accessibility[1]: unknown-code"),
    ({"name": "DGASPC\x00Cluj"}, "providers[0].name: control-character"),
    ({"hours": "8-16\x1b"}, "providers[0].hours: control-character"),
])
def test_values_that_used_to_crash_the_import_are_named_problems(bad, rule) -> None:
    """A review found that these raised (ValueError, TypeError, OverflowError) instead
    of being reported, so `vatra directory import` printed a traceback; and a NUL in a
    name passed validation and then failed in PostgreSQL. Each is now a named problem."""
    providers, problems = validate_directory("CJ", [{**GOOD[0], **bad}])
    assert providers == [] and rule in {str(p) for p in problems}


def test_a_later_status_does_not_keep_an_earlier_outcome() -> None:
    """A review found that a status set without an outcome kept the previous status's
    outcome ("cancelled" reading "service given"); the outcome is now always written."""
    providers, _ = validate_directory("CJ", GOOD)
    h = Household.create(locality="54975", county="CJ", address="Str. Mare 1", author="ana")
    rid = h.refer(providers[0], reason="x")
    h.set_referral_status(rid, "completed", outcome="service given")
    h.set_referral_status(rid, "cancelled")
    assert h.referrals()[rid]["outcome"] == "" and h.referrals()[rid]["status"] == "cancelled"


def test_a_referrals_course_always_names_its_writer() -> None:
    """Reviews found that a teammate could set a referral's status under another user's
    name; then that the rule's first form let `status_at` or `status_by` be rewritten or
    deleted while the status stayed, and refused honest changes whose time was earlier
    than the one before (a teammate's tablet clock ahead, concurrent offline changes).
    Any change to the course (status, outcome, status_by, status_at) now names its
    writer; the time is the tablet's word, as every recorded time is."""
    from datetime import UTC, datetime

    from automerge.core import ScalarType

    from conflict.policy import attribution_violations

    providers, _ = validate_directory("CJ", GOOD)
    h = Household.create(locality="54975", county="CJ", address="Str. Mare 1", author="ana",
                         at="2026-01-05T09:00:00Z")
    rid = h.refer(providers[0], reason="x", at="2026-01-06T09:00:00Z")
    h.set_referral_status(rid, "accepted", at="2026-01-06T10:00:00Z")
    now = datetime(2026, 1, 7, tzinfo=UTC)

    def judged(author: str, write) -> set[str]:
        after = Household(h.doc.fork(), h.household_id, author=author)
        write(after)
        return {v.rule for v in attribution_violations(h.doc, after.doc, "bob", now)}

    def raw(*puts):
        def write(after):
            obj = after._entity("referrals", "referral", rid)
            with after.doc.transaction() as tx:
                for key, value in puts:
                    if value is None:
                        tx.delete(obj, key)
                    else:
                        tx.put(obj, key, ScalarType.Str, value)
        return write

    def status(at):
        return lambda after: after.set_referral_status(rid, "completed", at=at)

    assert judged("bob", status("2026-01-06T10:00:00Z")) == set()  # the same second
    assert judged("bob", status("2026-01-06T09:00:00Z")) == set()  # an earlier clock
    assert judged("ana", status("2026-01-06T11:00:00Z")) == {"forged-attribution"}
    assert judged("bob", raw(("status_at", "2000-01-01T00:00:00Z"))) == {"forged-attribution"}
    assert judged("bob", raw(("status_by", None), ("status_at", None))) == \
        {"forged-attribution", "referral-record"}
    assert judged("bob", raw(("status", "refused"), ("status_by", "bob"))) == set()


def test_a_referral_dated_in_the_future_is_refused_by_the_server_too() -> None:
    """A review found the future `referred_on` was refused by the SDK only."""
    from datetime import UTC, datetime

    from automerge.core import ScalarType

    from conflict.policy import attribution_violations

    providers, _ = validate_directory("CJ", GOOD)
    h = Household.create(locality="54975", county="CJ", address="Str. Mare 1", author="bob",
                         at="2026-01-05T09:00:00Z")
    before = h.doc.fork()
    rid = h.refer(providers[0], reason="x", at="2026-01-06T09:00:00Z")
    obj = h._entity("referrals", "referral", rid)
    with h.doc.transaction() as tx:
        tx.put(obj, "referred_on", ScalarType.Str, "2099-01-01")
    found = attribution_violations(before, h.doc, "bob", datetime(2026, 1, 7, tzinfo=UTC))
    assert {(v.path[-1], v.rule) for v in found} == {("referred_on", "future-instant")}


def test_a_status_conflict_is_resolved_with_its_writer(tmp_path) -> None:
    """A review found that resolving a recorded conflict on a referral's status wrote the
    status alone, so the server refused it (the course names its writer) and the
    conflict stayed open."""
    from datetime import UTC, datetime

    from conflict.policy import attribution_violations

    providers, _ = validate_directory("CJ", GOOD)
    h = Household.create(locality="54975", county="CJ", address="Str. Mare 1", author="ana",
                         at="2026-01-05T09:00:00Z")
    rid = h.refer(providers[0], reason="x", at="2026-01-06T09:00:00Z")
    h.set_referral_status(rid, "accepted", at="2026-01-06T10:00:00Z")
    cid = h.record_conflict(("referrals", rid, "status"), ["accepted", "refused"],
                            at="2026-01-06T11:00:00Z")
    bob = Household(h.doc.fork(), h.household_id, author="bob")
    bob.resolve_conflict(cid, "refused")
    assert attribution_violations(h.doc, bob.doc, "bob", datetime.now(UTC)) == []
    assert (bob.referrals()[rid]["status"], bob.referrals()[rid]["status_by"]) == \
        ("refused", "bob")


def test_a_referred_member_may_leave_the_household() -> None:
    """A review found that a member once referred could never be removed: the referral's
    person_id was a live reference, so the approved removal failed the schema."""
    providers, _ = validate_directory("CJ", GOOD)
    h = Household.create(locality="54975", county="CJ", address="Str. Mare 1", author="ana")
    pid = h.add_member("Ion", "Pop", "2014-02-03", "M", "child")
    h.refer(providers[0], reason="x", person_id=pid)
    with h.doc.transaction() as tx:
        tx.delete(h._root_obj("members"), pid)
    assert validate(h.doc) == []
