"""Database faults (issue 13): a database that is down is the server's problem, told to the
tablet as a retryable ``storage-failure``, never as a refusal of its identity; the SDK
retries it with backoff and syncs once the database is back.

A private embedded PostgreSQL per test, stopped and started as an operator would
(``pg_ctl stop -m fast``, ``pg_ctl start``), under a real server and an enrolled tablet.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import TEST_MASTER_KEY

from client_sdk import ServerUnavailable, SyncClient, SyncFailed
from sync_server.app import IDENTITY, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional


class Postgres:
    """An embedded PostgreSQL this test may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver
        from pgserver._commands import pg_ctl

        self._pg_ctl = pg_ctl
        self.server: Any = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.url: str = self.server.get_uri()
        self._socket_dir = re.search(r"host=([^&]+)", self.url).group(1)  # type: ignore[union-attr]

    def _ctl(self, *args: str) -> None:
        self._pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user,
                     timeout=60)

    async def stop(self) -> None:
        await asyncio.to_thread(self._ctl, "-w", "-m", "fast", "stop")

    async def start(self) -> None:
        from urllib.parse import unquote

        await asyncio.to_thread(self._ctl, "-w", "-o", '-h ""', "-o",
                                f"-k {unquote(self._socket_dir)}", "-l",
                                str(self.server.log), "start")


@pytest.fixture
def postgres(tmp_path) -> Iterator[Postgres]:
    pg = Postgres(tmp_path / "pg")
    try:
        yield pg
    finally:
        pg.server.cleanup()


async def test_a_database_down_is_a_retryable_storage_failure_not_an_identity_refusal(
        postgres: Postgres, tmp_path, caplog) -> None:
    """Before (issue 13, fault 1): with PostgreSQL stopped for 10 s during syncs, 360 of 365
    failed syncs were refused ``handshake-failed`` and the server logged "Error handling
    request" 361 times: the handshake's device lookup did not handle a database error,
    and a tablet told ``handshake-failed`` believes its identity is refused (the SDK made
    it a ``ServerRejected`` and never retried). Reproduced by stopping PostgreSQL under a
    running server. Now the tablet is told ``storage-failure``, the SDK retries it
    (``ServerUnavailable``) until its attempts run out, nothing escapes as an unhandled
    error, and the same client syncs once PostgreSQL is back."""
    settings = Settings(database_url=postgres.url, data_dir=tmp_path / "srv", port=0,
                        master_key=TEST_MASTER_KEY)
    async with VatraServer(settings) as server:
        provision = Provisioner(server.app[IDENTITY], server.http_url, server.app[SYNCHRONIZER])
        ana = await provision.tablet(tmp_path / "ana", "ana")
        hid = ana.create_household(locality="54975", county="CJ",
                                   address="Str. Lunga 3").household_id
        assert (await SyncClient(ana, server.url).sync()).rejected == []
        with ana.edit(hid) as h:
            h.append_activity("visit", "written while the database was down")

        caplog.set_level(logging.INFO)
        await postgres.stop()
        try:
            client = SyncClient(ana, server.url, max_attempts=3, backoff_base=0.01)
            with pytest.raises(SyncFailed) as failed:
                await client.sync()
            assert failed.value.attempts == 3  # retried: not a refusal
            assert isinstance(failed.value.last, ServerUnavailable)
            assert failed.value.last.code == "storage-failure"
            assert not any("Error handling request" in r.getMessage() for r in caplog.records)
        finally:
            await postgres.start()

        summary = await SyncClient(ana, server.url, max_attempts=10, backoff_base=0.05).sync()
        assert summary.rejected == [] and ana.is_saved(hid)


async def test_a_connection_cut_during_the_handshake_is_retried(server, provision) -> None:
    """Before (issue 13, fault 11): the SDK did not retry a connection cut during the
    handshake: ``SyncClient(max_attempts=4)`` made one attempt and raised
    ``ServerRejected('handshake-failed')``, since every transport failure in the handshake
    became a "rejection", which is never retried; most client-side failures during the
    server restarts came from this. Reproduced with a real aiohttp server that accepts the
    WebSocket and drops it after the device's ``hello``. Now each attempt is a transport
    failure, retried with backoff, until the attempts run out."""
    ana = await provision.tablet("ana")
    hellos = 0

    async def drop_after_hello(request: web.Request) -> web.WebSocketResponse:
        nonlocal hellos
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        hellos += 1
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/sync", drop_after_hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(SyncFailed) as failed:
            await SyncClient(ana, f"ws://127.0.0.1:{port}/v1/sync", max_attempts=4,
                             backoff_base=0.01).sync()
    finally:
        await runner.cleanup()
    assert failed.value.attempts == 4 and hellos == 4
    assert isinstance(failed.value.last, ConnectionError)
