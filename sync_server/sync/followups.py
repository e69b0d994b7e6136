"""The server's own changes that a device's batch calls for.

Each function returns an *edit*: what the pipeline applies to the household as the
server's own change, right after the batch, under the same lock (so the device sees it
in the same exchange). A merge that moved a service's status down gets the lattice
maximum written back; same-field conflicts are recorded for review with who wrote each
value; requests a supervisor approved through sync have their structural change applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from automerge.core import ROOT, ScalarType

from conflict import SERVER_AUTHOR, Household, InvalidValueError, policy
from sync_server.auth.identity import IdentityStore, User
from sync_server.store.contract import HouseholdStore
from sync_server.sync import conflicts

log = logging.getLogger(__name__)

Edit = Callable[[Household], object]


def restore_lattice(regressions: list[tuple[str, str, str]]) -> Edit:
    """A merge let a service's status move down (Automerge's winner of a concurrent
    write, e.g. ``in_progress`` over ``delivered``): write the lattice maximum back, and
    say why in the activity feed."""

    def restore(h: Household) -> None:
        plan = h.doc.get(ROOT, "service_plan")
        for service_id, before, after in regressions:
            service = h.doc.get(plan[1], service_id) if plan else None
            if service is None:
                continue
            with h.doc.transaction() as tx:  # the status alone: delivered_by/at stay
                tx.put(service[1], "status", ScalarType.Str, policy.lattice_max(before, after))
            h.append_activity("status-restored",
                              f"service {service_id}: {after} -> "
                              f"{policy.lattice_max(before, after)} (status only moves "
                              f"forward; a concurrent edit had moved it back)")

    return restore


def restore_stage(stage: str) -> Edit:
    """A device's move concurrent with a move the server had accepted (a teammate's, or
    the approved closing) won Automerge's tie-break: write the accepted stage back, and
    say why in the feed (the history keeps the device's move, the conflict record its
    value)."""

    def restore(h: Household) -> None:
        got = h.doc.get(ROOT, "case")
        if got is None:
            return
        with h.doc.transaction() as tx:
            tx.put(got[1], "stage", ScalarType.Str, stage)
        h.append_activity("stage-restored", f"case: {stage} (a move made meanwhile on "
                                            f"another device was concurrent with it)")

    return restore


def record_conflicts(found: list[conflicts.Detected],
                     writers: list[list[tuple[str, datetime]]], user: User) -> Edit:
    """Record same-field conflicts under ``conflicts`` (each value with who wrote it and
    when), with an activity entry saying whose edit met whose value."""

    def record(h: Household) -> None:
        for c, written in zip(found, writers, strict=True):
            h.record_conflict(c.path, [c.server_value, c.device_value], written=written)
            h.append_activity("conflict",
                              f"{'/'.join(map(str, c.path))}: {user.id}'s value and "
                              f"{written[0][0]}'s differ; choose one to resolve")

    return record


def apply_approved(household_id: str, request_ids: list[str]) -> Edit:
    """A county supervisor approved requests through sync: apply their structural changes
    as the server's own change (once: only a pending -> approved move)."""

    def apply(h: Household) -> None:
        for rid in request_ids:
            try:
                h.apply_decided(rid, as_server=True)
            except (InvalidValueError, ValueError, KeyError) as exc:
                log.warning("household %s: approved request could not be applied (%s)",
                            household_id, type(exc).__name__)
                h.append_activity("change_not_applied",
                                  f"request {rid}: approved, but it no longer applies")

    return apply


async def writers(store: HouseholdStore, identity: IdentityStore, household_id: str,
                  found: list[conflicts.Detected], user: User
                  ) -> list[list[tuple[str, datetime]]]:
    """Who wrote each conflicting value, and when the server received it: the server's
    value from the change log (the server's own changes are ``vatra``), the device's value
    from this batch. A writer that cannot be told is ``unknown``."""
    now = datetime.now(UTC)
    try:
        origins = await store.change_origins(
            household_id, {c.server_change for c in found if c.server_change is not None})
    except Exception:
        log.exception("household %s: reading who wrote conflicting values failed",
                      household_id)
        origins = {}
    users: dict[str, str] = {}
    out = []
    for c in found:
        by, at = "unknown", now
        origin = origins.get(c.server_change) if c.server_change else None
        if origin is not None:
            device_id, at = origin
            if device_id is None:
                by = SERVER_AUTHOR
            else:
                if device_id not in users:
                    device = await identity.device(device_id)
                    users[device_id] = device.user.id if device else "unknown"
                by = users[device_id]
        out.append([(by, at), (user.id, now)])
    return out
