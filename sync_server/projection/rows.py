"""The web tier's tables (schema ``proj``) and the pure function that fills them.

The web platform never opens an Automerge document: it reads these tables. Each row
carries its household's ``locality`` and ``county`` so that row-level security can
scope a database session to a locality, a county or the nation without a join
(docs/projections.md has the policies and the statements the web tier runs).

:func:`project` turns one household (its document read once with ``keys()`` /
``values()``, about six times cheaper than ``extract``, docs/projections.md, plus a
few facts from the change log) into the
rows of every table. It is deterministic: projecting the same document with the same
log facts gives the same rows, which is what makes a rebuild comparable with the
incremental projection. :mod:`sync_server.projection.projector` writes the rows.

Nothing here depends on the current date: vulnerabilities are derived as of the latest
assessment (a child is under 18 on the day they were assessed), and "overdue" is
computed when a query runs (``deadline < current_date`` on an open service).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from conflict import case as case_rules
from conflict.catalogue import Catalogue, age_on, assessment_order, derive, standing_answers
from conflict.schema import OPEN_SERVICE


def primary_key(table: sa.Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.primary_key.columns)


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What the projection takes from the change log rather than from the document."""

    last_seq: int                       # the newest change the document holds
    updated_at: dt.datetime | None      # when the newest change was received
    updated_by: str | None              # its author (a user id; "vatra" for the server)


Rows = dict[str, list[dict[str, Any]]]  # table name -> rows


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _instant(value: object) -> dt.datetime | None:
    """An ISO 8601 instant from the document, or None if it is missing or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _date(value: object) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _json(value: object) -> Any:
    """A value as JSON can hold it (document scalars are str / int / float / bool / None)."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def project(household_id: str, doc: Mapping[str, Any], *, locality: str, county: str,
            log: LogFacts, catalogue: Catalogue) -> Rows:
    """Every projection row of one household.

    ``doc`` is the household document as plain values (``Household.to_dict()``);
    ``locality`` and ``county`` come from the registry (they are what the household was
    registered under, and what row-level security trusts).
    """
    scope = {"household_id": household_id, "locality": locality, "county": county}
    members = _map(doc.get("members"))
    assessments = _map(doc.get("assessments"))
    plan = _map(doc.get("service_plan"))
    raw_feed = doc.get("activity")
    feed: list[Any] = raw_feed if isinstance(raw_feed, list) else []

    persons_rows = []
    for pid in sorted(members):
        m = _map(members[pid])
        persons_rows.append({**scope, "person_id": str(pid),
                             "first_name": _str(m.get("first_name")),
                             "last_name": _str(m.get("last_name")),
                             "birth_date": _date(m.get("birth_date")),
                             "sex": _str(m.get("sex")),
                             "relation_to_head": _str(m.get("relation_to_head")),
                             "presence": _str(m.get("presence"))})

    def age_at(pid: str, on: dt.date | None) -> int | None:
        birth = _str(_map(members.get(pid)).get("birth_date"))
        if birth is None or on is None:
            return None
        try:
            return age_on(birth, on)
        except ValueError:
            return None

    # Every assessment, as recorded (the history the web tier compares) ...
    assessment_rows: list[dict[str, Any]] = []
    for aid, a in assessment_order(assessments):
        started, completed = _instant(a.get("started_at")), _instant(a.get("completed_at"))
        at = completed or started
        version = a.get("catalogue_version")
        for pid, given in sorted(_map(a.get("answers")).items()):
            assessment_rows.append({
                **scope, "assessment_id": aid, "person_id": str(pid), "started_at": started,
                "completed_at": completed, "by": _str(a.get("by")),
                "catalogue_version": version if isinstance(version, int) else 1,
                "age_at_assessment": age_at(str(pid), at.date() if at else None),
                "answers": _json(_map(given))})

    # ... and the answers that stand: per member and indicator, the latest within a year
    # of the latest assessment (conflict.catalogue.standing_answers, what derive reads).
    standing = standing_answers(assessments)
    answers_rows: list[dict[str, Any]] = []
    vulnerability_rows: list[dict[str, Any]] = []
    assessed_at = _instant(standing.latest_at) if standing.latest is not None else None
    if standing.latest is not None:
        on = assessed_at.date() if assessed_at is not None else None
        for pid, given in sorted(standing.answers.items()):
            source = standing.source[pid]
            answers_rows.append({**scope, "person_id": pid, "assessment_id": source,
                                 "assessed_at": assessed_at, "age_at_assessment": age_at(pid, on),
                                 "answers": _json(given)})
        if on is not None:
            for found in derive(doc, on=on, catalogue=catalogue):
                population = catalogue.vulnerabilities[found.vulnerability].applies_to
                vulnerability_rows.append({
                    **scope, "vulnerability": found.vulnerability,
                    "subject": found.person_id if found.person_id is not None else "household",
                    "person_id": found.person_id, "population": population,
                    "assessment_id": found.assessment_id, "identified_on": on})

    service_rows = []
    for sid in sorted(plan):
        s = _map(plan[sid])
        note = s.get("note")
        service_rows.append({**scope, "service_id": str(sid), "code": _str(s.get("code")),
                             "person_id": _str(s.get("person_id")),
                             "vulnerability": _str(s.get("vulnerability")),
                             "deadline": _date(s.get("deadline")),
                             "status": _str(s.get("status")),
                             "delivered_at": _instant(s.get("delivered_at")),
                             "delivered_by": _str(s.get("delivered_by")),
                             "note": note if isinstance(note, str) and note else None})

    request_rows = []
    for rid, raw in sorted(_map(doc.get("change_requests")).items()):
        r = _map(raw)
        request_rows.append({**scope, "request_id": str(rid), "kind": _str(r.get("kind")),
                             "payload": _json(r.get("payload")),
                             "reason": _str(r.get("reason")),
                             "requested_by": _str(r.get("requested_by")),
                             "requested_at": _instant(r.get("requested_at")),
                             "status": _str(r.get("status")),
                             "decided_by": _str(r.get("decided_by")),
                             "decided_at": _instant(r.get("decided_at")),
                             "decision_note": _str(r.get("decision_note"))})

    conflict_rows = []
    for cid, raw in sorted(_map(doc.get("conflicts")).items()):
        c = _map(raw)
        conflict_rows.append({**scope, "conflict_id": str(cid), "path": _json(c.get("path")),
                              "values": _json(c.get("values")),
                              "written": _json(c.get("written")),
                              "detected_at": _instant(c.get("detected_at")),
                              "resolved_by": _str(c.get("resolved_by")),
                              "resolution": _json(c.get("resolution"))})

    activity_rows = []
    for position, raw in enumerate(feed):
        a = _map(raw)
        activity_rows.append({**scope, "position": position, "at": _instant(a.get("at")),
                              "by": _str(a.get("by")), "kind": _str(a.get("kind")),
                              "text": _str(a.get("text"))})

    # The case: its stage, and each deadline's due time and when it was met; whether one
    # is overdue is for the query's clock (nothing here reads the date).
    case = _map(doc.get("case"))
    stage = _str(case.get("stage"))
    history = doc.get("case_history")
    entered = [_instant(_map(e).get("entered_at")) for e in
               (history if isinstance(history, list) else []) if _map(e).get("stage") == stage]
    since = max((at for at in entered if at is not None), default=None)
    deadline_rows = [{**scope, "code": d.code, "kind": d.kind, "due": d.due, "met_at": d.met_at}
                     for d in case_rules.dues(doc)] if stage is not None else []
    visit_rows = []
    for vid, raw in sorted(_map(doc.get("visits")).items()):
        v = _map(raw)
        synthesis = v.get("synthesis")
        visit_rows.append({**scope, "visit_id": str(vid), "visited_on": _date(v.get("visited_on")),
                           "place": _str(v.get("place")), "purpose": _str(v.get("purpose")),
                           "participants": _json(v.get("participants") or []),
                           "synthesis": synthesis if isinstance(synthesis, str) else None,
                           "next_visit": _date(v.get("next_visit")), "by": _str(v.get("by")),
                           "recorded_at": _instant(v.get("recorded_at"))})

    referral_rows = []
    for rid, raw in sorted(_map(doc.get("referrals")).items()):
        r = _map(raw)
        reason = r.get("reason")
        referral_rows.append({
            **scope, "referral_id": str(rid), "person_id": _str(r.get("person_id")),
            "provider_id": _str(r.get("provider_id")), "provider_name": _str(r.get("provider_name")),
            "provider_kind": _str(r.get("provider_kind")),
            "provider_contact": _str(r.get("provider_contact")),
            "reason": reason if isinstance(reason, str) else None, "status": _str(r.get("status")),
            "outcome": _str(r.get("outcome")) or None, "referred_on": _date(r.get("referred_on")),
            "by": _str(r.get("by")), "recorded_at": _instant(r.get("recorded_at")),
            "status_by": _str(r.get("status_by")), "status_at": _instant(r.get("status_at"))})

    abroad_rows = []
    for rid, raw in sorted(_map(doc.get("parents_abroad")).items()):
        r = _map(raw)
        abroad_rows.append({**scope, "record_id": str(rid), "child_id": _str(r.get("child_id")),
                            "parent": _str(r.get("parent")), "country": _str(r.get("country")),
                            "since": _date(r.get("since")),
                            "carer_name": _str(r.get("carer_name")),
                            "carer_relation": _str(r.get("carer_relation")),
                            "carer_person_id": _str(r.get("carer_person_id")),
                            "notified_on": _date(r.get("notified_on")),
                            "by": _str(r.get("by")), "recorded_at": _instant(r.get("recorded_at"))})

    team_rows = [{**scope, "role": str(role), "user_id": user}
                 for role, value in sorted(_map(doc.get("team")).items())
                 if (user := _str(value)) is not None]

    registered = next((_map(a) for a in feed if _map(a).get("kind") == "registered"), {})
    gps = _map(doc.get("gps"))
    open_deadlines = [r["deadline"] for r in service_rows
                      if r["status"] in OPEN_SERVICE and r["deadline"] is not None]
    address = _str(doc.get("address"))
    names = [str(n) for r in persons_rows for n in (r["first_name"], r["last_name"]) if n]
    household_row = {
        **scope, "status": _str(doc.get("status")), "address": address,
        "lat": _float(gps.get("lat")), "lon": _float(gps.get("lon")),
        "members_present": sum(1 for r in persons_rows if r["presence"] == "present"),
        "members_total": len(persons_rows),
        "vulnerabilities": len(vulnerability_rows),
        "services_open": sum(1 for r in service_rows if r["status"] in OPEN_SERVICE),
        "next_deadline": min(open_deadlines) if open_deadlines else None,
        "last_assessment_id": standing.latest,
        "last_assessment_at": assessed_at,
        "created_by": _str(registered.get("by")),
        "created_at": _instant(registered.get("at")),
        "updated_by": log.updated_by, "updated_at": log.updated_at,
        "case_stage": stage, "case_stage_since": since,
        "case_model": _str(case.get("model")) if stage is not None else None,
        "search": " ".join([address or "", *names]).lower().strip(),
        "projected_seq": log.last_seq,
    }
    return {"households": [household_row], "persons": persons_rows, "answers": answers_rows,
            "assessments": assessment_rows,
            "vulnerabilities": vulnerability_rows, "services": service_rows,
            "change_requests": request_rows, "conflicts": conflict_rows,
            "activity": activity_rows, "case_deadlines": deadline_rows, "visits": visit_rows,
            "parents_abroad": abroad_rows, "team": team_rows, "referrals": referral_rows}

