"""Provisioning as an admin and a tablet do it, for the demo, the bench and the tests.

``Provisioner.tablet(path, user_id)`` adds the user if needed, makes a
one-time enrollment code, and enrolls a new replica with it over HTTP —
the same steps as ``vatra user add`` + ``vatra device enroll-code`` + the
tablet's enrollment screen. Nothing here bypasses authentication.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from client_sdk import Replica, enroll
from conflict import SERVER_AUTHOR, TEAM_ROLES
from sync_server.auth.identity import IdentityStore
from sync_server.store.contract import Author
from sync_server.sync.pipeline import Synchronizer

DEFAULT_PLACES = (("54975", "CJ"),)
#: The PIN simulated tablets seal their replica with (a person would choose one).
SIMULATED_PIN = "2468"


class Provisioner:
    def __init__(self, identity: IdentityStore, http_url: str,
                 synchronizer: Synchronizer | None = None) -> None:
        self.identity = identity
        self.http_url = http_url
        self.synchronizer = synchronizer  # share() changes teams through the pipeline

    async def user(self, user_id: str, *, role: str = "worker", county: str | None = None,
                   localities: Iterable[tuple[str, str]] = DEFAULT_PLACES) -> None:
        if await self.identity.user(user_id) is None:
            await self.identity.add_user(
                user_id, role, county=county if role == "supervisor" else None,
                localities=localities if role == "worker" else ())

    async def code(self, user_id: str) -> str:
        return (await self.identity.create_enrollment_code(user_id)).code

    async def tablet(self, path: Path, user_id: str, *, role: str = "worker",
                     county: str | None = "CJ",
                     localities: Iterable[tuple[str, str]] = DEFAULT_PLACES,
                     actor_id: bytes | None = None, pin: str = SIMULATED_PIN) -> Replica:
        await self.user(user_id, role=role, county=county, localities=localities)
        replica = Replica(path, pin=pin, actor_id=actor_id)
        await enroll(replica, self.http_url, await self.code(user_id))
        return replica

    async def share(self, household_id: str, *tablets_or_users: Replica | str) -> None:
        """Make these workers (or the users of these tablets) the household's team, in its
        document, as an approved ``change_team`` would: the roles in order (social worker,
        nurse, counsellor, case responsible). Access follows the document's team."""
        if self.synchronizer is None:
            raise RuntimeError("share() needs the server's synchronizer")
        users = list(dict.fromkeys(
            t.credentials.user_id if isinstance(t, Replica) and t.credentials else str(t)
            for t in tablets_or_users))
        if len(users) > len(TEAM_ROLES):
            raise ValueError(f"a team has {len(TEAM_ROLES)} roles")
        roles = {role: users[i] if i < len(users) else None for i, role in enumerate(TEAM_ROLES)}
        await self.synchronizer.server_change(
            household_id, lambda h: h.set_team(**roles),
            author=Author("provisioning", SERVER_AUTHOR))
