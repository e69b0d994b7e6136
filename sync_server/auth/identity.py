"""Who is who: users and their roles and places, household teams, devices, enrollment.

Roles (docs/security.md, "Authorization"): ``worker`` (member of household teams, creates
households in the localities assigned to them), ``supervisor`` (of one
county), ``national`` (reads everything), ``admin`` (users and devices),
``ops`` (metrics only).

A device enrolls with a one-time code an admin made for a user
(``vatra device enroll-code --user U``). Codes look like ``K7Q2M9-…``: the
first group names the code, the rest is its secret, stored only as a hash.
Wrong secrets count against the code (it locks after
:data:`MAX_FAILED_ATTEMPTS`); every refusal has the same wording, so a
guesser learns nothing about which codes exist.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nacl.encoding
import nacl.hash
import sqlalchemy as sa
from nacl.bindings import sodium_memcmp
from nacl.signing import SigningKey
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conflict import SERVER_AUTHOR
from conflict.schema import FORMATS
from sync_server.protocol.errors import ConfigError, ErrorCode, StorageError, VatraError
from sync_server.store.audit import AuditEvent, AuditLog
from sync_server.store.database import DATABASE_ERRORS
from sync_server.store.tables import (
    device_actors,
    devices,
    enrollment_codes,
    household_keys,
    household_team,
    households,
    user_localities,
    users,
)

log = logging.getLogger(__name__)

ROLES = ("worker", "supervisor", "national", "admin", "ops")
MAX_FAILED_ATTEMPTS = 5
REVOCATIONS = "vatra_revocations"  # NOTIFY channel: payload = the revoked device id
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud over a phone



#: Actor ids one device may hold: its SDK's, and those a stock automerge-repo peer makes
#: (one per document it creates or loads) bound on first use over its session.
MAX_ACTORS_PER_DEVICE = 100_000


class IdentityError(VatraError):
    """A user, device or enrollment request was refused; the code names the rule."""

    code = ErrorCode.ENROLLMENT_REFUSED


@dataclass(frozen=True, slots=True)
class User:
    id: str
    role: str
    county: str | None
    localities: tuple[tuple[str, str], ...] = ()  # (SIRUTA locality, county)

    def may_create_in(self, locality: str, county: str) -> bool:
        return self.role == "worker" and (locality, county) in self.localities


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    user: User
    signing_key: bytes
    exchange_key: bytes
    actor_ids: frozenset[bytes]
    revoked: bool


@dataclass(frozen=True, slots=True)
class EnrollmentCode:
    code: str
    user_id: str
    expires_at: datetime


def _hash_secret(secret: str) -> bytes:
    return nacl.hash.blake2b(secret.encode(), digest_size=32, person=b"vatra-enroll",
                             encoder=nacl.encoding.RawEncoder)


def _random(n: int) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(n))


class IdentityStore:
    def __init__(self, engine: AsyncEngine, audit: AuditLog | None = None) -> None:
        self._engine = engine
        self.audit = audit  # enrollments and revocations are audited when given

    # -- users and places ------------------------------------------------------------------

    async def add_user(self, user_id: str, role: str, *, county: str | None = None,
                       localities: Iterable[tuple[str, str]] = ()) -> User:
        check_user(user_id, role, county)
        places = sorted(set(localities))
        _check_places(places)
        async with self._engine.begin() as conn:
            if (await conn.execute(sa.select(users.c.id).where(users.c.id == user_id))).first():
                raise IdentityError(f"user {user_id} exists already (vatra user update "
                                    f"changes a user)", code=ErrorCode.USER_EXISTS)
            await conn.execute(sa.insert(users).values(id=user_id, role=role, county=county))
            if places:
                await conn.execute(sa.insert(user_localities), [
                    {"user_id": user_id, "locality": loc, "county": cty} for loc, cty in places])
        return User(user_id, role, county, tuple(places))

    async def users(self, *, role: str | None = None, county: str | None = None
                    ) -> list[UserRecord]:
        """Every user (of ``role``, of ``county``: a supervisor's, or a worker with a
        locality there), with when they were disabled and their active devices."""
        active = (sa.select(sa.func.count()).select_from(devices)
                  .where(devices.c.user_id == users.c.id, devices.c.revoked_at.is_(None))
                  .scalar_subquery())
        query = sa.select(users, active.label("devices")).order_by(users.c.id)
        if role is not None:
            query = query.where(users.c.role == role)
        if county is not None:
            query = query.where(sa.or_(users.c.county == county, sa.exists().where(
                user_localities.c.user_id == users.c.id, user_localities.c.county == county)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            places: dict[str, list[tuple[str, str]]] = {}
            for r in await conn.execute(sa.select(user_localities).order_by(
                    user_localities.c.user_id, user_localities.c.locality)):
                places.setdefault(r.user_id, []).append((r.locality, r.county))
        return [UserRecord(User(r.id, r.role, r.county, tuple(places.get(r.id, ()))),
                           r.created_at, r.disabled_at, r.devices) for r in rows]

    async def update_user(self, user_id: str, *, role: str | None = None,
                          county: str | None = None,
                          add: Iterable[tuple[str, str]] = (),
                          remove: Iterable[tuple[str, str]] = ()) -> User:
        """Change a user's role, county or localities (the rules of :meth:`add_user` hold
        for the result). Teams already naming the user stay (decision 61: a household's
        team changes by an approved request); new teams check the new localities."""
        add, remove = sorted(set(add)), sorted(set(remove))
        _check_places(add)
        async with self._engine.begin() as conn:
            user = await _user(conn, user_id)
            if user is None:
                raise IdentityError(f"unknown user {user_id}", code=ErrorCode.UNKNOWN_USER)
            new_role = role or user.role
            new_county = county if county is not None else user.county
            if new_role not in ROLES:
                raise IdentityError(f"role must be one of {', '.join(ROLES)}",
                                    code=ErrorCode.INVALID_ROLE)
            if new_role == "supervisor" and not new_county:
                raise IdentityError("a supervisor needs a county", code=ErrorCode.INVALID_ROLE)
            missing = [f"{loc}:{cty}" for loc, cty in remove if (loc, cty) not in user.localities]
            if missing:
                raise IdentityError(f"user {user_id} has no locality {', '.join(missing)}",
                                    code=ErrorCode.INVALID_LOCALITY)
            await conn.execute(sa.update(users).where(users.c.id == user_id)
                               .values(role=new_role, county=new_county))
            for loc, _ in remove:
                await conn.execute(sa.delete(user_localities).where(
                    user_localities.c.user_id == user_id, user_localities.c.locality == loc))
            fresh = [(loc, cty) for loc, cty in add if (loc, cty) not in user.localities]
            if fresh:
                await conn.execute(sa.insert(user_localities), [
                    {"user_id": user_id, "locality": loc, "county": cty} for loc, cty in fresh])
            updated = await _user(conn, user_id)
        assert updated is not None
        return updated

    async def disable_user(self, user_id: str, *, by: str) -> list[str]:
        """Disable a user (a worker who leaves): every active device of theirs is revoked
        (live sessions cut on every server), no enrollment code enrolls another, and no
        new code is made, until :meth:`enable_user`. The user stays, named in the audit
        log and in the households' attributions. Returns the devices revoked now."""
        async with self._engine.begin() as conn:
            done = await conn.execute(sa.update(users).where(
                users.c.id == user_id, users.c.disabled_at.is_(None))
                .values(disabled_at=sa.func.now()))
            if done.rowcount == 0:
                if await _user(conn, user_id) is None:
                    raise IdentityError(f"unknown user {user_id}", code=ErrorCode.UNKNOWN_USER)
                raise IdentityError(f"user {user_id} is disabled already",
                                    code=ErrorCode.USER_DISABLED)
            revoked = list((await conn.execute(
                sa.update(devices).where(devices.c.user_id == user_id,
                                         devices.c.revoked_at.is_(None))
                .values(revoked_at=sa.func.now()).returning(devices.c.id))).scalars())
            if self.audit is not None:
                await self.audit.append(conn, [
                    AuditEvent("user-disabled", user_id=user_id,
                               detail={"by": by, "devices_revoked": len(revoked)}),
                    *(AuditEvent("device-revoked", user_id=user_id, device_id=d)
                      for d in sorted(revoked))])
            for d in revoked:
                await conn.execute(sa.select(sa.func.pg_notify(REVOCATIONS, d)))
        return sorted(revoked)

    async def enable_user(self, user_id: str, *, by: str) -> None:
        """Undo :meth:`disable_user`: new codes enroll new devices (the revoked ones stay
        revoked)."""
        async with self._engine.begin() as conn:
            done = await conn.execute(sa.update(users).where(
                users.c.id == user_id, users.c.disabled_at.is_not(None))
                .values(disabled_at=None))
            if done.rowcount == 0:
                if await _user(conn, user_id) is None:
                    raise IdentityError(f"unknown user {user_id}", code=ErrorCode.UNKNOWN_USER)
                raise IdentityError(f"user {user_id} is not disabled",
                                    code=ErrorCode.USER_DISABLED)
            if self.audit is not None:
                await self.audit.append(conn, [AuditEvent("user-enabled", user_id=user_id,
                                                          detail={"by": by})])

    async def devices(self, user_id: str | None = None) -> list[DeviceRecord]:
        """Every device (of ``user_id``), newest first: id, user, enrolled, revoked."""
        query = sa.select(devices.c.id, devices.c.user_id, devices.c.created_at,
                          devices.c.revoked_at).order_by(devices.c.created_at.desc(),
                                                         devices.c.id)
        if user_id is not None:
            query = query.where(devices.c.user_id == user_id)
        async with self._engine.connect() as conn:
            return [DeviceRecord(r.id, r.user_id, r.created_at, r.revoked_at)
                    for r in await conn.execute(query)]

    async def user(self, user_id: str) -> User | None:
        async with self._engine.connect() as conn:
            return await _user(conn, user_id)

    # -- teams -----------------------------------------------------------------------------

    async def ineligible_team_members(self, user_ids: Collection[str], locality: str,
                                      county: str) -> list[str]:
        """Those of ``user_ids`` who may not be on a household's team in ``locality``: a
        team member is a user with the worker role assigned that locality."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return []
        async with self._engine.connect() as conn:
            eligible = set((await conn.execute(
                sa.select(users.c.id).join(user_localities,
                                           user_localities.c.user_id == users.c.id)
                .where(users.c.id.in_(wanted), users.c.role == "worker",
                       user_localities.c.locality == locality,
                       user_localities.c.county == county))).scalars())
        return [u for u in wanted if u not in eligible]

    async def team(self, household_id: str) -> list[str]:
        """Who may sync the household as its team: nobody once it is erased (its team rows
        are kept, to tell the team's tablets of the erasure)."""
        async with self._engine.connect() as conn:
            return sorted((await conn.execute(
                sa.select(household_team.c.user_id)
                .where(household_team.c.household_id == household_id,
                       ~_erased(household_team.c.household_id)))).scalars())

    async def caseload(self, user: User) -> list[str]:
        """The households a user's devices keep: a worker's team households, erased ones
        left out. Supervisors and national users open households on demand (a county is
        ~48,000 households). The ids are interned: every session of the user, and the
        server's watch lists, share one copy of each (most sessions are idle)."""
        if user.role != "worker":
            return []
        with _reachable("reading a caseload"):
            async with self._engine.connect() as conn:
                return sorted(sys.intern(h) for h in (await conn.execute(
                    sa.select(household_team.c.household_id)
                    .where(household_team.c.user_id == user.id,
                           ~_erased(household_team.c.household_id)))).scalars())

    async def erased(self, user: User) -> list[str]:
        """The erased households a user's tablets may still hold, so that they discard them
        and say so: a worker's team households (an erasure keeps the team rows for this),
        a supervisor's county's. National users' tablets hold none offline."""
        if user.role == "worker":
            query = sa.select(household_team.c.household_id).where(
                household_team.c.user_id == user.id, _erased(household_team.c.household_id))
        elif user.role == "supervisor":
            query = sa.select(households.c.id).where(
                households.c.county == user.county, _erased(households.c.id))
        else:
            return []
        with _reachable("reading erased households"):
            async with self._engine.connect() as conn:
                return sorted((await conn.execute(query)).scalars())

    # -- enrollment ------------------------------------------------------------------------

    async def create_enrollment_code(self, user_id: str, *,
                                     ttl: timedelta = timedelta(hours=24)) -> EnrollmentCode:
        code_id, secret = _random(6), _random(16)
        expires = datetime.now(UTC) + ttl
        async with self._engine.begin() as conn:
            if await _user(conn, user_id) is None:
                raise IdentityError(f"unknown user {user_id}", code=ErrorCode.UNKNOWN_USER)
            if await _disabled(conn, user_id):
                raise IdentityError(f"user {user_id} is disabled (vatra user enable)",
                                    code=ErrorCode.USER_DISABLED)
            await conn.execute(sa.insert(enrollment_codes).values(
                id=code_id, secret_hash=_hash_secret(secret), user_id=user_id,
                expires_at=expires))
        readable = "-".join([code_id] + [secret[i:i + 4] for i in range(0, 16, 4)])
        return EnrollmentCode(readable, user_id, expires)

    async def enroll(self, code: str, *, signing_key: bytes, exchange_key: bytes,
                     actor_ids: Sequence[bytes]) -> Device:
        """Bind a device's public keys and actor ids to the code's user; use the code up."""
        refused = IdentityError("enrollment code is invalid, expired or already used")
        if len(signing_key) != 32 or len(exchange_key) != 32:
            raise IdentityError("keys must be 32-byte public keys",
                                code=ErrorCode.MALFORMED_MESSAGE)
        if not actor_ids or any(len(a) != 16 for a in actor_ids):
            raise IdentityError("actor ids must be 16 bytes each",
                                code=ErrorCode.MALFORMED_MESSAGE)
        code_id, _, secret = code.strip().upper().partition("-")
        secret = secret.replace("-", "")
        wrong_secret = False
        async with self._engine.connect() as conn:
            async with conn.begin():
                row = (await conn.execute(
                    sa.select(enrollment_codes).where(enrollment_codes.c.id == code_id)
                    .with_for_update())).first()
                if row is None or row.used_at is not None \
                        or row.failed_attempts >= MAX_FAILED_ATTEMPTS \
                        or row.expires_at <= datetime.now(UTC) \
                        or await _disabled(conn, row.user_id):
                    raise refused
                if not sodium_memcmp(_hash_secret(secret), row.secret_hash):
                    # Counted (committed) before refusing: the code locks after a few guesses.
                    await conn.execute(
                        sa.update(enrollment_codes).where(enrollment_codes.c.id == code_id)
                        .values(failed_attempts=enrollment_codes.c.failed_attempts + 1))
                    wrong_secret = True
                else:
                    device_id = await self._register(conn, row.user_id, code_id, signing_key,
                                                     exchange_key, actor_ids)
                    user = await _user(conn, row.user_id)
                    if self.audit is not None:
                        await self.audit.append(conn, [AuditEvent(
                            "device-enrolled", user_id=row.user_id, device_id=device_id,
                            detail={"actor_ids": len(actor_ids)})])
            if wrong_secret:
                raise refused
        assert user is not None
        return Device(device_id, user, signing_key, exchange_key, frozenset(actor_ids), False)

    @staticmethod
    async def _register(conn: AsyncConnection, user_id: str, code_id: str,
                        signing_key: bytes, exchange_key: bytes,
                        actor_ids: Sequence[bytes]) -> str:
        clash = (await conn.execute(
            sa.select(sa.func.count()).select_from(devices)
            .where(devices.c.signing_key == signing_key))).scalar_one()
        clash += (await conn.execute(
            sa.select(sa.func.count()).select_from(device_actors)
            .where(device_actors.c.actor_id.in_(list(actor_ids))))).scalar_one()
        if clash:
            raise IdentityError("this key or actor id is already registered to a device",
                                code=ErrorCode.MALFORMED_MESSAGE)
        device_id = "dev-" + base64.b32encode(os.urandom(10)).decode().lower()
        await conn.execute(sa.insert(devices).values(
            id=device_id, user_id=user_id, signing_key=signing_key, exchange_key=exchange_key))
        await conn.execute(sa.insert(device_actors), [
            {"actor_id": a, "device_id": device_id} for a in actor_ids])
        await conn.execute(sa.update(enrollment_codes).where(enrollment_codes.c.id == code_id)
                           .values(used_at=sa.func.now()))
        return device_id

    # -- devices ---------------------------------------------------------------------------

    async def device(self, device_id: str) -> Device | None:
        """The device and its user; None for an unknown id. Raises StorageError when the
        database cannot answer (the handshake then says "retry", not "who are you")."""
        with _reachable("looking up a device"):
            return await self._device(device_id)

    async def _device(self, device_id: str) -> Device | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                sa.select(devices).where(devices.c.id == device_id))).first()
            if row is None:
                return None
            user = await _user(conn, row.user_id)
            actors = frozenset((await conn.execute(
                sa.select(device_actors.c.actor_id)
                .where(device_actors.c.device_id == device_id))).scalars())
        assert user is not None
        return Device(row.id, user, row.signing_key, row.exchange_key, actors,
                      row.revoked_at is not None)

    async def bind_actors(self, device: Device, actor_ids: Collection[bytes], *,
                          household_id: str | None = None) -> frozenset[bytes]:
        """Bind actor ids first seen on ``device``'s own session to it (docs/security.md,
        "Actor ids"): a stock automerge-repo peer makes a new random actor id for its
        documents. Returns the device's actor ids now. An id bound to another device, a
        revoked device, or more than :data:`MAX_ACTORS_PER_DEVICE` ids in all, is refused:
        :class:`IdentityError` with ``actor-not-registered``, and nothing is bound. The
        binding and its audit row are one transaction."""
        wanted = sorted(set(actor_ids) - device.actor_ids)
        if not wanted:
            return device.actor_ids
        if any(len(a) != 16 for a in wanted):
            raise IdentityError("actor ids are 16 bytes", code=ErrorCode.ACTOR_NOT_REGISTERED)
        with _reachable("binding actor ids"):
            async with self._engine.begin() as conn:
                row = (await conn.execute(
                    sa.select(devices.c.revoked_at).where(devices.c.id == device.id)
                    .with_for_update())).first()
                if row is None or row.revoked_at is not None:
                    raise IdentityError("this device is revoked",
                                        code=ErrorCode.ACTOR_NOT_REGISTERED)
                held = (await conn.execute(
                    sa.select(sa.func.count()).select_from(device_actors)
                    .where(device_actors.c.device_id == device.id))).scalar_one()
                bound = set((await conn.execute(
                    postgresql.insert(device_actors)
                    .values([{"actor_id": a, "device_id": device.id} for a in wanted])
                    .on_conflict_do_nothing(index_elements=["actor_id"])
                    .returning(device_actors.c.actor_id))).scalars())
                owners = {r.actor_id: r.device_id for r in await conn.execute(
                    sa.select(device_actors.c.actor_id, device_actors.c.device_id)
                    .where(device_actors.c.actor_id.in_(wanted)))}
                if any(owners.get(a) != device.id for a in wanted):
                    raise IdentityError(  # rolls back the ones bound above
                        "a change carries an actor id registered to another device",
                        code=ErrorCode.ACTOR_NOT_REGISTERED)
                if held + len(bound) > MAX_ACTORS_PER_DEVICE:
                    raise IdentityError(f"a device may hold at most {MAX_ACTORS_PER_DEVICE} "
                                        f"actor ids", code=ErrorCode.ACTOR_NOT_REGISTERED)
                if bound and self.audit is not None:
                    await self.audit.append(conn, [AuditEvent(
                        "actors-bound", household_id, device.user.id, device.id,
                        {"actor_ids": sorted(a.hex() for a in bound)})])
        return device.actor_ids | frozenset(wanted)

    async def revoke_device(self, device_id: str) -> bool:
        """Mark the device revoked; True if it existed and was active.

        Every server on this database hears it at commit (``NOTIFY vatra_revocations``)
        and closes the device's live sessions. Revoking a device revoked already says so
        (False) and still tells every server to cut it."""
        async with self._engine.begin() as conn:
            done = await conn.execute(
                sa.update(devices).where(devices.c.id == device_id,
                                         devices.c.revoked_at.is_(None))
                .values(revoked_at=sa.func.now()))
            if done.rowcount == 1 and self.audit is not None:
                await self.audit.append(conn, [AuditEvent("device-revoked",
                                                          device_id=device_id)])
            await conn.execute(sa.select(sa.func.pg_notify(REVOCATIONS, device_id)))
        return done.rowcount == 1

    async def revoked_at(self, device_id: str) -> datetime | None:
        """When the device was revoked (None: active or unknown). StorageError when the
        database cannot answer."""
        with _reachable("reading a revocation"):
            async with self._engine.connect() as conn:
                return (await conn.execute(sa.select(devices.c.revoked_at)
                                           .where(devices.c.id == device_id))).scalar()

    async def revoked_among(self, device_ids: Collection[str]) -> set[str]:
        """Which of ``device_ids`` are revoked (one query, for the periodic sweep)."""
        if not device_ids:
            return set()
        async with self._engine.connect() as conn:
            return set((await conn.execute(
                sa.select(devices.c.id).where(devices.c.id.in_(list(device_ids)),
                                              devices.c.revoked_at.is_not(None)))).scalars())


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as an operator sees it (:meth:`IdentityStore.users`)."""

    user: User
    created_at: datetime
    disabled_at: datetime | None
    active_devices: int


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as an operator sees it (:meth:`IdentityStore.devices`)."""

    id: str
    user_id: str
    enrolled_at: datetime
    revoked_at: datetime | None


def check_user(user_id: str, role: str, county: str | None) -> None:
    """The rules a new user keeps (IdentityError naming the one broken)."""
    if role not in ROLES:
        raise IdentityError(f"role must be one of {', '.join(ROLES)}",
                            code=ErrorCode.INVALID_ROLE)
    if role == "supervisor" and not county:
        raise IdentityError("a supervisor needs a county", code=ErrorCode.INVALID_ROLE)
    if len(user_id) > 64 or not FORMATS["user_id"](user_id) or user_id == SERVER_AUTHOR:
        # Households name users in their attributions: an id the schema cannot hold,
        # or the server's own, would make every entry this user writes refused.
        raise IdentityError(f"a user id is 1-64 letters, digits and _.:@- (starting with "
                            f"a letter or digit), and not {SERVER_AUTHOR!r}",
                            code=ErrorCode.INVALID_USER_ID)


def _check_places(places: Iterable[tuple[str, str]]) -> None:
    for loc, cty in places:
        if not (FORMATS["siruta"](loc) and FORMATS["county"](cty)):
            raise IdentityError(f"a locality is SIRUTA:COUNTY, e.g. 54975:CJ (got "
                                f"{loc}:{cty})", code=ErrorCode.INVALID_LOCALITY)


async def _disabled(conn: AsyncConnection, user_id: str) -> bool:
    return (await conn.execute(sa.select(users.c.disabled_at)
                               .where(users.c.id == user_id))).scalar() is not None


async def _user(conn: AsyncConnection, user_id: str) -> User | None:
    row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).first()
    if row is None:
        return None
    places = (await conn.execute(
        sa.select(user_localities.c.locality, user_localities.c.county)
        .where(user_localities.c.user_id == user_id)
        .order_by(user_localities.c.locality))).all()
    return User(row.id, row.role, row.county, tuple((p[0], p[1]) for p in places))


def load_server_identity(data_dir: Path, key_file: str | None = None) -> SigningKey:
    """The server's Ed25519 identity: ``key_file`` if given, else ``<data dir>/server_identity.key``,
    created on first run (mode 0600). Devices pin its public half at enrollment."""
    path = Path(key_file) if key_file else data_dir / "server_identity.key"
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ConfigError(f"{path}: a server identity key file holds exactly 32 bytes")
        return SigningKey(raw)
    if key_file:
        raise ConfigError(f"{path}: server identity key file not found (make one with "
                          f"`vatra server-key generate --file {path}`, and give every "
                          f"instance the same file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return SigningKey(seed)


def _erased(household_id: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """The household's data key is destroyed: it was erased (crypto-shredded)."""
    return sa.exists().where(household_keys.c.household_id == household_id,
                             household_keys.c.wrapped.is_(None))


@contextlib.contextmanager
def _reachable(what: str) -> Iterator[None]:
    """A database fault inside becomes :class:`StorageError` (retryable), logged once."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        log.warning("identity: %s failed: the database did not answer (%s)", what,
                    type(exc).__name__)
        raise StorageError("the server cannot reach its database; retry later") from exc
