"""Alembic environment: migrations always run on a connection handed in by Vatra."""

from alembic import context

from sync_server.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `vatra migrate` (sync_server.store.database.migrate)")

context.configure(connection=connection, target_metadata=metadata, include_schemas=True)
with context.begin_transaction():
    context.run_migrations()
