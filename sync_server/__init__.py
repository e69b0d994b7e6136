"""Vatra sync server: households as Automerge documents, merged, persisted and fanned out.

The tree is the pipeline, in layers; a layer imports only the ones below it (checked by
import-linter, ``pyproject.toml``)::

    cli/         the ``vatra`` command
    app.py       builds and wires every service, owns the long-lived tasks
    config.py    settings, read once from the environment
    api/         HTTP faces: approvals, read API, enrollment, operations, OpenAPI
    gateway/     one peer: WebSocket endpoint, connection, dispatch, revocation
    projection/  rows for the web tier, the projector, the read model
    sync/        the pipeline: households, fork -> check -> persist -> swap -> fan out
    auth/        identity, enrollment, access rules, grants
    store/       PostgreSQL: store contract, keys, audit, quarantine, tables, migrations
    protocol/    the wire contract shared with the client (``client_sdk`` imports only this)

See ARCHITECTURE.md. This ``__init__`` imports nothing.
"""
