"""Key and erasure commands (docs/keys.md).

    vatra keys generate --out PATH [--version N]   a new master key file (mode 0600)
    vatra keys status                              data keys per master key version
    vatra keys rotate-master [--new-key-file PATH] rewrap every data key under the newest key
    vatra household erase H [--yes] [--by WHO]     destroy H's data key, delete H's rows

Like the other admin commands they run against the database of ``vatra serve``
(DATABASE_URL, or the embedded one: stop the server first).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sync_server.cli.common import open_store, os_account
from sync_server.config import Settings
from sync_server.store.contract import UnknownHousehold
from sync_server.store.keys import (
    KeyRingError,
    generate_master_key,
    load_keyring,
    read_key_file,
    write_key_file,
)


def add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="master keys (encryption at rest, docs/keys.md)")
    ksub = keys.add_subparsers(dest="action", required=True)
    gen = ksub.add_parser("generate", help="write a new master key file (mode 0600)")
    gen.add_argument("--out", type=Path, required=True, help="key file to create (must not exist)")
    gen.add_argument("--version", type=int, default=1,
                     help="master key version (higher than every key in use; default 1)")
    gen.add_argument("--data-dir", type=Path)
    status = ksub.add_parser("status", help="data keys per master key version")
    status.add_argument("--data-dir", type=Path)
    rotate = ksub.add_parser("rotate-master",
                             help="rewrap every data key under the newest master key")
    rotate.add_argument("--new-key-file", type=Path,
                        help="key file holding the new master key (default: the newest "
                             "configured key)")
    rotate.add_argument("--data-dir", type=Path)


def add_erase_command(household_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    erase = household_subparsers.add_parser(
        "erase", help="crypto-shred a household: destroy its data key, delete its rows")
    erase.add_argument("household_id")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    erase.add_argument("--by", help="who erases it, for the audit log (default: os:<login>, "
                                    "the operating-system account running the command)")
    erase.add_argument("--data-dir", type=Path)


async def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.action == "generate":
            write_key_file(args.out, {args.version: generate_master_key()}, exclusive=True)
            print(f"master key version {args.version} written to {args.out} (mode 0600)")
            return 0
        keyring = load_keyring(settings)
        if args.action == "status":
            async with open_store(settings, keyring) as store:
                counts = await store.key_versions()
            print(f"configured master key versions: {', '.join(map(str, keyring.versions))} "
                  f"(current {keyring.current_version})")
            for version, n in sorted(counts.items()):
                print(f"  version {version}: {n} data keys")
            return 0
        # rotate-master
        if args.new_key_file is not None:
            keyring = keyring.with_keys(read_key_file(args.new_key_file))
        async with open_store(settings, keyring) as store:
            n = await store.rotate_master_key()
            counts = await store.key_versions()
        print(f"rewrapped {n} data keys under master key version {keyring.current_version}; "
              f"data keys per version now: {dict(sorted(counts.items()))}")
        if keyring.source is not None:
            # The embedded default's own key file: it now holds the new key only.
            current = keyring.current_version
            write_key_file(keyring.source, {current: keyring.master_key(current)})
            print(f"{keyring.source} now holds master key version {keyring.current_version} only")
        else:
            print("now configure the new key alone (VATRA_MASTER_KEY / VATRA_MASTER_KEY_FILE) "
                  "and restart the servers")
        return 0
    except (KeyRingError, FileExistsError) as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1


def run_erase(settings: Settings, args: argparse.Namespace) -> int:
    hid = args.household_id
    if not args.yes:
        if not sys.stdin.isatty():
            print("refused: erasing is irreversible; pass --yes", file=sys.stderr)
            return 2
        if input(f"Erase household {hid} for good? Type its id to confirm: ").strip() != hid:
            print("not confirmed; nothing erased", file=sys.stderr)
            return 2
    return asyncio.run(_erase(settings, hid, args.by or os_account()))


async def _erase(settings: Settings, hid: str, by: str) -> int:
    try:
        async with open_store(settings, load_keyring(settings)) as store:
            result = await store.erase_household(hid, by=by)
    except KeyRingError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    except UnknownHousehold:
        print(f"no household {hid}", file=sys.stderr)
        return 1
    deleted = ", ".join(f"{t}: {n}" for t, n in sorted(result.deleted.items()) if n) or "none"
    print(f"household {hid} {'was already' if result.already_erased else ''} erased: data key "
          f"destroyed; rows deleted ({deleted}); {result.log_rows_kept} change-log rows kept, "
          f"undecryptable".replace("  ", " "))
    return 0
