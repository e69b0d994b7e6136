"""Case management stages, their legal moves and deadlines (conflict/case.py): the rule
table, the deadlines a tablet computes offline, and the checks the server runs on a
device's batch. Pure logic: documents in memory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from automerge.core import ROOT, ObjType, ScalarType

from conflict import Household, InvalidValueError, validate
from conflict import case as c
from conflict.household import ProtectedPathError

OPENED = "2026-03-02T10:00:00Z"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def opened(*, emergency: bool = False, model: str = "aurora") -> Household:
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="ana",
                         guard=True, at=OPENED)
    h.open_case(identified_at=OPENED, emergency=emergency, model=model, at=OPENED)
    return h


def by_code(h: Household, now: datetime) -> dict[str, dict]:
    return {d["code"]: d for d in h.deadlines(now)}


def assessed(h: Household, at: str) -> None:
    """An assessment started and completed at ``at``."""
    aid = h.start_assessment(at=at)
    h.complete_assessment(aid, at=at)


# --- the rule table ------------------------------------------------------------


def test_the_packaged_table_has_the_methods_stages_and_no_way_to_closed() -> None:
    rules = c.load_rules()
    assert rules.version == c.LATEST_VERSION == 1
    assert rules.initial_stage == "identification"
    assert rules.may_move("identification", "detailed_assessment")
    assert not rules.may_move("identification", "services")  # no skipping ahead
    assert rules.may_move("monitoring", "planning")  # re-planning after re-assessment
    assert all("closed" not in targets for targets in rules.transitions.values())
    assert rules.labels["post_services"]["ro"].startswith("Monitorizare")


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update(schema=2), "unsupported rule table schema"),
    (lambda t: t["stages"].pop(), "stages must be, in order"),
    (lambda t: t["transitions"]["post_services"].append("closed"), "closes only by an approved"),
    (lambda t: t["deadlines"][0].update({"from": "lunch"}), "unknown anchor 'lunch'"),
    (lambda t: t["deadlines"][3]["months_by_model"].pop("aurora"), "names every model"),
    (lambda t: t["deadlines"][0].update(hours=-1), "non-negative"),
    (lambda t: t["deadlines"].append(dict(t["deadlines"][0])), "unique"),
])
def test_a_broken_rule_table_is_refused_by_name(tmp_path: Path, change, message) -> None:
    table = json.loads((Path(c.__file__).parent / "case_rules_v1.json").read_text())
    change(table)
    (tmp_path / "rules.json").write_text(json.dumps(table))
    with pytest.raises(c.CaseRulesError, match=message):
        c.load_rules_file(tmp_path / "rules.json")


# --- the household API -----------------------------------------------------------


def test_opening_and_moving_a_case_records_each_stage_and_stays_valid() -> None:
    h = opened()
    h.move_stage("detailed_assessment", at="2026-03-03T09:00:00Z")
    h.move_stage("planning", at="2026-03-10T09:00:00Z")
    assert validate(h.doc) == []
    got = h.case()
    assert got is not None
    assert (got["stage"], got["rules_version"], got["model"]) == ("planning", 1, "aurora")
    assert [e["stage"] for e in got["history"]] == \
        ["identification", "detailed_assessment", "planning"]
    assert got["entered"]["planning"] == "2026-03-10T09:00:00Z"
    assert {e["by"] for e in got["history"]} == {"ana"}


def test_an_illegal_move_and_closing_are_stopped_before_anything_is_written() -> None:
    h = opened()
    heads = h.doc.get_heads()
    with pytest.raises(InvalidValueError) as err:
        h.move_stage("services")
    assert err.value.rule == "stage-transition"
    with pytest.raises(ProtectedPathError) as closing:
        h.move_stage("closed")
    assert closing.value.request_kinds == ("close_household",)
    assert h.doc.get_heads() == heads
    with pytest.raises(ValueError, match="already opened"):
        h.open_case()


def test_an_approved_closing_closes_the_case_and_a_reopening_restarts_it() -> None:
    h = opened()
    h.set_status("active")  # still in registration: the status is free
    rid = h.request_change("close_household", {}, "the family moved away")
    sup = h.as_author("sup-cj")  # the server applies the approval as the supervisor
    sup.apply_request(rid, as_server=True)
    assert (sup.status, sup.case()["stage"]) == ("closed", "closed")
    assert sup.case()["history"][-1]["by"] == "sup-cj"
    again = h.request_change("reopen_household", {}, "back in the village")
    sup.apply_request(again, as_server=True)
    assert (sup.status, sup.case()["stage"]) == ("active", "detailed_assessment")
    assert validate(h.doc) == []


# --- deadlines -----------------------------------------------------------------


def test_the_initial_assessment_is_due_72_hours_after_identification() -> None:
    h = opened()
    assert by_code(h, T0 + timedelta(hours=71))["initial_assessment"]["state"] == "open"
    late = by_code(h, T0 + timedelta(hours=73))["initial_assessment"]
    assert (late["due"], late["state"]) == ("2026-03-05T10:00:00Z", "overdue")
    assessed(h, "2026-03-04T09:00:00Z")
    met = by_code(h, T0 + timedelta(days=10))["initial_assessment"]
    assert (met["state"], met["met_at"]) == ("met", "2026-03-04T09:00:00Z")


def test_an_emergency_is_due_within_one_hour_and_a_late_assessment_is_met_late() -> None:
    h = opened(emergency=True)
    assert by_code(h, T0)["initial_assessment"]["due"] == "2026-03-02T11:00:00Z"
    assessed(h, "2026-03-02T13:00:00Z")
    assert by_code(h, T0 + timedelta(days=1))["initial_assessment"]["state"] == "met_late"


def test_the_report_to_the_superior_is_due_24_hours_after_the_initial_assessment() -> None:
    h = opened()
    assert "initial_report" not in by_code(h, T0)  # nothing to report yet
    assessed(h, "2026-03-03T10:00:00Z")
    assert by_code(h, T0 + timedelta(days=2))["initial_report"]["state"] == "open"  # the due time
    assert by_code(h, T0 + timedelta(days=2, hours=1))["initial_report"]["state"] == "overdue"
    h.record_initial_report(at="2026-03-03T18:00:00Z")
    assert by_code(h, T0 + timedelta(days=2))["initial_report"]["state"] == "met"


def test_the_service_plan_is_due_30_days_after_identification_and_met_by_services() -> None:
    h = opened()
    assert by_code(h, T0)["service_plan"]["due"] == "2026-04-01T10:00:00Z"
    for stage, at in (("detailed_assessment", "2026-03-05T10:00:00Z"),
                      ("planning", "2026-03-20T10:00:00Z"), ("services", "2026-03-30T10:00:00Z")):
        h.move_stage(stage, at=at)
    plan = by_code(h, T0 + timedelta(days=60))["service_plan"]
    assert (plan["state"], plan["met_at"]) == ("met", "2026-03-30T10:00:00Z")


@pytest.mark.parametrize(("model", "completed", "due"), [
    ("aurora", "2026-05-31T08:00:00Z", "2027-02-28T08:00:00Z"),  # 9 months, to the month's end
    ("case_management", "2026-05-31T08:00:00Z", "2026-08-31T08:00:00Z"),
    ("case_management", "2026-11-30T08:00:00Z", "2027-02-28T08:00:00Z"),
])
def test_reassessment_is_due_by_the_cases_model(model: str, completed: str, due: str) -> None:
    h = opened(model=model)
    for stage in ("detailed_assessment", "planning", "services", "monitoring"):
        h.move_stage(stage, at="2026-04-01T10:00:00Z")
    assessed(h, completed)
    got = by_code(h, datetime(2026, 12, 1, tzinfo=UTC))["reassessment"]
    assert got["due"] == due
    assert got["state"] == ("overdue" if due < "2026-12-01" else "open")


def test_reassessment_is_not_asked_before_services_start() -> None:
    h = opened()
    assessed(h, "2026-03-03T10:00:00Z")
    assert "reassessment" not in by_code(h, T0 + timedelta(days=400))


def test_post_service_monitoring_runs_three_months_and_a_closed_case_shows_what_was_met() -> None:
    h = opened()
    for stage in ("detailed_assessment", "planning", "services", "monitoring"):
        h.move_stage(stage, at="2026-03-10T10:00:00Z")
    h.move_stage("post_services", at="2026-04-15T10:00:00Z")
    assert by_code(h, datetime(2026, 7, 14, tzinfo=UTC))["post_service_monitoring"]["state"] \
        == "running"
    done = by_code(h, datetime(2026, 7, 16, tzinfo=UTC))["post_service_monitoring"]
    assert (done["due"], done["state"], done["kind"]) == \
        ("2026-07-15T10:00:00Z", "complete", "minimum")
    h.set_status("active")
    h.as_author("sup-cj").apply_request(
        h.request_change("close_household", {}, "monitoring done"), as_server=True)
    states = {d["code"]: d["state"] for d in h.deadlines(datetime(2026, 8, 1, tzinfo=UTC))}
    assert states == {"service_plan": "met", "post_service_monitoring": "complete"}


def test_the_next_visit_a_report_plans_is_due_by_the_end_of_its_day() -> None:
    h = opened()
    vid = h.record_visit(visited_on="2026-03-03", place="home", purpose="initial assessment",
                         participants=["mother", "teacher"], synthesis="Three children.",
                         next_visit="2026-03-17", at="2026-03-03T15:00:00Z")
    assert validate(h.doc) == []
    assert h.visits()[vid]["synthesis"] == "Three children."
    assert by_code(h, datetime(2026, 3, 17, 20, tzinfo=UTC))["next_visit"]["state"] == "open"
    assert by_code(h, datetime(2026, 3, 18, 1, tzinfo=UTC))["next_visit"]["state"] == "overdue"
    h.record_visit(visited_on="2026-03-18", place="school", purpose="monitoring",
                   participants=[], synthesis="", at="2026-03-18T15:00:00Z")
    assert "next_visit" not in by_code(h, datetime(2026, 3, 19, tzinfo=UTC))


def test_a_bad_visit_is_refused_before_it_is_written() -> None:
    h = opened()
    heads = h.doc.get_heads()
    for bad in ({"visited_on": "17.03.2026"}, {"place": " "}, {"participants": "mother"},
                {"next_visit": "soon"}):
        args = {"visited_on": "2026-03-03", "place": "home", "purpose": "p",
                "participants": [], "synthesis": "", **bad}
        with pytest.raises(InvalidValueError):
            h.record_visit(**args)
    assert h.doc.get_heads() == heads


# --- the server's check -----------------------------------------------------------


def rewrite_identified_at(h: Household) -> None:
    with h.doc.transaction() as tx:
        tx.put(h.doc.get(ROOT, "case")[1], "identified_at", ScalarType.Str,
               "2026-01-01T00:00:00Z")


def raw_stage(h: Household, stage: str, *, with_history: bool = True) -> None:
    """What a modified client does: write the stage without the SDK's guard."""
    doc = h.doc
    case = doc.get(ROOT, "case")[1]
    was = c.case_record(doc)["stage"]
    with doc.transaction() as tx:
        tx.put(case, "stage", ScalarType.Str, stage)
        if with_history:
            Household(doc, h.household_id, author="ana")._append_stage(tx, stage, None, was)


def test_the_check_passes_legal_moves_and_a_new_case() -> None:
    h = opened()
    assert c.case_violations(Household.create(locality="54975", county="CJ", address="x",
                                              author="ana").doc, h.doc) == []
    before = h.doc.fork()
    h.move_stage("detailed_assessment")
    assert c.case_violations(before, h.doc) == []


@pytest.mark.parametrize(("edit", "rule"), [
    (lambda h: raw_stage(h, "services"), "stage-transition"),
    (lambda h: raw_stage(h, "detailed_assessment", with_history=False), "stage-transition"),
    (lambda h: raw_stage(h, "closed"), "protected-path"),
    (rewrite_identified_at, "case-record"),
])
def test_the_check_refuses_what_the_rule_table_does_not_allow(edit, rule) -> None:
    h = opened()
    before = h.doc.fork()
    edit(h)
    assert [v.rule for v in c.case_violations(before, h.doc)] == [rule]


def test_the_check_refuses_a_rewritten_history_and_a_removed_case() -> None:
    h = opened()
    before = h.doc.fork()
    entry = h.doc.get(h.doc.get(ROOT, "case_history")[1], 0)[1]
    with h.doc.transaction() as tx:
        tx.put(entry, "entered_at", ScalarType.Str, "2025-01-01T00:00:00Z")
    assert [v.rule for v in c.case_violations(before, h.doc)] == ["case-record"]
    h2 = opened()
    before2 = h2.doc.fork()
    with h2.doc.transaction() as tx:
        tx.delete(ROOT, "case")
    assert [v.rule for v in c.case_violations(before2, h2.doc)] == ["case-record"]


def test_a_case_opened_at_a_later_stage_is_refused() -> None:
    empty = Household.create(locality="54975", county="CJ", address="x", author="ana")
    before = empty.doc.fork()
    empty.open_case()
    raw_stage(empty, "planning")  # opened, then moved two stages on, in one batch
    assert [v.rule for v in c.case_violations(before, empty.doc)] == ["stage-transition"]


def test_two_teammates_moving_the_case_alike_offline_merge_without_a_violation() -> None:
    h = opened()
    h.move_stage("detailed_assessment")
    h.move_stage("planning")
    server = h.doc.fork()
    nurse = Household(h.doc.fork(), h.household_id, author="nurse", guard=True)
    h.move_stage("services", at="2026-03-20T10:00:00Z")
    nurse.move_stage("services", at="2026-03-21T10:00:00Z")
    merged = server.fork()
    merged.merge(h.doc)
    merged.merge(nurse.doc)
    assert c.case_violations(server, merged) == []
    got = Household(merged, h.household_id).case()
    assert got is not None and got["stage"] == "services"
    assert [e["by"] for e in got["history"]][-2:] in (["ana", "nurse"], ["nurse", "ana"])
    assert validate(merged) == []


def test_a_week_offline_moves_the_case_several_stages_in_one_batch() -> None:
    """The server sees a tablet's week of work as one batch: each recorded move is
    judged from the stage it left, not the batch's first stage against its last."""
    h = opened()
    server = h.doc.fork()
    for stage in ("detailed_assessment", "planning", "services"):
        h.move_stage(stage)
    assert c.case_violations(server, h.doc) == []


def test_teammates_moving_the_case_apart_offline_are_each_judged_as_made() -> None:
    """From monitoring, the nurse re-plans while the social worker starts post-service
    monitoring, both offline: each move is legal from the stage its writer saw, so both
    are accepted; the stage both wrote is a same-field conflict for the team (the server
    records it: tests/test_case_functional.py)."""
    h = opened()
    for stage in ("detailed_assessment", "planning", "services", "monitoring"):
        h.move_stage(stage)
    server = h.doc.fork()
    nurse = Household(h.doc.fork(), h.household_id, author="nurse", guard=True)
    nurse.move_stage("planning")
    h.move_stage("post_services")
    first = server.fork()
    first.merge(nurse.doc)
    assert c.case_violations(server, first) == []
    both = first.fork()
    both.merge(h.doc)
    assert c.case_violations(first, both) == []
    assert Household(both, h.household_id).case()["stage"] in ("planning", "post_services")


def test_a_household_registered_before_cases_is_told_so_and_left_untouched() -> None:
    """A section made on first use by two tablets at once would be two sections, one
    hiding the other's entries; so the sections are made at registration, and a household
    registered before they existed is refused (``missing``) instead of given one."""
    h = Household.create(locality="54975", county="CJ", address="x", author="ana")
    with h.doc.transaction() as tx:
        for key in ("case", "case_history", "visits"):
            tx.delete(ROOT, key)
    heads = h.doc.get_heads()
    for edit in (lambda: h.open_case(), lambda: h.record_visit(
            visited_on="2026-03-03", place="home", purpose="p", participants=[],
            synthesis="")):
        with pytest.raises(InvalidValueError) as err:
            edit()
        assert err.value.rule == "missing"
    assert h.doc.get_heads() == heads
    assert (h.case(), h.deadlines(), validate(h.doc)) == (None, [], [])


# --- regressions found in review ------------------------------------------------------


def raw_entry(h: Household, stage: str, frm: str | None, *, put_stage: bool = True) -> None:
    """A modified client's move: any ``from``, the stage written or not."""
    doc = h.doc
    case, history = doc.get(ROOT, "case")[1], doc.get(ROOT, "case_history")[1]
    with doc.transaction() as tx:
        if put_stage:
            tx.put(case, "stage", ScalarType.Str, stage)
        entry = tx.insert_object(history, tx.length(history), ObjType.Map)
        for key, value in (("stage", stage), ("entered_at", "2026-03-03T10:00:00Z"),
                           ("by", "ana"), *((("from", frm),) if frm else ())):
            tx.put(entry, key, ScalarType.Str, value)


def monitoring() -> Household:
    h = opened()
    for stage in ("detailed_assessment", "planning", "services", "monitoring"):
        h.move_stage(stage)
    return h


def closed_case() -> Household:
    h = opened()
    h.set_status("active")
    h.as_author("sup-cj").apply_request(h.request_change("close_household", {}, "moved"),
                                        as_server=True)
    return h


@pytest.mark.parametrize(("make", "edit", "rule"), [
    (opened, lambda h: raw_entry(h, "post_services", "monitoring"), "stage-transition"),
    (closed_case, lambda h: raw_entry(h, "services", "monitoring"), "protected-path"),
    (monitoring, lambda h: raw_entry(h, "identification", None), "stage-transition"),
    (opened, lambda h: raw_entry(h, "services", "planning", put_stage=False),
     "stage-transition"),
])
def test_a_move_is_judged_from_the_stage_the_case_was_in_not_the_one_it_claims(
        make, edit, rule) -> None:
    """Before: the server checked each history entry against the ``from`` it claimed.
    Found in review, reproduced with raw entries: ``identification`` moved straight to
    ``post_services`` by claiming ``from: monitoring``; a closed case reopened by a device
    the same way; a monitored case sent back to ``identification`` by an entry with no
    ``from``; an entry recording ``services`` without the stage changing, which marked
    the service plan met. Each change is now judged against the document at its own
    dependencies."""
    h = make()
    before = h.doc.fork()
    edit(h)
    assert rule in {v.rule for v in c.case_violations(before, h.doc)}


def test_a_case_opened_at_a_later_stage_with_a_made_up_history_is_refused() -> None:
    """Before: a new case written straight at ``monitoring`` with an entry claiming
    ``from: services`` passed (found in review)."""
    h = Household.create(locality="54975", county="CJ", address="x", author="ana")
    before = h.doc.fork()
    case = h.doc.get(ROOT, "case")[1]
    with h.doc.transaction() as tx:
        for key, value in (("stage", "monitoring"), ("model", "aurora"),
                           ("identified_at", OPENED)):
            tx.put(case, key, ScalarType.Str, value)
        tx.put(case, "rules_version", ScalarType.Int, 1)
    raw_entry(h, "monitoring", "services", put_stage=False)
    assert "stage-transition" in {v.rule for v in c.case_violations(before, h.doc)}


def test_two_teammates_opening_the_case_offline_are_both_accepted() -> None:
    """Before: the second upload was refused ``case-record`` when its ``identified_at``
    won Automerge's tie-break over the first's, and the rebuild dropped it (found in
    review; it depended on the devices' random actor ids). Each opening is now judged
    against what its writer saw: no case."""
    blank = Household.create(locality="54975", county="CJ", address="x", author="ana")
    server = blank.doc.fork()
    ana = Household(blank.doc.fork(), blank.household_id, author="ana", guard=True)
    nurse = Household(blank.doc.fork(), blank.household_id, author="nurse", guard=True)
    ana.doc.set_actor(bytes([0x10]) * 16)
    nurse.doc.set_actor(bytes([0xf0]) * 16)  # the larger actor id wins the tie-break
    ana.open_case(identified_at="2026-11-02T08:00:00Z")
    nurse.open_case(identified_at="2026-11-02T09:30:00Z")
    for first, second in ((ana, nurse), (nurse, ana)):
        one = server.fork()
        one.merge(first.doc)
        both = one.fork()
        both.merge(second.doc)
        assert c.case_violations(server, one) == []
        assert c.case_violations(one, both) == []


def test_resolving_a_stage_conflict_is_a_move_from_the_stage_that_stands() -> None:
    """Before: picking the losing value of a recorded stage conflict wrote the stage with
    no move, and was refused ``stage-transition`` (found in review). Then a second review
    found that accepting a move-less write whenever a conflict record listed the value let
    a stale record move the case anywhere it listed. Now resolving is a move the rule
    table allows from the stage that stands, recorded in the history."""
    h = monitoring()
    server = Household(h.doc, h.household_id, author="vatra")  # the server records it
    server.record_conflict(["case", "stage"], ["planning", "post_services"])
    before = h.doc.fork()
    [recorded] = h.conflicts(open_only=True)
    h.resolve_conflict(recorded["conflict_id"], "post_services")
    assert c.case_violations(before, h.doc) == []
    # without a conflict listing it, the same write is refused
    other = monitoring()
    before = other.doc.fork()
    with other.doc.transaction() as tx:
        tx.put(other.doc.get(ROOT, "case")[1], "stage", ScalarType.Str, "post_services")
    assert [v.rule for v in c.case_violations(before, other.doc)] == ["stage-transition"]


def test_post_service_monitoring_counts_from_the_latest_entry() -> None:
    """Before: re-entering ``post_services`` kept the first entry's three months, so the
    minimum read ``complete`` too early (found in review)."""
    h = opened()
    for stage, at in (("detailed_assessment", "2026-03-03T10:00:00Z"),
                      ("planning", "2026-03-04T10:00:00Z"), ("services", "2026-03-05T10:00:00Z"),
                      ("monitoring", "2026-03-06T10:00:00Z"),
                      ("post_services", "2026-04-15T10:00:00Z"),
                      ("monitoring", "2026-05-01T10:00:00Z"),
                      ("post_services", "2026-06-01T10:00:00Z")):
        h.move_stage(stage, at=at)
    got = by_code(h, datetime(2026, 8, 1, tzinfo=UTC))["post_service_monitoring"]
    assert (got["due"], got["state"]) == ("2026-09-01T10:00:00Z", "running")


def test_the_latest_of_two_visits_on_one_day_plans_the_next() -> None:
    """Before: two reports of one day were ordered by their random ids, so the next
    visit the later one planned could disappear (found in review)."""
    for first, second in (("ffffffff-0000-4000-8000-000000000000",
                           "00000000-0000-4000-8000-000000000000"),
                          ("00000000-0000-4000-8000-000000000000",
                           "ffffffff-0000-4000-8000-000000000000")):
        h = opened()
        h.record_visit(visited_on="2026-03-03", place="home", purpose="p", participants=[],
                       synthesis="", visit_id=first, at="2026-03-03T09:00:00Z")
        h.record_visit(visited_on="2026-03-03", place="school", purpose="p", participants=[],
                       synthesis="", next_visit="2026-03-10", visit_id=second,
                       at="2026-03-03T15:00:00Z")
        assert by_code(h, datetime(2026, 3, 20, tzinfo=UTC))["next_visit"]["due"] == \
            "2026-03-11T00:00:00Z"


def test_a_naive_time_is_taken_as_utc() -> None:
    """Before: ``deadlines(datetime(...))`` without a time zone raised TypeError."""
    h = opened()
    assert by_code(h, datetime(2026, 3, 5, 12)) == \
        by_code(h, datetime(2026, 3, 5, 12, tzinfo=UTC))


def test_a_stale_stage_conflict_moves_nothing_the_rule_table_does_not_allow() -> None:
    """Found in the second review: with an old conflict record listing ``planning`` and
    ``post_services`` left open, a raw write of ``planning`` over ``post_services`` (no
    move) passed, and so did resolving it weeks later from ``services``."""
    h = monitoring()
    Household(h.doc, h.household_id, author="vatra").record_conflict(
        ["case", "stage"], ["planning", "post_services"])
    h.move_stage("post_services")
    before = h.doc.fork()
    with h.doc.transaction() as tx:
        tx.put(h.doc.get(ROOT, "case")[1], "stage", ScalarType.Str, "planning")
    assert [v.rule for v in c.case_violations(before, h.doc)] == ["stage-transition"]
    other = monitoring()
    Household(other.doc, other.household_id, author="vatra").record_conflict(
        ["case", "stage"], ["planning", "post_services"])
    other.move_stage("planning")
    other.move_stage("services")
    [recorded] = other.conflicts(open_only=True)
    heads = other.doc.get_heads()
    with pytest.raises(InvalidValueError) as err:  # services -> post_services: not a move
        other.resolve_conflict(recorded["conflict_id"], "post_services")
    assert err.value.rule == "stage-transition" and other.doc.get_heads() == heads


def test_a_move_built_on_an_old_state_does_not_overtake_the_accepted_stage() -> None:
    """Found in the second review: a client chooses its change's dependencies, so one
    built on the state at ``monitoring`` (its op counter raised to win Automerge's
    tie-break) moved a case at ``post_services`` to ``planning``, which the rule table
    does not allow from there. The move is legal where it claims to stand, so it is kept
    in the history; but it does not descend from the accepted moves, so the server writes
    the accepted stage back (:func:`conflict.case.overtaken_stage`)."""
    h = monitoring()
    at_monitoring = h.doc.get_heads()
    h.move_stage("post_services")
    server = h.doc.fork()
    old = h.doc.fork_at(at_monitoring)
    old.set_actor(bytes([0xfe]) * 16)
    device = Household(old, h.household_id, author="ana", guard=True)
    device.append_notes("x" * 400)  # raises its op counter past the server's
    device.move_stage("planning")
    merged = server.fork()
    merged.merge(old)
    assert c.case_record(merged)["stage"] == "planning"  # it won the tie-break
    assert c.case_violations(server, merged) == []  # each change legal where it stood
    assert c.overtaken_stage(server, merged) == "post_services"
    # an honest move made after syncing descends from every accepted one
    after = server.fork()
    Household(after, h.household_id, author="ana", guard=True).move_stage("monitoring")
    assert c.overtaken_stage(server, after) is None


def test_a_batch_of_more_moves_than_a_tablet_makes_is_refused() -> None:
    """Found in the second review: checking a move reads the case's history, and a batch
    of 500 moves took 25 s of the server's CPU. A batch holds at most 20 moves."""
    h = monitoring()
    before = h.doc.fork()
    for _ in range(10):  # services and monitoring, back and forth: 20 legal moves
        h.move_stage("services")
        h.move_stage("monitoring")
    assert c.case_violations(before, h.doc) == []
    h.move_stage("services")  # the 21st
    assert [(v.path, v.rule) for v in c.case_violations(before, h.doc)] == \
        [(("case_history",), "stage-transition")]
