"""Vatra sync server: households as Automerge documents, merged, persisted and fanned out.

The pipeline for one incoming ``sync`` message, one module per stage::

    channel.py     frames in and out of one WebSocket (the E2E session layer slots in here)
    wire.py        CBOR frames <-> automerge-repo messages
    connection.py  one peer: handshake state, per-household SyncState, bounded outbox
    dispatch.py    one peer's message loop: join, then households in order, several at once
    households.py  resident household documents: load, evict, one lock each
    pipeline.py    apply on a fork -> collect new changes -> persist -> swap -> fan out
    storage.py     the store interface and its PostgreSQL implementation
    app.py         the aiohttp application and the VatraServer service

This package's ``__init__`` imports nothing heavy: ``client_sdk`` imports
``sync_server.wire`` and ``sync_server.errors`` only.
"""
