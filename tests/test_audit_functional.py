"""The audit log records who did what, chains it, and `vatra audit verify` catches tampering."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from _scenes import forge_write
from conftest import TEST_MASTER_KEY
from sqlalchemy.exc import DBAPIError

from client_sdk import SyncClient
from sync_server.app import ENGINE, IDENTITY, STORE
from sync_server.store.audit import audit

pytestmark = pytest.mark.functional


async def rows(engine) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(audit).order_by(audit.c.id))).all()


async def busy_day(server, provision) -> tuple[str, str]:
    """Enrollment, sessions, accepted changes, a refused batch, a revocation, an erasure."""
    ana = await provision.tablet("ana")
    hid = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3").household_id
    await SyncClient(ana, server.url).sync()
    await forge_write(provision, ana, hid, "forged")
    await SyncClient(ana, server.url).sync()
    device = ana.credentials.device_id
    await server.app[IDENTITY].revoke_device(device)
    await server.app[STORE].erase_household(hid)
    return hid, device


async def test_each_kind_of_event_is_recorded_with_who_and_what(server, provision) -> None:
    hid, device = await busy_day(server, provision)
    recorded = await rows(server.app[ENGINE])
    kinds = [(r.kind, r.chain) for r in recorded]
    assert ("device-enrolled", f"device:{device}") in kinds
    assert ("session-opened", f"device:{device}") in kinds
    assert ("changes-accepted", hid) in kinds
    assert ("batch-refused", hid) in kinds
    assert ("device-revoked", f"device:{device}") in kinds
    assert ("household-erased", hid) in kinds
    accepted = next(r for r in recorded if r.kind == "changes-accepted")
    assert (accepted.user_id, accepted.device_id) == ("ana", device)
    assert accepted.detail["changes"] == len(accepted.detail["hashes"]) == 1
    refused = next(r for r in recorded if r.kind == "batch-refused")
    assert refused.detail == {"code": "actor-not-registered"}
    for r in recorded:  # ids, codes and counts only: no household content
        assert "Lunga" not in str(r.detail) and "forged" not in str(r.detail)
    assert await server.app[STORE].audit.verify() == []


async def test_the_log_refuses_rewrites(server, provision) -> None:
    await busy_day(server, provision)
    async with server.app[ENGINE].connect() as conn:
        for statement in ("UPDATE audit SET kind = 'nothing'", "DELETE FROM audit"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with conn.begin():
                    await conn.exec_driver_sql(statement)


async def tamper(engine, statement: str) -> None:
    """What an attacker with database superuser rights could do (the trigger aside)."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
        await conn.exec_driver_sql(statement)
        await conn.exec_driver_sql("ALTER TABLE audit ENABLE TRIGGER audit_append_only")


@pytest.mark.parametrize(("statement", "finding"), [
    ("UPDATE audit SET detail = '{\"changes\": 0}' WHERE kind = 'changes-accepted'",
     "was edited"),
    ("UPDATE audit SET user_id = 'someone-else' WHERE kind = 'changes-accepted'", "was edited"),
    ("DELETE FROM audit WHERE id = (SELECT min(id) FROM audit WHERE chain LIKE 'device:%')",
     "missing"),
    ("DELETE FROM audit WHERE id = (SELECT max(id) FROM audit WHERE kind = 'household-erased')",
     "missing"),
])
async def test_verify_detects_edited_and_deleted_rows(server, provision, statement,
                                                      finding) -> None:
    await busy_day(server, provision)
    assert await server.app[STORE].audit.verify() == []
    await tamper(server.app[ENGINE], statement)
    problems = await server.app[STORE].audit.verify()
    assert problems and any(finding in p.what for p in problems), problems


async def test_vatra_audit_verify_exit_codes(server, provision, database_url) -> None:
    await busy_day(server, provision)
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY}

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sync_server.cli", "audit", "verify"],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    clean = await asyncio.to_thread(verify)  # the server runs on this loop
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "every chain intact" in clean.stdout
    await tamper(server.app[ENGINE], "DELETE FROM audit WHERE kind = 'session-opened'")
    broken = await asyncio.to_thread(verify)
    assert broken.returncode == 1 and "problem" in broken.stdout
