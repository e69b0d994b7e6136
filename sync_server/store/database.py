"""PostgreSQL: the embedded default, or DATABASE_URL; engines; migrations.

With no ``DATABASE_URL`` Vatra runs PostgreSQL itself through the ``pgserver``
package, with its data in ``<data dir>/postgres``; the server is stopped on
exit. The schema is managed by Alembic (``sync_server/store/migrations``) and applied
on start and by ``vatra migrate``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sync_server.protocol.errors import ConfigError

log = logging.getLogger(__name__)

#: The Alembic scripts, read as package data (they ship in the wheel, tests/test_packaging.py).
MIGRATIONS = importlib.resources.files("sync_server.store") / "migrations"


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run an embedded PostgreSQL in ``data_dir/postgres``; yield its URL; stop it on exit."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the embedded default needs it

    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(  # type: ignore[attr-defined]  # not re-exported by name
            pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def async_url(url: str) -> str:
    """SQLAlchemy URL with the asyncpg driver, from any ``postgres[ql]://`` URL."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ConfigError("DATABASE_URL must be a postgresql:// URL")


#: What a database that is down, restarting or refusing raises through the engine: the
#: server answers these with a retryable ``storage-failure``, never as the peer's fault.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    # hide_parameters: change bodies are household content; they never go into logs.
    return create_async_engine(async_url(url), pool_size=pool_size, max_overflow=5,
                               hide_parameters=True)


@contextlib.asynccontextmanager
async def database_url(explicit: str | None, data_dir: Path) -> AsyncIterator[str]:
    """The URL to use: ``explicit`` if given, else an embedded server for the block's duration."""
    if explicit:
        yield explicit
        return
    with embedded_postgres(data_dir) as url:
        log.info("embedded PostgreSQL running in %s", data_dir / "postgres")
        yield url


@contextlib.asynccontextmanager
async def open_database(explicit_url: str | None, data_dir: Path, *,
                        migrated: bool = True) -> AsyncIterator[AsyncEngine]:
    """An engine on the database (``explicit_url``, or the embedded server in ``data_dir``
    for the block's duration), migrated to the newest schema unless ``migrated`` is
    False; disposed on the way out. Every command and the server open it this way."""
    async with database_url(explicit_url, data_dir) as url:
        engine = make_engine(url)
        try:
            if migrated:
                await migrate(engine)
            yield engine
        finally:
            await engine.dispose()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (idempotent)."""

    def upgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
