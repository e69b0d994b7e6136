"""Shared fixtures: one real PostgreSQL for the whole run, a fresh database per test.

With ``DATABASE_URL`` set, tests use that server (it must allow CREATE DATABASE);
otherwise an embedded PostgreSQL (pgserver) runs in a temporary directory for
the session. A template database is migrated once; each test gets its own copy
(``CREATE DATABASE … TEMPLATE``), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from sync_server.store.database import embedded_postgres, make_engine, migrate
from sync_server.store.keys import KeyRing, parse_key
from sync_server.store.postgres import PostgresStore

TEMPLATE = "vatra_test_template"
#: The master key of every test store and server (version 1; base64 of 32 bytes).
TEST_MASTER_KEY = "1:dmF0cmEtdGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzISE="


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated template database on a real PostgreSQL server."""
    explicit = os.environ.get("DATABASE_URL")
    if explicit:
        base = explicit
        yield from _prepare_template(base)
        return
    # Not under pytest's basetemp: concurrent pytest runs prune each other's old basetemps.
    data_dir = Path(tempfile.mkdtemp(prefix="vatra-test-pg-"))
    try:
        with embedded_postgres(data_dir) as base:
            yield from _prepare_template(base)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _prepare_template(base: str) -> Iterator[str]:
    async def prepare() -> None:
        admin = make_engine(base)
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.exec_driver_sql(f"CREATE DATABASE {TEMPLATE}")
        await admin.dispose()
        engine = make_engine(_with_database(base, TEMPLATE))
        await migrate(engine)
        await engine.dispose()

    asyncio.run(prepare())
    yield base


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database for this test only."""
    name = "vatra_t_" + uuid.uuid4().hex[:12]
    admin = make_engine(postgres_url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    try:
        yield _with_database(postgres_url, name)
    finally:
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.dispose()


@pytest.fixture
async def engine(database_url: str):
    eng = make_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing(dict([parse_key(TEST_MASTER_KEY, "TEST_MASTER_KEY")]))


@pytest.fixture
async def store(engine, keyring) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(engine, keyring)
    yield s
    await s.close()


@pytest.fixture
async def server(database_url: str, tmp_path: Path):
    """A real Vatra server on a free port, on this test's database."""
    from sync_server.app import VatraServer
    from sync_server.config import Settings

    settings = Settings(database_url=database_url, data_dir=tmp_path / "server", port=0,
                        max_frame_bytes=256 * 1024, master_key=TEST_MASTER_KEY)
    async with VatraServer(settings) as srv:
        yield srv


@pytest.fixture
def provision(server, tmp_path: Path):
    """Users and enrolled tablets on the ``server`` fixture, made the way an admin and a
    tablet make them (enrollment code over HTTP). ``await provision.tablet("ana")``."""
    from sync_server.app import IDENTITY, SYNCHRONIZER
    from vatra_devtools.provision import Provisioner

    class TestProvisioner(Provisioner):
        async def tablet(self, name: str, user_id: str | None = None, **kw):  # type: ignore[override]
            return await super().tablet(tmp_path / "devices" / name, user_id or name, **kw)

    return TestProvisioner(server.app[IDENTITY], server.http_url, server.app[SYNCHRONIZER])


@pytest.fixture
def make_replica(tmp_path: Path):
    """Factory for replicas that stay offline (never enrolled, never synced)."""
    from client_sdk import Replica

    def make(name: str) -> Replica:
        return Replica(tmp_path / "devices" / name, pin="1234")

    return make


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL of the test's own, to stop, start, freeze and thaw (tests/_faults.py)."""
    from _faults import Postgres

    pg = Postgres(tmp_path / "pg")
    try:
        yield pg
    finally:
        pg.close()
