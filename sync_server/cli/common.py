"""What every command needs: the store, opened the one way."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import getpass
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sync_server.config import Settings
from sync_server.store.database import open_database
from sync_server.store.keys import KeyRing, load_keyring
from sync_server.store.postgres import PostgresStore


@contextlib.asynccontextmanager
async def open_store(settings: Settings, keyring: KeyRing | None = None,
                     *, verified: bool = True) -> AsyncIterator[PostgresStore]:
    """The store on the settings' database (migrated), with ``keyring`` or the master keys
    the settings point at; the master key checked against the stored data keys unless
    ``verified`` is False. Raises :class:`~sync_server.store.keys.KeyRingError`."""
    async with open_database(settings.database_url, settings.data_dir,
                             database_timeout=settings.database_timeout) as engine:
        store = PostgresStore(engine, keyring if keyring is not None else load_keyring(settings))
        try:
            if verified:
                await store.verify_master_key()
            yield store
        finally:
            await store.close()


def os_account() -> str:
    """Who runs this command, for the audit log: ``os:<login>``."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return f"os:uid-{os.getuid()}"


async def read_csv(path: Path) -> csv.DictReader[str] | None:
    """The rows of an operator's CSV file (a spreadsheet's BOM allowed), or None after
    saying why it cannot be read."""
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8-sig")
    except OSError as exc:
        print(f"refused (unreadable-file): {path}: {exc.strerror}")
        return None
    return csv.DictReader(io.StringIO(text))
