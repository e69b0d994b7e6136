"""Durability: what the server advertised survives ``kill -9`` of the server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import TEST_MASTER_KEY

from client_sdk import SyncClient, SyncFailed
from sync_server.auth.identity import IdentityStore
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional


class ServerProcess:
    """``vatra serve`` in a child process, on the test's database."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.env = {**os.environ, "DATABASE_URL": database_url, "VATRA_DATA_DIR": str(data_dir),
                    "VATRA_PORT": "0", "VATRA_MASTER_KEY": TEST_MASTER_KEY}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sync_server.cli", "serve", env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
        marker = "listening on "
        text = line.decode()
        assert marker in text, f"unexpected first line from vatra serve: {text!r}"
        self.url = text.split(marker, 1)[1].split()[0]
        assert "event loop: uvloop" in text, f"vatra serve is not on uvloop: {text!r}"
        return self.url

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://").removesuffix("/v1/sync")

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=15)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def test_advertised_heads_survive_kill_9(database_url: str, engine, tmp_path: Path) -> None:
    """Regression guard for the durability rule: a tablet edits and syncs in a tight loop
    while the server is SIGKILLed mid-loop. Every head the server advertised to the tablet
    before dying must be served by the restarted server: heads are only advertised once
    the changes behind them are committed."""
    first = ServerProcess(database_url, tmp_path / "srv")
    url = await first.start()
    provision = Provisioner(IdentityStore(engine), first.http_url)
    tablet = await provision.tablet(tmp_path / "tablet", "sw-ana")
    hid = tablet.create_household(locality="54975", county="CJ", address="Str. Lunga 3").household_id
    await SyncClient(tablet, url).sync()

    advertised: set[bytes] = set()
    rounds = 0
    warmed_up = asyncio.Event()

    async def edit_and_sync_forever() -> None:
        nonlocal rounds
        client = SyncClient(tablet, url, max_attempts=1, idle_timeout=5)
        while True:
            rounds += 1
            if rounds == 15:
                warmed_up.set()
            with tablet.edit(hid) as h:
                h.append_activity("visit", f"visit {rounds}")
            try:
                await client.sync()
            finally:
                advertised.update(tablet.server_heads(hid))

    loop = asyncio.create_task(edit_and_sync_forever())
    try:
        await asyncio.wait_for(warmed_up.wait(), timeout=60)  # run a while, then kill mid-flight
        await first.kill9()
        with pytest.raises((SyncFailed, ConnectionError)):
            await asyncio.wait_for(loop, timeout=30)
    finally:
        loop.cancel()
        with contextlib.suppress(BaseException):
            await loop
        await first.stop()

    assert len(advertised) >= 10  # the loop really synced before the kill

    second = ServerProcess(database_url, tmp_path / "srv")
    url2 = await second.start()
    try:
        provision.http_url = second.http_url
        fresh = await provision.tablet(tmp_path / "fresh", "sw-ana")
        fresh.track(hid)
        await SyncClient(fresh, url2).sync()
        served = {c.hash for c in fresh.household(hid).doc.get_changes([])}
        assert advertised <= served  # the restarted server lost nothing it had advertised
        # and the tablet, reconnecting, uploads whatever the server never acknowledged
        await SyncClient(tablet, url2).sync()
        assert tablet.is_saved(hid)
    finally:
        await second.stop()


async def test_a_failed_commit_advertises_nothing_and_the_device_retries(
        server, provision, engine) -> None:
    """The deterministic half of the durability rule: PostgreSQL refuses the INSERT (a
    trigger stands in for a full disk). The device gets ``storage-failure``, the server's
    document does not move, no heads covering the refused change are advertised, and once
    the database accepts writes again the same device's next sync lands the change."""
    from sync_server.app import SYNCHRONIZER

    tablet = await provision.tablet("tablet", "sw-ana")
    hid = tablet.create_household(locality="54975", county="CJ", address="Str. Lunga 3").household_id
    await SyncClient(tablet, server.url).sync()
    heads_before = (await server.app[SYNCHRONIZER].registry.get(hid)).doc.get_heads()

    async with engine.begin() as conn:
        await conn.exec_driver_sql("""
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'disk full (simulated)'; END $$""")
        await conn.exec_driver_sql("""
            CREATE TRIGGER refuse BEFORE INSERT ON changes
            FOR EACH ROW EXECUTE FUNCTION refuse()""")
    with tablet.edit(hid) as h:
        h.set_notes("written while the database refuses")
    summary = await SyncClient(tablet, server.url).sync()
    assert [r.code for r in summary.rejected] == ["storage-failure"]
    assert (await server.app[SYNCHRONIZER].registry.get(hid)).doc.get_heads() == heads_before
    assert not tablet.is_saved(hid)

    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP TRIGGER refuse ON changes")
    summary = await SyncClient(tablet, server.url).sync()
    assert summary.rejected == [] and summary.changes_sent == 1
    assert tablet.is_saved(hid)
