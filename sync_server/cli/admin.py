"""Admin commands: users, devices, the audit log.

    vatra user add U --role worker --locality 54975:CJ [--locality …]
    vatra user add S --role supervisor --county CJ
    vatra device enroll-code --user U [--hours 24]
    vatra device revoke D
    vatra audit verify

They run against the same database as ``vatra serve`` (DATABASE_URL, or the
embedded one in the data directory; with the embedded one, stop the server
first: one PostgreSQL data directory serves one process at a time).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from sync_server.auth.identity import IdentityError, IdentityStore
from sync_server.cli.common import open_store
from sync_server.cli.keys import add_erase_command
from sync_server.config import Settings
from sync_server.store.keys import KeyRingError


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user")
    add.add_argument("user_id")
    add.add_argument("--role", required=True,
                     choices=["worker", "supervisor", "national", "admin", "ops"])
    add.add_argument("--county", help="county code (required for a supervisor)")
    add.add_argument("--locality", action="append", default=[], metavar="SIRUTA:COUNTY",
                     help="a locality where a worker may register households (repeatable)")

    household = sub.add_parser("household", help="manage households")
    hsub = household.add_subparsers(dest="action", required=True)
    # No command sets a team: a household's team is its document's (who registered it,
    # then approved change_team requests), and access follows it (docs/decisions.md, 61).
    add_erase_command(hsub)  # vatra household erase H (sync_server/cli/keys.py)

    device = sub.add_parser("device", help="manage devices").add_subparsers(dest="action",
                                                                            required=True)
    code = device.add_parser("enroll-code", help="make a one-time enrollment code for a user")
    code.add_argument("--user", required=True)
    code.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    revoke = device.add_parser("revoke", help="revoke a device")
    revoke.add_argument("device_id")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="action",
                                                                         required=True)
    audit.add_parser("verify", help="check every hash chain; exit 1 on any problem")


@contextlib.asynccontextmanager
async def identity_store(settings: Settings) -> AsyncIterator[IdentityStore]:
    """Users and devices need no data key; the audit log needs the master key."""
    async with open_store(settings, verified=False) as store:
        yield IdentityStore(store.engine, store.audit)


async def run_admin(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with identity_store(settings) as ids:
            if args.command == "audit":
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
            if args.command == "user":
                places = []
                for item in args.locality:
                    loc, _, county = item.partition(":")
                    if not loc.isdigit() or not county:
                        print(f"--locality takes SIRUTA:COUNTY, e.g. 54975:CJ (got {item!r})")
                        return 2
                    places.append((loc, county))
                u = await ids.add_user(args.user_id, args.role, county=args.county,
                                       localities=places)
                print(f"user {u.id} added as {u.role}")
            elif args.command == "device" and args.action == "enroll-code":
                c = await ids.create_enrollment_code(args.user, ttl=timedelta(hours=args.hours))
                print(f"enrollment code for {c.user_id}: {c.code} "
                      f"(single use, valid until {c.expires_at:%Y-%m-%d %H:%M} UTC)")
            elif args.command == "device" and args.action == "revoke":
                if await ids.revoke_device(args.device_id):
                    print(f"device {args.device_id} revoked; its live sessions are cut")
                elif (at := await ids.revoked_at(args.device_id)) is not None:
                    print(f"device {args.device_id} was revoked already "
                          f"({at:%Y-%m-%d %H:%M} UTC); its live sessions are cut again")
                else:
                    print(f"no device {args.device_id}")
                    return 1
    except IdentityError as err:
        print(f"refused ({err.code}): {err.message}")
        return 1
    except KeyRingError as err:
        print(f"vatra: {err}")
        return 1
    return 0
