"""``vatra household import-teams FILE.csv [--dry-run] [--by WHO]``: many teams at once.

The file's header row names ``household_id`` and one or more of the team's roles
(``social_worker``, ``nurse``, ``counsellor``, ``case_responsible``). Each row sets, in
its household, the roles the header names: a user id assigns the role, an empty cell
unassigns it, a role the header does not name is left as it is.

A team is the household's document (docs/decisions.md, 61), so the command writes it as
the server writes an approved ``change_team``: through the sync pipeline, as the
server's own change, audited under ``--by`` (default: the operating-system account).
The command runs that pipeline in its own process, as one more instance on the
database (docs/instances.md): the servers' copies are refreshed from the log, and their
live sessions learn the new team within a second (``NOTIFY``). It may run while the
servers run, on the same ``DATABASE_URL`` (with the embedded PostgreSQL, stop the
server first).

Every row is checked before it is written:
- the household exists;
- it is in the file once;
- every user named is a worker of the household's locality.

A row that passes is set in a transaction of its own. Every rejected row is reported
with its line number and the rule it broke. ``--dry-run`` checks every row and sets none.
The exit status is 1 if any row was rejected.
"""

from __future__ import annotations

import argparse
import uuid
from functools import partial
from pathlib import Path

from conflict import SERVER_AUTHOR, TEAM_ROLES, Household
from conflict.ids import is_household_id
from sync_server.auth.identity import IdentityStore
from sync_server.cli.common import open_store, os_account, read_csv
from sync_server.config import Settings
from sync_server.protocol.errors import ErrorCode, Refused, StorageError
from sync_server.store.contract import Author, HouseholdErased, UnknownHousehold
from sync_server.store.keys import KeyRingError, load_keyring
from sync_server.store.quarantine import Quarantine
from sync_server.sync.households import HouseholdRegistry
from sync_server.sync.pipeline import Synchronizer

#: Households this command keeps in memory at once (it touches each once).
RESIDENT = 64


def _set_team(h: Household, *, team: dict[str, str | None]) -> None:
    h.set_team(**team)


class RowRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_import_teams_command(
        household_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = household_subparsers.add_parser(
        "import-teams", help="set households' teams from a CSV file "
                             f"(household_id,{','.join(TEAM_ROLES)})")
    imp.add_argument("file", type=Path)
    imp.add_argument("--dry-run", action="store_true", help="check every row, set none")
    imp.add_argument("--by", help="who sets them, for the audit log (default: os:<login>)")


async def run_import_teams(settings: Settings, args: argparse.Namespace) -> int:
    reader = await read_csv(args.file)
    if reader is None:
        return 1
    columns = list(reader.fieldnames or [])
    roles = [c for c in columns if c in TEAM_ROLES]
    if "household_id" not in columns or not roles or len(roles) + 1 != len(columns):
        print(f"refused (bad-header): the first row names household_id and one or more of "
              f"{','.join(TEAM_ROLES)}, nothing else (got {','.join(columns)})")
        return 1
    try:
        async with open_store(settings, load_keyring(settings)) as store:
            identity = IdentityStore(store.engine, store.audit)
            pipeline = Synchronizer(
                HouseholdRegistry(store, max_resident=RESIDENT, max_bytes=settings.resident_bytes), store,
                f"vatra-cli-{uuid.uuid4().hex[:12]}", identity, store.audit,
                Quarantine(store, settings.quarantine), limits=settings.limits)
            author = Author(args.by or os_account(), SERVER_AUTHOR)
            done, rejected, seen = 0, 0, set()
            for row in reader:
                line = reader.line_num
                hid = (row["household_id"] or "").strip()
                team = {r: (row[r] or "").strip() or None for r in roles}
                try:
                    if hid in seen:
                        raise RowRejected("duplicate-row", f"household {hid} is set on an "
                                                           f"earlier line")
                    seen.add(hid)
                    record = await store.household(hid) if is_household_id(hid) else None
                    if record is None:
                        raise RowRejected(ErrorCode.NOT_FOUND, f"no household {hid!r}")
                    named = {u for u in team.values() if u}
                    bad = set(await identity.ineligible_team_members(
                        named, record.locality, record.county)) if named else set()
                    if bad:
                        where = ", ".join(r for r, u in team.items() if u in bad)
                        raise RowRejected(ErrorCode.INVALID_TEAM_MEMBER,
                                          f"{where}: not a worker of the household's "
                                          f"locality {record.locality}:{record.county}")
                    if not args.dry_run:
                        await pipeline.server_change(hid, partial(_set_team, team=team),
                                                     author=author)
                    done += 1
                except RowRejected as err:
                    rejected += 1
                    print(f"line {line}: rejected ({err.code}): {err}")
                except Refused as err:
                    rejected += 1
                    print(f"line {line}: rejected ({err.code}): {err.message}")
                except (UnknownHousehold, HouseholdErased):
                    rejected += 1
                    print(f"line {line}: rejected ({ErrorCode.NOT_FOUND}): household {hid} "
                          f"is erased or gone")
                except StorageError as err:
                    rejected += 1
                    print(f"line {line}: not set ({err.code}): the database did not store it; "
                          f"run the command again for this row")
    except KeyRingError as err:
        print(f"vatra: {err}")
        return 1
    verb = "would be set (dry run: nothing was)" if args.dry_run else "set"
    print(f"{done} team(s) {verb}; {rejected} row(s) rejected")
    return 1 if rejected else 0
