"""``vatra directory import FILE --county CJ [--dry-run] [--by WHO]`` and ``vatra
directory show --county CJ [--json]``: a county's directory of specialised services.

The file is JSON: a list of providers as conflict/directory.py describes them (name,
kind, address, coordinates, phone / e-mail, accessibility, hours; ``id`` optional). An
import replaces the county's whole directory in one transaction, so the file is the
directory: a provider left out of it leaves the directory. Every problem is reported
(``providers[3].kind: unknown-kind``) and nothing is written while one is left; the exit
status is then 1. Tablets of the county receive the new directory at their next check
(GET /v1/directory). Referrals already made keep the provider's name and contacts.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from conflict.directory import validate_directory
from sync_server.cli.common import os_account
from sync_server.config import Settings
from sync_server.store.database import open_database
from sync_server.store.directory import read_directories, replace_directory

_COUNTY = re.compile(r"[A-Z]{1,2}")
#: The largest directory file read (2,000 providers take well under 1 MB).
MAX_FILE_BYTES = 4 * 1024 * 1024


def add_directory_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("directory", help="a county's directory of specialised services")
    dsub = d.add_subparsers(dest="action", required=True)
    imp = dsub.add_parser("import", help="replace a county's directory with a JSON file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--county", required=True, help="county code (CJ)")
    imp.add_argument("--dry-run", action="store_true", help="check the file, write nothing")
    imp.add_argument("--by", help="who imports it (default: os:<login>)")
    imp.add_argument("--data-dir", type=Path)
    show = dsub.add_parser("show", help="print a county's directory")
    show.add_argument("--county", required=True)
    show.add_argument("--json", action="store_true")
    show.add_argument("--data-dir", type=Path)


async def run_directory(settings: Settings, args: argparse.Namespace) -> int:
    if not _COUNTY.fullmatch(args.county):
        print(f"refused (county-format): {args.county!r} is not a county code (CJ)")
        return 2
    if args.action == "import":
        try:
            size = args.file.stat().st_size
            if size > MAX_FILE_BYTES:
                print(f"refused (file-too-large): {size} bytes, at most {MAX_FILE_BYTES}")
                return 1
            raw = json.loads(args.file.read_text(encoding="utf-8"))
        except OSError as err:
            print(f"refused (unreadable): {args.file}: {err.strerror}")
            return 1
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            print(f"refused (not-json): {args.file}: {err}")
            return 1
        providers, problems = validate_directory(args.county, raw)
        for problem in problems:
            print(f"refused ({problem.rule}): {problem.where}")
        if problems:
            print(f"nothing imported: {len(problems)} problem(s)")
            return 1
        if args.dry_run:
            print(f"checked {len(providers)} provider(s) for {args.county}: nothing written")
            return 0
    async with open_database(settings.database_url, settings.data_dir,
                             database_timeout=settings.database_timeout) as engine:
        if args.action == "import":
            try:
                done = await replace_directory(engine, args.county, providers,
                                               args.by or os_account())
            except ValueError as err:
                print(f"refused (provider-of-another-county): {err}")
                return 1
            print(f"directory of {done.county}: {done.added} added, {done.changed} changed, "
                  f"{done.removed} removed, {done.kept} unchanged; version {done.version}")
            return 0
        async with engine.connect() as conn:
            found = await read_directories(conn, [args.county])
    if not found:
        print(f"no directory for {args.county}")
        return 1
    d = found[0]
    if args.json:
        print(json.dumps(d["providers"], ensure_ascii=False, indent=1))
        return 0
    print(f"{d['county']}: {len(d['providers'])} provider(s), version {d['version']}, "
          f"imported {d['imported_at']:%Y-%m-%d %H:%M} UTC")
    for p in d["providers"]:
        print(f"  {p['kind']:18} {p['name']} ({p['address']})")
    return 0
