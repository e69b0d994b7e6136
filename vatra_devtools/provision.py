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
from sync_server.auth.identity import IdentityStore

DEFAULT_PLACES = (("54975", "CJ"),)
#: The PIN simulated tablets seal their replica with (a person would choose one).
SIMULATED_PIN = "2468"


class Provisioner:
    def __init__(self, identity: IdentityStore, http_url: str) -> None:
        self.identity = identity
        self.http_url = http_url

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
        """Put these users (or the users of these tablets) on the household's team."""
        users = [t.credentials.user_id if isinstance(t, Replica) and t.credentials else str(t)
                 for t in tablets_or_users]
        await self.identity.set_team(household_id, users)
