"""Who may sync, write and create which household (docs/security.md, "Authorization").

- sync (read): the user is on the household's team, supervises its county,
  or is ``national``;
- write: as sync, but not ``national`` (read-only) — ``admin`` and ``ops``
  devices never reach households at all;
- create: a ``worker``, in a locality assigned to them.

Anything a device may not sync is answered exactly like a household that does
not exist (``doc-unavailable``), so nobody learns which households exist.
"""

from __future__ import annotations

from collections.abc import Collection

from sync_server.auth.identity import User
from sync_server.store.contract import HouseholdRecord

WRITERS = ("worker", "supervisor")


def may_sync(user: User, household: HouseholdRecord, team: Collection[str]) -> bool:
    if user.role == "national":
        return True
    if user.role == "supervisor":
        return user.county == household.county
    return user.role == "worker" and user.id in team


def may_write(user: User, household: HouseholdRecord, team: Collection[str]) -> bool:
    return user.role in WRITERS and may_sync(user, household, team)


def may_create(user: User, locality: str, county: str) -> bool:
    return user.may_create_in(locality, county)
