"""The ``vatra`` command.

    vatra serve     run the sync server (embedded PostgreSQL unless DATABASE_URL is set)
    vatra migrate   apply database migrations and exit
    vatra demo      three team members edit one household offline, then sync
    vatra bench     throughput and latency of the sync pipeline (docs/performance.md)
    vatra user | household | device | server-key …   administration
                                    (sync_server/cli/admin.py)
    vatra quarantine list | show ID   refused sync data, from which device, why
    vatra keys …    master keys; `vatra household erase H` crypto-shreds (sync_server/cli/keys.py)
    vatra projector [--once]        project households for the web tier
                                    (sync_server/cli/projections.py)
    vatra projections rebuild [--household H]   re-project from the change log
    vatra status    projection backlog and lag
    vatra open-data FILE [--threshold K]   the anonymized, aggregated public export
    vatra backup FILE | restore FILE   the database (sync_server/cli/backup.py)
    vatra directory import FILE --county C | show --county C   a county's directory of
                                    specialised services (sync_server/cli/directory.py)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from sync_server.app import VatraServer
from sync_server.cli.admin import add_admin_commands, run_admin
from sync_server.cli.backup import add_backup_commands, run_backup_command
from sync_server.cli.directory import add_directory_commands, run_directory
from sync_server.cli.keys import add_key_commands, run_erase, run_keys
from sync_server.cli.logs import configure as configure_logs
from sync_server.cli.projections import add_projection_commands, run_projection_command
from sync_server.cli.quarantine import add_quarantine_commands, run_quarantine
from sync_server.cli.teams import run_import_teams
from sync_server.config import Settings
from sync_server.protocol.errors import ConfigError, VatraError
from sync_server.store.database import open_database
from sync_server.store.keys import KeyRingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vatra", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sync server")
    serve.add_argument("--host", help="listen address (VATRA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (VATRA_PORT, default 8765; 0 = any)")
    serve.add_argument("--data-dir", type=Path, help="data directory (VATRA_DATA_DIR, ./var)")

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--data-dir", type=Path)

    demo = sub.add_parser("demo", help="three tablets, one household, offline edits, one sync")
    demo.add_argument("--data-dir", type=Path, help="default: a temporary directory")

    bench = sub.add_parser("bench", help="measure the sync pipeline")
    bench.add_argument("--tablets", type=int, default=20)
    bench.add_argument("--households", type=int, default=5)
    bench.add_argument("--edits", type=int, default=10)
    bench.add_argument("--live-changes", type=int, default=300)
    bench.add_argument("--data-dir", type=Path, help="default: a temporary directory")
    bench.add_argument("--profile", type=Path, metavar="DIR",
                       help="cProfile the timed phases; write DIR/<workload>.prof")

    add_admin_commands(sub)
    add_backup_commands(sub)
    add_key_commands(sub)
    add_quarantine_commands(sub)
    add_projection_commands(sub)
    add_directory_commands(sub)

    args = parser.parse_args(argv)
    quiet = args.command in ("demo", "bench", "status")  # their output is the report
    configure_logs(logging.WARNING if quiet else logging.INFO)  # VATRA_LOG_FORMAT=json
    for noisy in ("pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _run(parser, args)
    except VatraError as err:  # a setting, a key, a refusal: said in one line, exit 1
        print(f"vatra: {err.message} ({err.code})", file=sys.stderr, flush=True)
        return 1


def _run_loop(kind: str, main: Coroutine[Any, Any, int]) -> int:
    """Run ``vatra serve``'s main coroutine on the configured event loop (decision 82)."""
    if kind == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if getattr(args, "data_dir", None) is not None:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)

    if args.command == "serve":
        if args.host is not None:
            settings = dataclasses.replace(settings, host=args.host)
        if args.port is not None:
            settings = dataclasses.replace(settings, port=args.port)
        return _run_loop(settings.event_loop, _serve(settings))
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    # The developer tools are imported on demand, so ``vatra serve`` never loads them
    # (and the client SDK they drive); not to break an import cycle.
    if args.command == "demo":
        from vatra_devtools.demo import run_demo
        return asyncio.run(run_demo(settings, args.data_dir))
    if args.command == "bench":
        from vatra_devtools.bench import run_bench
        return asyncio.run(run_bench(settings, args))
    if args.command in ("projector", "projections", "status", "open-data"):
        return asyncio.run(run_projection_command(settings, args))
    if args.command == "quarantine":
        return asyncio.run(run_quarantine(settings, args))
    if args.command == "directory":
        return asyncio.run(run_directory(settings, args))
    if args.command in ("backup", "restore"):
        return run_backup_command(settings, args)
    if args.command == "keys":
        return asyncio.run(run_keys(settings, args))
    if args.command == "household" and args.action == "erase":
        return run_erase(settings, args)
    if args.command == "household" and args.action == "import-teams":
        return asyncio.run(run_import_teams(settings, args))
    if args.command in ("user", "household", "device", "audit", "server-key"):
        return asyncio.run(run_admin(settings, args))
    parser.error(f"unknown command {args.command}")
    return 2


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with VatraServer(settings) as server:  # checks the master key before listening
            where = "DATABASE_URL" if settings.database_url else \
                f"embedded PostgreSQL in {(settings.data_dir / 'postgres').resolve()}"
            kind = type(loop).__module__.split(".")[0]  # uvloop or asyncio
            print(f"Vatra sync server listening on {server.url} (database: {where}; "
                  f"event loop: {kind})", flush=True)
            _quiet_native_stdout()
            await stop.wait()
            print("Vatra sync server stopping", flush=True)
    except (KeyRingError, ConfigError) as err:
        print(f"vatra: refusing to start: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


def _quiet_native_stdout() -> None:
    """Automerge's Rust code prints diagnostics about malformed input, document keys
    included, straight to file descriptor 1 (``println!``). The server's own lines keep
    going to its stdout; file descriptor 1 goes to /dev/null."""
    sys.stdout.flush()
    own = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = os.fdopen(own, "w", buffering=1)


async def _migrate(settings: Settings) -> int:
    async with open_database(settings.database_url, settings.data_dir):
        pass
    print("database schema is up to date", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
