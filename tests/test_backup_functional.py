"""A backup restores into a fresh PostgreSQL with everything in it (issue 14, part 6):
a real server, a real dump, a PostgreSQL of the test's own to restore into."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from automerge.core import Document
from conftest import TEST_MASTER_KEY

from client_sdk import SyncClient
from sync_server.app import ENGINE, PROJECTOR
from sync_server.store.database import make_engine
from sync_server.store.keys import KeyRing, parse_key
from sync_server.store.postgres import PostgresStore
from sync_server.store.tables import PROJ_TABLES

pytestmark = pytest.mark.functional


def vatra(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY,
           "VATRA_DATA_DIR": str(data_dir)}
    done = subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


async def heads_and_rows(engine, household_ids: list[str]) -> tuple[dict, dict]:
    """Each household's heads as the store loads it, and every projection row."""
    store = PostgresStore(engine, KeyRing(dict([parse_key(TEST_MASTER_KEY, "key")])))
    try:
        heads = {}
        for hid in household_ids:
            loaded = await store.load(hid)
            heads[hid] = sorted(Document.load(loaded.document_bytes()).get_heads())
    finally:
        await store.close()
    rows = {}
    async with engine.connect() as conn:
        for table in PROJ_TABLES:
            cols = [c for c in table.columns if c.name != "projected_at"]
            rows[table.name] = sorted(map(repr, (await conn.execute(sa.select(*cols))).all()))
    return heads, rows


async def test_a_backup_restores_into_a_fresh_postgresql(
        server, provision, database_url: str, postgres, tmp_path: Path) -> None:
    """Before (issue 14): no backup procedure anywhere. ``vatra backup`` dumps the
    database while the server runs; ``vatra restore`` puts it into a fresh PostgreSQL.
    There every household loads with the same heads, ``vatra audit verify`` passes, and
    ``vatra projections rebuild`` gives exactly the projection rows the source had."""
    ana = await provision.tablet("ana")
    made = []
    for n in range(3):
        h = ana.create_household(locality="54975", county="CJ", address=f"Str. Lunga {n}")
        pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        h.append_activity("visit", f"first visit {n}")
        h.set_member_field(pid, "first_name", f"Ioana {n}")
        ana.save(h.household_id)
        made.append(h.household_id)
    assert not (await SyncClient(ana, server.url).sync()).rejected
    await server.app[PROJECTOR].drain_all()
    before = await heads_and_rows(server.app[ENGINE], made)

    dump = tmp_path / "vatra.dump"
    backed = await asyncio.to_thread(vatra, database_url, tmp_path / "a", "backup", str(dump))
    assert backed.returncode == 0, backed.stdout
    assert "master key" in backed.stdout and dump.stat().st_size > 0
    again = await asyncio.to_thread(vatra, database_url, tmp_path / "a", "backup", str(dump))
    assert again.returncode == 1 and "refused (file-exists)" in again.stdout

    restored = await asyncio.to_thread(vatra, postgres.url, tmp_path / "b", "restore", str(dump))
    assert restored.returncode == 0, restored.stdout
    verified = await asyncio.to_thread(vatra, postgres.url, tmp_path / "b", "audit", "verify")
    assert verified.returncode == 0 and "every chain intact" in verified.stdout
    rebuilt = await asyncio.to_thread(vatra, postgres.url, tmp_path / "b", "projections",
                                      "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    engine = make_engine(postgres.url)
    try:
        after = await heads_and_rows(engine, made)
    finally:
        await engine.dispose()
    assert after[0] == before[0]  # every household, the same heads
    assert after[1] == before[1]  # the projections, row for row
    assert all(before[1][t.name] for t in PROJ_TABLES if t.name in ("households", "persons"))

    twice = await asyncio.to_thread(vatra, postgres.url, tmp_path / "b", "restore", str(dump))
    assert twice.returncode == 1 and "refused (not-empty)" in twice.stdout
