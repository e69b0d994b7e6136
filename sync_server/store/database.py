"""PostgreSQL: the embedded default, or DATABASE_URL; engines; migrations.

With no ``DATABASE_URL`` Vatra runs PostgreSQL itself through the ``pgserver``
package, with its data in ``<data dir>/postgres``; the server is stopped on
exit. The schema is managed by Alembic (``sync_server/store/migrations``) and applied
on start and by ``vatra migrate``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import sqlalchemy as sa
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
    _forget_the_dead(pgdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(  # type: ignore[attr-defined]  # not re-exported by name
            pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _proc_stat(stat: Path) -> tuple[str, int] | None:
    """(state, parent pid) from a ``/proc/<pid>/stat`` file; None if unreadable."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command's name
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    """A process that exists and is not a zombie (dead, only not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists: another user's (the embedded PostgreSQL runs as "pgserver")
    found = _proc_stat(Path(f"/proc/{pid}/stat"))
    return found is None or found[0] != "Z"  # no /proc: it answered kill(pid, 0)


def _forget_the_dead(pgdata: Path) -> None:
    """Undo what a killed process (``kill -9``) left behind for the embedded PostgreSQL.

    pgserver stops PostgreSQL when the last process using it leaves, counting them in
    ``.handle_pids.json``: a killed one never leaves, so PostgreSQL outlived every later
    graceful stop (issue 13, fault 5). And a killed postmaster that nobody reaped (a
    zombie) still answers ``kill(pid, 0)``: pgserver took it for running and returned
    the address of a server that refused every connection. Dead handles are forgotten,
    and a zombie postmaster's lock file is removed (once its backends have gone) so a
    new one starts."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        pids = None
    if isinstance(pids, list):
        alive = [p for p in pids if isinstance(p, int) and _running(p)]
        if alive != pids:
            log.warning("embedded PostgreSQL: forgetting %d process(es) that died without "
                        "stopping it", len(pids) - len(alive))
            handles.write_text(json.dumps(alive))
    lock = pgdata / "postmaster.pid"
    try:
        postmaster = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    found = _proc_stat(Path(f"/proc/{postmaster}/stat"))
    if found is not None and found[0] == "Z":
        for _ in range(50):  # its backends notice the postmaster's death and exit
            if not children(postmaster):
                break
            time.sleep(0.1)
        log.warning("embedded PostgreSQL: the postmaster was killed; starting a new one")
        lock.unlink(missing_ok=True)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a postmaster's backends), from ``/proc``."""
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
            if (found := _proc_stat(stat)) is not None and found[1] == pid]


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


#: Seconds a connect, a wait for a pooled connection, a statement or a lock wait may take
#: by default (``VATRA_DATABASE_TIMEOUT``): a database that is down or frozen gives a
#: bounded, retryable failure instead of a hang.
DATABASE_TIMEOUT = 10.0


def make_engine(url: str, *, pool_size: int = 5,
                timeout: float | None = DATABASE_TIMEOUT) -> AsyncEngine:
    """An engine with every wait bounded by ``timeout`` (None: unbounded, for migrations):
    asyncpg's connect and per-statement timeouts (client side: they also hold when the
    server is frozen), SQLAlchemy's pool wait, and PostgreSQL's own ``statement_timeout``
    and ``lock_timeout``."""
    connect_args: dict[str, object] = {}
    options: dict[str, object] = {}
    if timeout is not None:
        ms = str(int(timeout * 1000))
        connect_args = {"timeout": timeout, "command_timeout": timeout,
                        "server_settings": {"statement_timeout": ms, "lock_timeout": ms}}
        options = {"pool_timeout": timeout}
    # hide_parameters: change bodies are household content; they never go into logs.
    return create_async_engine(async_url(url), pool_size=pool_size, max_overflow=5,
                               hide_parameters=True, connect_args=connect_args, **options)


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
                        migrated: bool = True,
                        database_timeout: float | None = DATABASE_TIMEOUT,
                        ) -> AsyncIterator[AsyncEngine]:
    """An engine on the database (``explicit_url``, or the embedded server in ``data_dir``
    for the block's duration), its waits bounded by ``database_timeout``, migrated to the newest
    schema unless ``migrated`` is False (by an engine without timeouts: a migration may
    take long); disposed on the way out. Every command and the server open it this way."""
    async with database_url(explicit_url, data_dir) as url:
        if migrated:
            migrating = make_engine(url, timeout=None)
            try:
                await migrate(migrating)
            finally:
                await migrating.dispose()
        engine = make_engine(url, timeout=database_timeout)
        try:
            yield engine
        finally:
            await engine.dispose()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


#: The advisory lock space migrations take (distinct from the projector's).
MIGRATION_LOCK_SPACE = 0x7661_7401


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (idempotent)."""

    def upgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        # One migration at a time: on a first deployment every instance, the projector and
        # the migration job start together on the empty database (held to the commit).
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:space, 0)"),
                           {"space": MIGRATION_LOCK_SPACE})
        await conn.run_sync(upgrade)
