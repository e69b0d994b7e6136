"""Database plumbing: the embedded default, migrations, URL handling."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from sync_server.protocol.errors import ConfigError, ErrorCode
from sync_server.store.database import async_url, make_engine, migrate
from sync_server.store.tables import metadata


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_migrate_on_the_embedded_default_starts_and_stops_postgres(tmp_path) -> None:
    """With no DATABASE_URL, `vatra migrate` runs PostgreSQL in the data dir and stops it."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["VATRA_DATA_DIR"] = str(tmp_path / "var")
    done = run_cli("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    pgdata = tmp_path / "var" / "postgres"
    assert (pgdata / "PG_VERSION").exists()
    assert not (pgdata / "postmaster.pid").exists()  # stopped cleanly on exit
    again = run_cli("migrate", env=env)  # idempotent, and restarts on the same data
    assert again.returncode == 0, again.stderr


async def test_migrations_build_exactly_the_tables_the_code_uses(postgres_url: str) -> None:
    """No drift between sync_server/store/migrations and the SQLAlchemy tables in store/tables.py."""
    name = "vatra_m_" + uuid.uuid4().hex[:10]
    admin = make_engine(postgres_url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = make_engine(make_url(postgres_url).set(database=name)
                         .render_as_string(hide_password=False))
    try:
        await migrate(engine)
        await migrate(engine)  # a second run is a no-op
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(
                    sync, opts={"include_schemas": True}), metadata))
        assert diff == []
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.dispose()


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql://u:p@h:5/db", "postgresql+asyncpg://u:p@h:5/db"),
    ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("postgresql://postgres:@/postgres?host=/tmp/x", "postgresql+asyncpg://postgres:@/postgres?host=/tmp/x"),
])
def test_async_url(given: str, expected: str) -> None:
    assert async_url(given) == expected


def test_a_non_postgres_url_is_refused() -> None:
    """A setting error, named as one: the CLI prints it in one line and exits 1."""
    with pytest.raises(ConfigError, match="postgresql://") as err:
        async_url("sqlite:///vatra.db")
    assert err.value.code is ErrorCode.INVALID_SETTING


@pytest.mark.parametrize("raw", ["0", "-5", "ten"])
def test_a_database_timeout_must_be_a_positive_number_of_seconds(raw: str) -> None:
    from sync_server.config import Settings

    with pytest.raises(ConfigError, match="VATRA_DATABASE_TIMEOUT"):
        Settings.from_env({"VATRA_DATABASE_TIMEOUT": raw})
    assert Settings.from_env({"VATRA_DATABASE_TIMEOUT": "3"}).database_timeout == 3


async def test_instances_migrating_an_empty_database_at_once_all_succeed(postgres_url) -> None:
    """Found in review (issue 14, deploy/): on a first deployment the migration Job, the
    projector and every sync pod start together, and each migrates the empty database.
    Nothing serialized them (docs/deploy.md said Alembic did): the losers failed on
    relations the winner had just created, and crash-looped. Now a migration holds a
    PostgreSQL advisory lock for its transaction; the others wait, then find the schema
    at head. Reproduced with three migrations of one empty database at once."""
    import asyncio

    import sqlalchemy as sa
    from conftest import _with_database

    name = "vatra_race_" + uuid.uuid4().hex[:10]
    admin = make_engine(postgres_url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engines = [make_engine(_with_database(postgres_url, name), timeout=None) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        async with engines[0].connect() as conn:
            versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                        ).scalars().all()
        assert len(versions) == 1
    finally:
        for e in engines:
            await e.dispose()
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.dispose()


@pytest.mark.parametrize("raw", ["0", "-5"])
def test_an_outbox_of_no_frames_is_refused_at_start(raw: str) -> None:
    """Before: ``VATRA_OUTBOX_FRAMES=0`` was taken, and once the outbox was a bounded
    deque (issue 15) every connection overflowed on its first frame and its close raised.
    Found in review. Now the setting must be at least 1."""
    from sync_server.config import Settings

    with pytest.raises(ConfigError, match="VATRA_OUTBOX_FRAMES"):
        Settings.from_env({"VATRA_OUTBOX_FRAMES": raw})


def test_an_unknown_event_loop_is_refused_at_start() -> None:
    """``VATRA_EVENT_LOOP`` names the loop ``vatra serve`` runs on; a typo is refused by
    name rather than silently falling back to one of them."""
    from sync_server.config import Settings

    assert Settings.from_env({}).event_loop == "uvloop"
    assert Settings.from_env({"VATRA_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="VATRA_EVENT_LOOP must be one of uvloop, asyncio"):
        Settings.from_env({"VATRA_EVENT_LOOP": "uv-loop"})
