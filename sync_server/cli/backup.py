"""Backup and restore of the database (docs/backup.md).

    vatra backup FILE     a consistent dump of the database (pg_dump, custom format)
    vatra restore FILE    a dump into an empty database, then migrated to this version

Both run on the settings' database: ``DATABASE_URL``, or the embedded one in the data
directory (stop ``vatra serve`` first: one process per data directory). The dump holds
every household sealed with its data key, every data key wrapped by the master key, and
the audit log; it holds neither the master key nor the server's identity key, which are
kept apart (docs/backup.md says what losing one means). ``pg_dump`` and ``pg_restore``
come from ``VATRA_PG_BIN``, else from the embedded PostgreSQL's own installation (16).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
from pathlib import Path

import sqlalchemy as sa

from sync_server.config import Settings
from sync_server.store.database import database_url, make_engine, open_database

#: The web tier's role, as migration 0007 makes it: the restored policies name it, and the
#: restored schema is at its head already, so the migration will not run it again. (A
#: copy of the migration's statement: migrations stay self-contained, as written then.)
_WEB_ROLE = """
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vatra_web') THEN
            CREATE ROLE vatra_web NOLOGIN NOINHERIT;
        END IF;
        IF NOT pg_has_role(current_user, 'vatra_web', 'MEMBER') THEN
            EXECUTE format('GRANT vatra_web TO %I', current_user);
        END IF;
    END
    $$"""


def add_backup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser("backup", help="dump the database to FILE (pg_dump, custom "
                                           "format); keys are kept apart")
    backup.add_argument("file", type=Path)
    restore = sub.add_parser("restore", help="restore FILE into an empty database")
    restore.add_argument("file", type=Path)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://…``) as libpq takes it."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def _tool(name: str) -> str:
    """``VATRA_PG_BIN/<name>`` if set; else the embedded PostgreSQL's own (version 16,
    as the embedded server); else the PATH's. ``pg_dump`` must be at least the server's
    version: for another PostgreSQL, point ``VATRA_PG_BIN`` at its client tools."""
    if os.environ.get("VATRA_PG_BIN"):
        return str(Path(os.environ["VATRA_PG_BIN"]) / name)
    try:
        import pgserver._commands  # the embedded PostgreSQL's installation
    except ImportError:
        return shutil.which(name) or name
    return str(pgserver._commands.POSTGRES_BIN_PATH / name)


async def _run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


def run_backup_command(settings: Settings, args: argparse.Namespace) -> int:
    file: Path = args.file
    if args.command == "backup":
        if file.exists():
            print(f"refused (file-exists): {file} exists; a backup never overwrites a file")
            return 1
        code = asyncio.run(_backup(settings, file))
        if code == 0:
            print(f"backup written to {file} ({file.stat().st_size:,} bytes). Keep the master "
                  f"key and the server identity key apart from it: without the master key "
                  f"it cannot be read (docs/backup.md).")
        return code
    if not file.is_file():
        print(f"refused (no-file): {file} is not a backup file")
        return 1
    return asyncio.run(_restore(settings, file))


async def _backup(settings: Settings, file: Path) -> int:
    async with open_database(settings.database_url, settings.data_dir):
        pass  # migrated: a dump is always of this version's schema
    async with database_url(settings.database_url, settings.data_dir) as url:
        code, out = await _run(_tool("pg_dump"), "--format=custom", "--no-owner",
                               f"--file={file}", f"--dbname={_libpq(url)}")
    if code != 0:
        print(f"refused (pg-dump-failed): {out.splitlines()[-1] if out else code}")
        return 1
    return 0


async def _restore(settings: Settings, file: Path) -> int:
    async with database_url(settings.database_url, settings.data_dir) as url:
        engine = make_engine(url, timeout=None)
        try:
            async with engine.begin() as conn:
                if (await conn.execute(sa.text("SELECT to_regclass('public.changes')"))
                        ).scalar() is not None:
                    print("refused (not-empty): the database already holds Vatra's tables; "
                          "restore into an empty database")
                    return 1
                await conn.execute(sa.text(_WEB_ROLE))
        finally:
            await engine.dispose()
        code, out = await _run(_tool("pg_restore"), "--no-owner", "--exit-on-error",
                               f"--dbname={_libpq(url)}", str(file))
    if code != 0:
        print(f"refused (pg-restore-failed): {out.splitlines()[-1] if out else code}")
        return 1
    async with open_database(settings.database_url, settings.data_dir):
        pass  # migrated to this version, if the backup was older
    print(f"restored from {file}. Start the server with the same master key and server "
          f"identity key; check with `vatra audit verify` and `vatra projections rebuild`.")
    return 0
