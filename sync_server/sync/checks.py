"""Stage 4, check: the rules a batch must keep before it is stored.

Each check reads the household before the batch (``before``, the committed copy) and the
fork that holds it (``after``), and refuses with the rule's code, naming paths and rules,
never a value. Who may write at all, whose changes they are, schema v1, protected paths
and the household's place, decision fields and cancellations; then what the merge calls
for: services whose status a merge moved down (the lattice), and requests a supervisor
just approved. The rules themselves are data in ``conflict/``; this module applies them
to a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from conflict import Household, Violation, answers, case, is_entity_id, paths, policy, schema, validate
from conflict.validate import validate_paths
from sync_server.auth.identity import Device, User
from sync_server.protocol.errors import DocumentError, ErrorCode, Refused
from sync_server.store.contract import HouseholdRecord
from sync_server.sync import conflicts
from sync_server.sync.change_ops import OpId, Prefix, Where
from sync_server.sync.households import HouseholdActor
from sync_server.sync.touched import touched_prefixes


def check_writer(may_write: bool, household_id: str) -> None:
    """Refuse a batch the device may not write."""
    if not may_write:
        raise Refused("this device may read this household but not change it",
                      code=ErrorCode.READ_ONLY, document_id=household_id)


def unbound_actors(device: Device, new: Sequence[Any]) -> frozenset[bytes]:
    """The actor ids of ``new`` not (yet) the device's: the pipeline binds them to it, or
    refuses the batch if another device holds one (IdentityStore.bind_actors)."""
    return frozenset(c.actor_id for c in new) - device.actor_ids


def read_touched(actor: HouseholdActor, fork: Document, new: Sequence[Any]
                 ) -> tuple[set[Prefix], dict[OpId, Where]] | None:
    """What the batch touched, from its own operations (the household's object index),
    or None to read it from a diff. The index costs one walk of the document to build,
    more than one diff, so it is built on a household's second batch while loaded: a
    household that gets one batch (a tablet's return) never pays for it."""
    if not actor.objects.built and not actor.objects.wanted:
        actor.objects.wanted = True
        return None
    return actor.objects.touched(fork, new, before=actor.doc)



def schema_violations(merged: Document, before: list[bytes] | None = None, *,
                      touched: set[tuple[str | int, ...]] | None = None) -> list[Violation]:
    """Schema v1 violations of ``merged``: of the parts touched since ``before`` when the
    patches can be read (the rest was valid already), else of the whole household.
    ``touched`` passes prefixes already read (:func:`touched_prefixes`)."""
    prefixes = touched
    if prefixes is None and before is not None:
        prefixes = touched_prefixes(merged, before)
    if prefixes is None:
        return validate(merged)
    try:
        found = validate_paths(merged, sorted(prefixes, key=repr))
    except ValueError:  # a prefix the schema does not define: check everything
        return validate(merged)
    return list({(v.path, v.rule): v for v in found}.values())  # prefixes may overlap


def lattice_fixes(merged: Document, server_heads: list[bytes],
                  tips: list[bytes]) -> list[tuple[str, str, str]]:
    """Services whose merged status is below the lattice maximum of the server's status
    before the merge, the batch's own status, and the merged one: ``(service_id, maximum,
    merged)``. Covers a device moving a status down, and a device's higher status losing
    Automerge's tie-break to a concurrent lower one."""
    plan = merged.get(ROOT, "service_plan")
    if plan is None or plan[0] != ObjType.Map:
        return []
    out = []
    for sid in merged.keys(plan[1]):
        path = ("service_plan", sid, "status")
        _, now = conflicts.scalar_at(merged, path, merged.get_heads())
        if now not in policy.SERVICE_STATUS_RANK:
            continue
        top = now
        for heads in (server_heads, tips):
            found, value = conflicts.scalar_at(merged, path, heads)
            if found and value in policy.SERVICE_STATUS_RANK:
                top = policy.lattice_max(top, value)
        if top != now:
            out.append((sid, top, now))
    return out


def newly_approved(before: Document, after: Document, hid: str) -> list[str]:
    """Requests that are approved in ``after`` and were pending (or absent) in ``before``."""
    was = {r["request_id"]: r.get("status") for r in Household(before, hid).change_requests()}
    return [r["request_id"] for r in Household(after, hid).change_requests()
            if r.get("status") == "approved" and was.get(r["request_id"]) in (None, "pending")]


def check_schema(household_id: str, merged: Document,
                  before: list[bytes] | None = None, *,
                  touched: set[tuple[str | int, ...]] | None = None) -> None:
    """The merged document must still be a valid household (schema v1); otherwise the
    batch is refused, naming every violation's path and rule (never a value)."""
    violations = schema_violations(merged, before, touched=touched)
    if violations:
        listed = "; ".join(f"{public_path(v.path)}: {v.rule}" for v in violations[:20])
        more = f" (and {len(violations) - 20} more)" if len(violations) > 20 else ""
        raise Refused(f"the batch breaks schema v1: {listed}{more}",
                      code=ErrorCode.SCHEMA_VIOLATION, document_id=household_id)


def check_catalogue(household_id: str, before: Document | None, after: Document,
                    sections: set[str | int] | None = None) -> None:
    """What the batch writes in answers and services must fit the indicator catalogue
    (the version each assessment records): refused as ``schema-violation``, naming
    every path and rule (:mod:`conflict.answers`)."""
    names = None if sections is None else {str(x) for x in sections}
    if names is not None and not names & {"assessments", "service_plan"}:
        return
    violations = answers.catalogue_violations(before, after, names)
    if violations:
        listed = "; ".join(f"{public_path(v.path)}: {v.rule}" for v in violations[:20])
        more = f" (and {len(violations) - 20} more)" if len(violations) > 20 else ""
        raise Refused(f"the batch does not fit the indicator catalogue: {listed}{more}",
                      code=ErrorCode.SCHEMA_VIOLATION, document_id=household_id)


def check_policy(record: HouseholdRecord, before: Document, after: Document, user: User,
                  sections: set[str | int] | None = None) -> None:
    """Structural paths of an active household change only through approved requests
    (applied by the server); a household's place (locality, county) only that way, in
    every status and for every role; decision fields only by the supervisors of the
    household's county (the registry's, ``record``: the one place every check reads).
    ``sections``: the top-level sections the batch touched (None = unknown: check all);
    a rule whose sections were not touched cannot be broken and is not read."""
    household_id = record.id

    def touched(*names: str) -> bool:
        return sections is None or any(n in sections for n in names)

    if touched(*policy.PLACE_FIELDS):
        moved = policy.place_violations(before, after)
        if moved:
            paths = ", ".join(public_path(v.path) for v in moved)
            raise Refused(f"protected path(s) changed without an approved change request: "
                          f"{paths}; a household moves only by an approved move_household "
                          f"request", code=ErrorCode.PROTECTED_PATH, document_id=household_id)

    if user.role == "worker" and touched("members", "team", "status"):
        violations = policy.protected_violations(before, after)
        if violations:
            paths = ", ".join(public_path(v.path) for v in violations[:20])
            raise Refused(f"protected path(s) changed without an approved change request: "
                          f"{paths}; file a change request instead",
                          code=ErrorCode.PROTECTED_PATH, document_id=household_id)
    check_decisions(record, before, after, user, sections)


def check_decisions(record: HouseholdRecord, before: Document, after: Document, user: User,
                    sections: set[str | int] | None = None) -> None:
    """A change request's decision, and a service's cancellation, only by a supervisor of
    the household's county (``decision-field``); a registration is checked against an
    empty document (a request filed already approved is a decision too)."""
    same_county = record.county == user.county
    for check, section in ((policy.decision_violations, "change_requests"),
                           (policy.cancel_violations, "service_plan")):
        if sections is not None and section not in sections:
            continue
        violations = check(before, after, user.role, same_county)
        if violations:
            paths = ", ".join(f"{public_path(v.path)} ({v.rule})" for v in violations[:20])
            raise Refused(f"only a supervisor of the household's county may write: {paths}",
                          code=ErrorCode.DECISION_FIELD, document_id=record.id)


def check_case(household_id: str, before: Document, after: Document,
               sections: set[str | int] | None = None) -> None:
    """A case moves only along its rule table's transitions, each move recorded
    (``stage-transition``); it closes and reopens only by an approved request
    (``protected-path``, like the household's status). The rules are
    :func:`conflict.case.case_violations`'."""
    if sections is not None and not sections & set(case.sections()):
        return
    violations = case.case_violations(before, after)
    if not violations:
        return
    listed = ", ".join(f"{public_path(v.path)} ({v.rule})" for v in violations[:20])
    if any(v.rule == case.CLOSED_BY_REQUEST for v in violations):
        raise Refused(f"protected path(s) changed without an approved change request: "
                      f"{listed}; file a close_household or reopen_household request",
                      code=ErrorCode.PROTECTED_PATH, document_id=household_id)
    raise Refused(f"the case's stage may not change this way: {listed}",
                  code=ErrorCode.STAGE_TRANSITION, document_id=household_id)


def check_attribution(household_id: str, before: Document, after: Document, user: User,
                      sections: set[str | int] | None = None,
                      now: datetime | None = None, *,
                      touched: set[tuple[str | int, ...]] | None = None) -> None:
    """Every attribution the batch writes names the signer (``forged-attribution``), and
    no time it records is ahead of the server's clock by more than the allowed skew
    (:data:`conflict.policy.MAX_CLOCK_SKEW`); the rule is data in ``conflict/policy.py``.
    ``touched``: the prefixes the batch touched, when known: only those entries are read."""
    names = None if sections is None else {str(x) for x in sections}
    if names is not None and not names & set(policy.ATTRIBUTIONS):
        return
    violations = policy.attribution_violations(before, after, user.id,
                                               now or datetime.now(UTC), names, touched)
    if violations:
        paths = ", ".join(f"{public_path(v.path)} ({v.rule})" for v in violations[:20])
        raise Refused(f"an entry must name its writer, this device's user, and a time not "
                      f"in the future: {paths}", code=ErrorCode.FORGED_ATTRIBUTION,
                      document_id=household_id)


def public_path(path: Sequence[str | int]) -> str:
    """A violation's path for an error reply: schema field names, indexes and entity ids
    stay; any other key (client-chosen, may be a name or an address) becomes ``*``."""
    spec: schema.Spec | None = schema.HOUSEHOLD
    parts = []
    for seg in path:
        known = (isinstance(seg, int) or is_entity_id(seg) or paths.is_element_id(seg)
                 or (isinstance(spec, schema.Record) and seg in spec.fields)
                 or seg in answers.known_indicators())  # catalogue codes name no one
        parts.append(str(seg) if known else "*")
        spec = schema.child_spec(spec, seg) if spec is not None else None
    return "/".join(parts) or "/"


def team_requests(before: Document, after: Document, hid: str) -> dict[str, list[str]]:
    """The ``change_team`` requests ``after`` files that ``before`` has not: request id ->
    the user ids its payload names (``""``, unassigning a role, names no one)."""
    old = {r["request_id"] for r in Household(before, hid).change_requests()}
    out = {}
    for r in Household(after, hid).change_requests():
        if r["request_id"] not in old and r["kind"] == "change_team":
            payload = r["payload"] if isinstance(r["payload"], dict) else {}
            out[r["request_id"]] = sorted({str(v) for v in payload.values() if v})
    return out


def team_user_ids(doc: Document) -> list[str]:
    got = doc.get(ROOT, "team")
    if got is None or got[0] != ObjType.Map:
        return []
    return [str(v[1]) for v, _ in doc.values(got[1])
            if isinstance(v, tuple) and v[0] == ScalarType.Str]


def root_str(doc: Document, key: str, document_id: str) -> str:
    """A household's root string field (``locality``, ``county``)."""
    got = doc.get(ROOT, key)
    if got is None or not isinstance(got[0], tuple) or got[0][0] != ScalarType.Str:
        raise DocumentError(f"household field {key!r} must be a string",
                            code=ErrorCode.NOT_A_HOUSEHOLD, document_id=document_id)
    return str(got[0][1])
