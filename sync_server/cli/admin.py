"""Admin commands: users, devices, the server's key, the audit log.

    vatra user add U --role worker --locality 54975:CJ [--locality …]
    vatra user add S --role supervisor --county CJ
    vatra user list [--role R] [--county C]
    vatra user show U
    vatra user update U [--role R] [--county C] [--add-locality L …] [--remove-locality L …]
    vatra user disable U [--by WHO]      revoke every device of U; no code enrolls another
    vatra user enable U [--by WHO]
    vatra user import FILE.csv [--dry-run]   user_id,role,county,localities (see below)
    vatra household import-teams FILE.csv [--dry-run]   teams (sync_server/cli/teams.py)
    vatra device enroll-code --user U [--hours 24]
    vatra device list [--user U] [--active]
    vatra device revoke D
    vatra server-key generate [--file PATH]
    vatra audit verify

They run against the same database as ``vatra serve`` (DATABASE_URL, or the
embedded one in the data directory; with the embedded one, stop the server
first: one PostgreSQL data directory serves one process at a time). Every
operator mistake is said in one line with its code, never a traceback.

``vatra user import`` reads a CSV file with a header row ``user_id,role,county,
localities`` (localities: ``SIRUTA:COUNTY`` separated by ``;``). Each row is
checked as ``vatra user add`` checks it; rows that pass are added, in one
transaction each, and every rejected row is reported with its line number and
the rule it broke (an existing user is rejected, not changed). ``--dry-run``
checks every row and adds none.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from sync_server.auth.identity import (
    ROLES,
    DeviceRecord,
    IdentityError,
    IdentityStore,
    User,
    check_user,
    load_server_identity,
)
from sync_server.cli.common import open_store, os_account, read_csv
from sync_server.cli.keys import add_erase_command
from sync_server.cli.teams import add_import_teams_command
from sync_server.config import Settings
from sync_server.protocol.errors import ErrorCode
from sync_server.store.keys import KeyRingError


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user")
    add.add_argument("user_id")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--county", help="county code (required for a supervisor)")
    add.add_argument("--locality", action="append", default=[], metavar="SIRUTA:COUNTY",
                     help="a locality where a worker may register households (repeatable)")
    listing = user.add_parser("list", help="list users")
    listing.add_argument("--role", choices=ROLES)
    listing.add_argument("--county", help="a supervisor's county, or a worker's localities'")
    user.add_parser("show", help="a user and their devices").add_argument("user_id")
    update = user.add_parser("update", help="change a user's role, county or localities")
    update.add_argument("user_id")
    update.add_argument("--role", choices=ROLES)
    update.add_argument("--county")
    update.add_argument("--add-locality", action="append", default=[], metavar="SIRUTA:COUNTY")
    update.add_argument("--remove-locality", action="append", default=[],
                        metavar="SIRUTA:COUNTY")
    for name, what in (("disable", "revoke every device of the user; no code enrolls "
                                   "another until enabled"),
                       ("enable", "let new enrollment codes enroll the user's devices")):
        cmd = user.add_parser(name, help=what)
        cmd.add_argument("user_id")
        cmd.add_argument("--by", help="who does it, for the audit log (default: os:<login>)")
    imp = user.add_parser("import", help="add users from a CSV file "
                                         "(user_id,role,county,localities)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--dry-run", action="store_true", help="check every row, add none")

    household = sub.add_parser("household", help="manage households")
    hsub = household.add_subparsers(dest="action", required=True)
    add_erase_command(hsub)  # vatra household erase H (sync_server/cli/keys.py)
    # vatra household import-teams FILE.csv: through the sync pipeline, as the server's own
    # change (a team is the household's document: docs/decisions.md, 61, 73)
    add_import_teams_command(hsub)

    device = sub.add_parser("device", help="manage devices").add_subparsers(dest="action",
                                                                            required=True)
    code = device.add_parser("enroll-code", help="make a one-time enrollment code for a user")
    code.add_argument("--user", required=True)
    code.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    dlist = device.add_parser("list", help="list devices, newest first")
    dlist.add_argument("--user")
    dlist.add_argument("--active", action="store_true", help="only devices not revoked")
    revoke = device.add_parser("revoke", help="revoke a device")
    revoke.add_argument("device_id")

    key = sub.add_parser("server-key", help="the server's identity key").add_subparsers(
        dest="action", required=True)
    gen = key.add_parser("generate", help="write a new server identity key file (for "
                                          "VATRA_SERVER_KEY_FILE; every instance uses one)")
    gen.add_argument("--file", type=Path,
                     help="where (default: <data dir>/server_identity.key); never overwritten")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="action",
                                                                         required=True)
    audit.add_parser("verify", help="check every hash chain; exit 1 on any problem")


@contextlib.asynccontextmanager
async def identity_store(settings: Settings) -> AsyncIterator[IdentityStore]:
    """Users and devices need no data key; the audit log needs the master key."""
    async with open_store(settings, verified=False) as store:
        yield IdentityStore(store.engine, store.audit)


async def run_admin(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "server-key":
        return _generate_server_key(settings, args.file)
    try:
        async with identity_store(settings) as ids:
            if args.command == "audit":
                return await _verify_audit(ids)
            if args.command == "user":
                return await _user_command(ids, args)
            if args.command == "device":
                return await _device_command(ids, args)
    except IdentityError as err:
        print(f"refused ({err.code}): {err.message}")
        return 1
    except KeyRingError as err:
        print(f"vatra: {err}")
        return 1
    return 0


async def _verify_audit(ids: IdentityStore) -> int:
    assert ids.audit is not None
    problems = await ids.audit.verify()
    for p in problems:
        where = f"{p.chain} #{p.seq}" if p.seq is not None else p.chain
        print(f"audit: {where}: {p.what}")
    if problems:
        print(f"audit log: {len(problems)} problem(s)")
        return 1
    print("audit log verified: every chain intact")
    return 0


def _places(items: list[str]) -> list[tuple[str, str]]:
    """``SIRUTA:COUNTY`` items (IdentityError naming the one that is not)."""
    out = []
    for item in items:
        loc, _, county = item.strip().partition(":")
        if not loc.isdigit() or not county:
            raise IdentityError(f"a locality is SIRUTA:COUNTY, e.g. 54975:CJ (got {item!r})",
                                code=ErrorCode.INVALID_LOCALITY)
        out.append((loc, county))
    return out


def _describe(u: User) -> str:
    where = u.county or ",".join(f"{loc}:{cty}" for loc, cty in u.localities) or "-"
    return f"{u.id}  {u.role}  {where}"


async def _user_command(ids: IdentityStore, args: argparse.Namespace) -> int:
    if args.action == "add":
        u = await ids.add_user(args.user_id, args.role, county=args.county,
                               localities=_places(args.locality))
        print(f"user {u.id} added as {u.role}")
    elif args.action == "list":
        rows = await ids.users(role=args.role, county=args.county)
        for r in rows:
            state = f"disabled {r.disabled_at:%Y-%m-%d}" if r.disabled_at else "active"
            print(f"{_describe(r.user)}  {state}  devices={r.active_devices}")
        print(f"{len(rows)} user(s)")
    elif args.action == "show":
        found = [r for r in await ids.users() if r.user.id == args.user_id]
        if not found:
            raise IdentityError(f"unknown user {args.user_id}", code=ErrorCode.UNKNOWN_USER)
        r = found[0]
        print(_describe(r.user))
        print(f"added {r.created_at:%Y-%m-%d %H:%M} UTC; "
              + (f"disabled {r.disabled_at:%Y-%m-%d %H:%M} UTC" if r.disabled_at else "active"))
        for d in await ids.devices(args.user_id):
            print(f"  {_device_line(d)}")
    elif args.action == "update":
        u = await ids.update_user(args.user_id, role=args.role, county=args.county,
                                  add=_places(args.add_locality),
                                  remove=_places(args.remove_locality))
        print(f"user updated: {_describe(u)}")
    elif args.action == "disable":
        revoked = await ids.disable_user(args.user_id, by=args.by or os_account())
        print(f"user {args.user_id} disabled; {len(revoked)} device(s) revoked, their live "
              f"sessions cut" + (f": {', '.join(revoked)}" if revoked else ""))
    elif args.action == "enable":
        await ids.enable_user(args.user_id, by=args.by or os_account())
        print(f"user {args.user_id} enabled; enroll a device with a new code")
    elif args.action == "import":
        return await _import_users(ids, args.file, dry_run=args.dry_run)
    return 0


#: The columns ``vatra user import`` reads.
IMPORT_COLUMNS = ("user_id", "role", "county", "localities")


async def _import_users(ids: IdentityStore, path: Path, *, dry_run: bool) -> int:
    """Add the file's users; report every rejected row (line, rule). Exit 1 if any."""
    reader = await read_csv(path)
    if reader is None:
        return 1
    if reader.fieldnames is None or set(IMPORT_COLUMNS) - set(reader.fieldnames):
        print(f"refused (bad-header): the first row must name the columns "
              f"{','.join(IMPORT_COLUMNS)} (got {','.join(reader.fieldnames or [])})")
        return 1
    existing = {r.user.id for r in await ids.users()}
    added, rejected, seen = 0, 0, set()
    for row in reader:
        line = reader.line_num
        try:
            user_id = (row["user_id"] or "").strip()
            places = _places([p for p in (row["localities"] or "").split(";") if p.strip()])
            if user_id in existing or user_id in seen:
                raise IdentityError(f"user {user_id} exists already",
                                    code=ErrorCode.USER_EXISTS)
            role, county = (row["role"] or "").strip(), (row["county"] or "").strip() or None
            check_user(user_id, role, county)
            seen.add(user_id)
            if not dry_run:
                await ids.add_user(user_id, role, county=county, localities=places)
            added += 1
        except IdentityError as err:
            rejected += 1
            print(f"line {line}: rejected ({err.code}): {err.message}")
    verb = "would be added (dry run: nothing was)" if dry_run else "added"
    print(f"{added} user(s) {verb}; {rejected} row(s) rejected")
    return 1 if rejected else 0


async def _device_command(ids: IdentityStore, args: argparse.Namespace) -> int:
    if args.action == "enroll-code":
        c = await ids.create_enrollment_code(args.user, ttl=timedelta(hours=args.hours))
        print(f"enrollment code for {c.user_id}: {c.code} "
              f"(single use, valid until {c.expires_at:%Y-%m-%d %H:%M} UTC)")
    elif args.action == "list":
        if args.user is not None and await ids.user(args.user) is None:
            raise IdentityError(f"unknown user {args.user}", code=ErrorCode.UNKNOWN_USER)
        shown = [d for d in await ids.devices(args.user)
                 if not (args.active and d.revoked_at is not None)]
        for d in shown:
            print(_device_line(d))
        print(f"{len(shown)} device(s)")
    elif args.action == "revoke":
        if await ids.revoke_device(args.device_id):
            print(f"device {args.device_id} revoked; its live sessions are cut")
        elif (at := await ids.revoked_at(args.device_id)) is not None:
            print(f"device {args.device_id} was revoked already "
                  f"({at:%Y-%m-%d %H:%M} UTC); its live sessions are cut again")
        else:
            print(f"no device {args.device_id}")
            return 1
    return 0


def _device_line(d: DeviceRecord) -> str:
    state = f"revoked {d.revoked_at:%Y-%m-%d %H:%M}" if d.revoked_at else "active"
    return f"{d.id}  {d.user_id}  enrolled {d.enrolled_at:%Y-%m-%d %H:%M}  {state}"


def _generate_server_key(settings: Settings, file: Path | None) -> int:
    """A new 32-byte Ed25519 seed, mode 0600, never over an existing file."""
    path = file or settings.data_dir / "server_identity.key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"refused (key-exists): {path} exists; a server key is never overwritten "
              f"(devices pin it: replacing it makes every tablet enroll again)")
        return 1
    except OSError as exc:
        print(f"refused (unwritable-file): {path}: {exc.strerror}")
        return 1
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    key = load_server_identity(settings.data_dir, str(path))
    print(f"server identity key written to {path} (public key "
          f"{key.verify_key.encode().hex()}); give every instance this file "
          f"(VATRA_SERVER_KEY_FILE)")
    return 0
