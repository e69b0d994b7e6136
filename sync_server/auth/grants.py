"""What one session's device may do: the authorization state of a connection.

A :class:`Grants` is made for each session once its device is authenticated, and the
pipeline asks it before it reads or writes a household. Decisions are taken once per
household and session, from the rules in :mod:`sync_server.auth.access` and, for a
worker, the user's team households, read once from the database; a team change has
the live sessions decide again (:meth:`Grants.refresh`, from
``sync_server/gateway/teams.py``), and revoking the device cuts the session instead.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sync_server.auth import access
from sync_server.auth.identity import IdentityStore, User
from sync_server.auth.ids import CompactIds
from sync_server.store.contract import HouseholdRecord


class Grants:
    def __init__(self, user: User, identity: IdentityStore) -> None:
        self.user = user
        self._identity = identity
        #: a worker's team households, read once (compact: sessions are mostly idle)
        self._team: CompactIds | None = None
        self._read = 0  # counts caseload reads begun: an older read never overwrites a newer
        self._sync: dict[str, bool] = {}
        self._write: dict[str, bool] = {}

    async def caseload(self) -> list[str]:
        """The households this device should hold (its user's team households)."""
        if self._team is None:
            return (await self._read_caseload()).sorted()
        return self._team.sorted()

    async def _read_caseload(self) -> CompactIds:
        self._read += 1
        started = self._read
        team = CompactIds(await self._identity.caseload(self.user))
        if started == self._read:
            self._team = team
        return team

    async def erased(self) -> list[str]:
        """Erased households this device's user may still hold (told with the caseload)."""
        return await self._identity.erased(self.user)

    async def may_sync(self, record: HouseholdRecord) -> bool:
        allowed = self._sync.get(record.id)
        if allowed is None:
            team: tuple[str, ...] = ()
            if self.user.role == "worker" and record.id in await self.caseload():
                team = (self.user.id,)  # the user is on the team: all may_* need to know
            allowed = self._sync[record.id] = access.may_sync(self.user, record, team)
            self._write[record.id] = access.may_write(self.user, record, team)
        return allowed

    def may_write(self, household_id: str) -> bool:
        """Decided with :meth:`may_sync` (False before it)."""
        return self._write.get(household_id, False)

    def may_create(self, locality: str, county: str) -> bool:
        return access.may_create(self.user, locality, county)

    def created(self, household_id: str) -> None:
        """This device registered the household: it may sync and write it."""
        self._sync[household_id] = self._write[household_id] = True
        if self._team is not None:
            self._team.add(household_id)

    async def refresh(self, record: HouseholdRecord, team: Collection[str]) -> bool:
        """Decide again for this household, whose team changed and is now ``team`` (read
        by the caller); the caseload read before follows it. (It used to read the whole
        caseload again: a worker registering 100 households read it 100 times, once per
        team notification.) The old decision stands until the new one is made, so a
        batch checked meanwhile is judged by one or the other, never by none. Returns
        :meth:`may_sync`."""
        on_team = self.user.role == "worker" and self.user.id in team
        self._read += 1  # a caseload read begun before this does not overwrite it
        if self._team is not None:
            if on_team:
                self._team.add(record.id)
            else:
                self._team.discard(record.id)
        mine: tuple[str, ...] = (self.user.id,) if on_team else ()
        allowed = self._sync[record.id] = access.may_sync(self.user, record, mine)
        self._write[record.id] = access.may_write(self.user, record, mine)
        return allowed

    def concerned(self, household_id: str, team: Iterable[str]) -> bool:
        """Could a change of this household's team (now ``team``) change a decision of
        this session? Only for a worker who is on it now, or whom a decision or the
        caseload read before counted on it."""
        return self.user.role == "worker" and (
            self.user.id in team or household_id in self._sync
            or (self._team is not None and household_id in self._team))

    def reconsider(self, household_id: str) -> None:
        """Decide again for this household, on a caseload read anew (it was registered a
        moment ago, perhaps from another session of this user)."""
        self._team = None
        self._sync.pop(household_id, None)
        self._write.pop(household_id, None)
