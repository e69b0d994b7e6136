"""Encryption at rest: sealed bodies, master keys, rotation, crypto-shredding (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from _rawpeer import raw_peer
from _scenes import active_household
from automerge.core import Document
from conftest import TEST_MASTER_KEY

from client_sdk import SyncClient
from conflict import Household
from sync_server.app import ENGINE, VatraServer
from sync_server.config import Settings
from sync_server.protocol import wire
from sync_server.store.contract import HouseholdErased, HouseholdRecord
from sync_server.store.database import embedded_postgres, make_engine, migrate
from sync_server.store.keys import (
    CHANGE,
    QUARANTINE,
    SEAL_OVERHEAD,
    SNAPSHOT,
    DecryptionError,
    KeyRing,
    MasterKeyError,
    WrappedKey,
    format_key_line,
    generate_master_key,
    load_keyring,
    parse_key,
    read_key_file,
    write_key_file,
)
from sync_server.store.postgres import PostgresStore, changes, household_keys, snapshots
from sync_server.store.tables import audit
from sync_server.sync.apply import stored

NAMES = ("Zamfirescu", "Theodora")
SECRET_NOTE = "Zamfirescu Theodora, gate code 4711"


def ring(*keys: str) -> KeyRing:
    return KeyRing(dict(parse_key(k, "test") for k in keys))


def household_with_names() -> Household:
    h = Household.create(locality="54975", county="CJ", address="Str. Zamfirescu 9",
                         author="sw-1")
    h.add_member("Theodora", "Zamfirescu", "1990-01-01", "F", "head")
    h.set_notes(SECRET_NOTE)
    return h


async def create(store: PostgresStore, h: Household, snapshot: bool = True) -> None:
    result = await store.create_household(HouseholdRecord(h.household_id, "54975", "CJ"),
                                          stored(h.doc.get_changes([])))
    if snapshot:
        await store.save_snapshot(h.household_id, h.doc.save(), h.doc.get_heads(),
                                  result.last_seq)


async def plaintext_anywhere(engine, needles: tuple[str, ...] = NAMES, *,
                             but: tuple[str, ...] = ()) -> list[str]:
    """Where any needle occurs in the database: every column of every table as text, and
    the raw bytes of every bytea and bytea[] column (what pg_dump would write); schemas
    in ``but`` are not read."""
    found = []
    async with engine.connect() as conn:
        cols = (await conn.execute(sa.text("""
            SELECT table_schema, table_name, column_name, data_type, udt_name
            FROM information_schema.columns
            WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            ORDER BY 1, 2, ordinal_position"""))).all()
        cols = [c for c in cols if c.table_schema not in but]
        tables = sorted({(c.table_schema, c.table_name) for c in cols})
        assert ("public", "changes") in tables and ("public", "household_keys") in tables
        for schema, table in tables:
            rows = (await conn.execute(sa.text(f'SELECT t::text FROM "{schema}"."{table}" t'))
                    ).scalars().all()
            for text in rows:
                for n in needles:
                    if n.lower() in text.lower() or n.encode().hex() in text:
                        found.append(f"{table} (as text): {n}")
        for c in cols:
            if c.udt_name not in ("bytea", "_bytea"):
                continue
            q = (f'SELECT "{c.column_name}" FROM "{c.table_schema}"."{c.table_name}"'
                 if c.udt_name == "bytea" else
                 f'SELECT unnest("{c.column_name}") FROM "{c.table_schema}"."{c.table_name}"')
            for raw in (await conn.execute(sa.text(q))).scalars().all():
                for n in needles:
                    if raw is not None and n.encode() in bytes(raw):
                        found.append(f"{c.table_name}.{c.column_name} (bytes): {n}")
    return found


# -- the key ring ----------------------------------------------------------------------------


def test_blobs_are_bound_to_household_and_purpose() -> None:
    kr = ring(TEST_MASTER_KEY)
    a, wrapped_a = kr.new_data_key("household-a")
    b, _ = kr.new_data_key("household-b")
    blob = a.seal(CHANGE, b"Zamfirescu")
    assert b"Zamfirescu" not in blob and len(blob) == len(b"Zamfirescu") + SEAL_OVERHEAD
    assert a.open(CHANGE, blob) == b"Zamfirescu"
    assert a.seal(CHANGE, b"x") != a.seal(CHANGE, b"x")  # random nonces
    for wrong in (lambda: a.open(SNAPSHOT, blob), lambda: a.open(QUARANTINE, blob),
                  lambda: b.open(CHANGE, blob),
                  lambda: a.open(CHANGE, blob[:-1] + bytes([blob[-1] ^ 1]))):
        with pytest.raises(DecryptionError):
            wrong()
    # A wrapped key opens only for its own household, under its own master version.
    fresh = ring(TEST_MASTER_KEY)
    assert fresh.unwrap("household-a", wrapped_a).open(CHANGE, blob) == b"Zamfirescu"
    with pytest.raises(MasterKeyError, match="wrong master key"):
        ring(TEST_MASTER_KEY).unwrap("household-b", wrapped_a)
    with pytest.raises(MasterKeyError, match="version 7 is needed"):
        fresh.unwrap("household-c", WrappedKey(wrapped_a.wrapped, 7))
    other = KeyRing({1: generate_master_key()})
    with pytest.raises(MasterKeyError, match="wrong master key"):
        other.unwrap("household-a", wrapped_a)
    assert "Zamfirescu" not in repr(a) and repr(kr).startswith("KeyRing(")


def test_the_data_key_cache_is_bounded() -> None:
    kr = KeyRing({1: generate_master_key()}, cache_size=3)
    wrapped = {f"h{i}": kr.new_data_key(f"h{i}")[1] for i in range(5)}
    for hid, w in wrapped.items():
        kr.unwrap(hid, w)
    assert [hid for hid in wrapped if kr.cached(hid)] == ["h2", "h3", "h4"]
    kr.forget("h4")
    assert kr.cached("h4") is None


def test_master_key_sources(tmp_path: Path) -> None:
    k1, k2 = generate_master_key(), generate_master_key()
    with pytest.raises(MasterKeyError, match="DATABASE_URL is set but no master key"):
        load_keyring(Settings(database_url="postgresql://db/x", data_dir=tmp_path))
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_keyring(Settings(database_url="postgresql://db/x", master_key="c2hvcnQ="))
    env = Settings.from_env({"DATABASE_URL": "postgresql://db/x", "VATRA_MASTER_KEY":
                             format_key_line(1, k1).split(":", 1)[1]})
    assert load_keyring(env).versions == (1,)  # bare base64 is version 1
    assert "VATRA_MASTER_KEY" not in repr(env) and format_key_line(1, k1)[2:] not in repr(env)
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# old and new\n{format_key_line(1, k1)}\n\n{format_key_line(2, k2)}\n")
    both = load_keyring(Settings(database_url="postgresql://db/x", master_key_file=str(keyfile)))
    assert both.versions == (1, 2) and both.current_version == 2
    with pytest.raises(MasterKeyError, match="two different keys for version 1"):
        load_keyring(Settings(master_key=format_key_line(1, k2), master_key_file=str(keyfile)))


def test_the_embedded_default_generates_its_key_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    first = load_keyring(settings)
    path = tmp_path / "var" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.source == path
    second = load_keyring(settings)
    assert second.master_key(1) == first.master_key(1)
    assert read_key_file(path) == {1: first.master_key(1)}
    with pytest.raises(FileExistsError):
        write_key_file(path, {1: generate_master_key()}, exclusive=True)


# -- the store -------------------------------------------------------------------------------


async def test_bodies_are_sealed_and_sizes_are_plaintext_sizes(store, engine, keyring) -> None:
    h = household_with_names()
    new = stored(h.doc.get_changes([]))
    result = await store.create_household(HouseholdRecord(h.household_id, "54975", "CJ"), new)
    assert result.inserted_bytes == sum(len(c.body) for c in new)
    await store.save_snapshot(h.household_id, h.doc.save(), h.doc.get_heads(), result.last_seq)
    async with engine.connect() as conn:
        bodies = (await conn.execute(sa.select(changes.c.hash, changes.c.body))).all()
        snap = (await conn.execute(sa.select(snapshots.c.body))).scalar_one()
        key_row = (await conn.execute(sa.select(household_keys))).one()
    plain = {c.hash: c.body for c in new}
    assert any(b"Zamfirescu" in body for body in plain.values())  # the check below means it
    for hash_, body in bodies:
        assert b"Zamfirescu" not in body and len(body) == len(plain[hash_]) + SEAL_OVERHEAD
    assert b"Zamfirescu" not in snap
    assert key_row.master_version == 1 and key_row.destroyed_at is None
    assert len(key_row.wrapped) == 24 + 32 + 16
    # A fresh process (empty cache) with the master key reads it all back.
    other = PostgresStore(engine, ring(TEST_MASTER_KEY))
    try:
        loaded = await other.load(h.household_id)
        assert Household(Document.load(loaded.document_bytes()), h.household_id).to_dict() \
            == h.to_dict()
        key = await other.data_key(h.household_id)
        assert key.open(SNAPSHOT, snap) == h.doc.save()
    finally:
        await other.close()
    assert await plaintext_anywhere(engine) == []


async def test_erasure_shreds_the_household(store, engine) -> None:
    h, kept = household_with_names(), Household.create(
        locality="54975", county="CJ", address="Str. Zamfirescu 1", author="sw-1")
    await create(store, h)
    await create(store, kept)
    async with engine.connect() as conn:
        sealed = (await conn.execute(sa.select(changes.c.body).where(
            changes.c.household_id == h.household_id))).scalars().all()
    old_key = await store.data_key(h.household_id)  # what an attacker might have kept in RAM

    result = await store.erase_household(h.household_id)
    assert result.deleted["snapshots"] == 1 and result.log_rows_kept == len(sealed)
    assert not result.already_erased

    # The log keeps its rows, and nothing can open them any more.
    async with engine.connect() as conn:
        key_row = (await conn.execute(sa.select(household_keys).where(
            household_keys.c.household_id == h.household_id))).one()
        assert key_row.wrapped is None and key_row.destroyed_at is not None
        assert (await conn.execute(sa.select(sa.func.count()).select_from(snapshots).where(
            snapshots.c.household_id == h.household_id))).scalar_one() == 0
        assert (await conn.execute(sa.select(changes.c.body).where(
            changes.c.household_id == h.household_id))).scalars().all() == sealed
    assert await store.change_count(h.household_id) == len(sealed)
    fresh = ring(TEST_MASTER_KEY)
    with pytest.raises(MasterKeyError):
        fresh.unwrap(h.household_id, WrappedKey(b"\0" * 72, 1))
    other_key = await store.data_key(kept.household_id)
    for body in sealed:
        with pytest.raises(DecryptionError):
            other_key.open(CHANGE, body)
        assert old_key.open(CHANGE, body)  # (only the destroyed key opened them)

    for s in (store, PostgresStore(engine, fresh)):
        with pytest.raises(HouseholdErased, match="erased"):
            await s.load(h.household_id)
        with pytest.raises(HouseholdErased):
            await s.data_key(h.household_id)
    await PostgresStore(engine, fresh).close()
    with pytest.raises(HouseholdErased):
        await store.append_changes(h.household_id, stored(h.doc.get_changes([]))[:1])
    with pytest.raises(HouseholdErased):
        await store.save_snapshot(h.household_id, h.doc.save(), h.doc.get_heads(), 10**6)
    with pytest.raises(HouseholdErased):  # the id is burnt: never registered again
        await create(store, h, snapshot=False)
    assert (await store.erase_household(h.household_id)).already_erased
    with pytest.raises(LookupError):
        await store.erase_household("unknownhousehold")

    assert await plaintext_anywhere(engine) == []
    loaded = await store.load(kept.household_id)  # the other household is untouched
    assert Document.load(loaded.document_bytes()).get_heads() == kept.doc.get_heads()


async def test_an_erasure_by_another_process_is_not_acknowledged_as_stored(
        store, engine) -> None:
    """Before: when another process (``vatra household erase``) erased a household whose
    data key this process still held in its cache, the next append was filtered out by
    the insert's key check and reported success with nothing written: the server would
    have acknowledged changes it did not store. Reproduced with two stores on one
    database, one erasing, the other appending and moving. Now both raise
    ``HouseholdErased``, nothing is written, and the stale key is dropped."""
    h = household_with_names()
    await create(store, h)
    key = await store.data_key(h.household_id)  # cached here
    other = PostgresStore(engine, ring(TEST_MASTER_KEY))
    try:
        await other.erase_household(h.household_id)
    finally:
        await other.close()
    before = await store.change_count(h.household_id)
    heads = h.doc.get_heads()
    h.set_address("Str. Dupa Stergere 1")
    new = stored(h.doc.get_changes(heads))
    with pytest.raises(HouseholdErased):
        await store.append_changes(h.household_id, new)
    assert store.keyring.cached(h.household_id) is None
    store.keyring.remember(key)  # stale again, for the move's path
    with pytest.raises(HouseholdErased):
        await store.move_household(HouseholdRecord(h.household_id, "13169", "AG"), new)
    assert store.keyring.cached(h.household_id) is None
    assert await store.change_count(h.household_id) == before
    record = await store.household(h.household_id)
    assert (record.locality, record.county) == ("54975", "CJ")  # the move rolled back


async def test_wrong_master_key_returns_no_data(store, engine) -> None:
    h = household_with_names()
    await create(store, h)
    wrong = PostgresStore(engine, KeyRing({1: generate_master_key()}))
    try:
        for _ in range(2):  # remembered: every later call refuses too
            with pytest.raises(MasterKeyError, match="wrong master key"):
                await wrong.load(h.household_id)
        with pytest.raises(MasterKeyError):
            await wrong.create_household(HouseholdRecord("x", "54975", "CJ"), [])
    finally:
        await wrong.close()
    missing = PostgresStore(engine, KeyRing({2: generate_master_key()}))
    try:
        with pytest.raises(MasterKeyError, match="version 1 is needed but not configured"):
            await missing.verify_master_key()
    finally:
        await missing.close()


async def test_rotation_rewraps_every_key(store, engine) -> None:
    hs = [household_with_names() for _ in range(3)]
    for h in hs:
        await create(store, h)
    erased = hs.pop()
    await store.erase_household(erased.household_id)
    new_key = generate_master_key()
    rotating = PostgresStore(engine, ring(TEST_MASTER_KEY).with_keys({2: new_key}))
    try:
        assert await rotating.rotate_master_key() == 2
        assert await rotating.rotate_master_key() == 0  # idempotent
        assert await rotating.key_versions() == {2: 2}
    finally:
        await rotating.close()
    new_only = PostgresStore(engine, KeyRing({2: new_key}))
    try:
        for h in hs:
            loaded = await new_only.load(h.household_id)
            assert Household(Document.load(loaded.document_bytes()), h.household_id).to_dict() \
                == h.to_dict()
        with pytest.raises(HouseholdErased):
            await new_only.load(erased.household_id)
    finally:
        await new_only.close()
    old_only = PostgresStore(engine, ring(TEST_MASTER_KEY))
    try:
        with pytest.raises(MasterKeyError, match="version 2 is needed"):
            await old_only.load(hs[0].household_id)
    finally:
        await old_only.close()


# -- end to end: a real sync, the CLI --------------------------------------------------------


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VATRA_")}
    env.update({"DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY, **extra})
    return env


@pytest.mark.functional
async def test_a_synced_household_leaves_no_plaintext_and_erasure_is_final(
        server, provision, store, engine, database_url, tmp_path) -> None:
    """Household content is ciphertext everywhere in the database but the ``proj`` schema,
    which is the web tier's plaintext read model by design (docs/projections.md,
    docs/decisions.md); erasure leaves it nowhere, ``proj`` included.

    This test used to read ``proj`` too before erasure, and failed whenever the server's
    own projector had already projected the household (a race with the sync)."""
    a, b = await provision.tablet("a"), await provision.tablet("b")
    h = a.create_household(locality="54975", county="CJ", address="Str. Zamfirescu 9")
    hid = h.household_id
    with a.edit(hid) as e:
        e.add_member("Theodora", "Zamfirescu", "1990-01-01", "F", "head")
        e.set_notes(SECRET_NOTE)
    summary = await SyncClient(a, server.url).sync()
    assert summary.rejected == [] and a.is_saved(hid)
    sup = await provision.tablet("sup", role="supervisor", county="CJ")
    sup.track(hid)
    assert (await SyncClient(sup, server.url).sync([hid])).rejected == []
    loaded = await store.load(hid)  # positive control: the content is really on the server
    assert b"Zamfirescu" in loaded.document_bytes()
    assert await plaintext_anywhere(engine, but=("proj",)) == []

    # In a thread: the server runs on this test's event loop, and a projection it has in
    # flight holds row locks the erasure waits for (run inline, the CLI hung for 120 s).
    done = await asyncio.to_thread(run_cli, "household", "erase", hid, env=cli_env(database_url))
    assert done.returncode == 2 and "--yes" in done.stderr  # irreversible: asks first
    done = await asyncio.to_thread(run_cli, "household", "erase", hid, "--yes",
                                   env=cli_env(database_url))
    assert done.returncode == 0, done.stderr
    assert "erased" in done.stdout and "Zamfirescu" not in done.stdout

    with pytest.raises(HouseholdErased):
        await store.load(hid)
    # The running server still holds the household and its data key. Its supervisor's
    # device (a raw peer: the SDK would discard the copy, told of the erasure) sends an
    # edit: it is answered "not stored" (before, it was acknowledged and silently not
    # written), and from then on this server answers it as an unknown id: for a
    # supervisor's copy, a registration she may not make.
    with sup.edit(hid) as e:
        e.set_address("Str. Dupa Stergere 1")
    async with raw_peer(server.url, sup) as peer:
        late = await peer.push(sup.household(hid).doc, hid, strict=False)
        assert isinstance(late, wire.Error) and late.code == "storage-failure", late
        again = await peer.push(sup.household(hid).doc, hid, strict=False)
        assert isinstance(again, wire.Error) and again.code == "creation-refused", again
    assert await plaintext_anywhere(engine) == []
    assert await store.change_count(hid) == summary.changes_sent  # the log keeps its rows
    # A server loading it now answers as for an unknown household, to a teammate asking
    # for it (not on its team: never told of it); the tablets that held it are told it was
    # erased and delete their copies (the supervisor's with its unsynced edit); none
    # recreates it.
    async with VatraServer(dataclasses.replace(server.settings)) as fresh:
        got = await SyncClient(b, fresh.url).sync([hid])
        assert got.unavailable == [hid] and got.erased == {}
        again = await SyncClient(a, fresh.url).sync([hid])
        assert again.erased == {hid: 0} and again.unavailable == again.rejected == []
        told = await SyncClient(sup, fresh.url).sync([hid])
        assert told.erased == {hid: 1} and told.discarded == {hid: 1}
        assert hid not in a.household_ids() and hid not in sup.household_ids()
    with pytest.raises(HouseholdErased):
        await store.load(hid)


@pytest.mark.functional
async def test_an_erasure_is_reported_with_the_unsynced_changes_it_discarded(
        server, provision, database_url) -> None:
    """Before (issue 12, observation 6): a tablet holding an unsynced edit of an erased
    household removed the household at its next sync, and nothing reported it. Reproduced
    with a nurse who edits the household twice offline while an operator erases it. Now
    her sync summary lists it as erased with the two changes discarded; her teammate,
    whose copy was in sync, is told too (nothing discarded); a worker of another team is
    told nothing; and the audit log records who erased it and when, without content."""
    hid, _, (ana, nurse) = await active_household(server, provision, ("nurse", {}))
    outsider = await provision.tablet("ioana")
    with nurse.edit(hid) as e:
        e.append_activity("visit", "the child was at school")
        e.set_notes("new phone number 0722")
    assert nurse.unsynced_changes(hid) == 2

    done = await asyncio.to_thread(run_cli, "household", "erase", hid, "--yes",
                                   "--by", "ops-maria", env=cli_env(database_url))
    assert done.returncode == 0, done.stderr

    summary = await SyncClient(nurse, server.url).sync()
    assert summary.erased == {hid: 2} and summary.discarded == {hid: 2}
    assert summary.removed == [] and hid not in nurse.household_ids()
    mate = await SyncClient(ana, server.url).sync()
    assert mate.erased == {hid: 0} and mate.discarded == {}
    assert (await SyncClient(outsider, server.url).sync()).erased == {}
    assert (await SyncClient(nurse, server.url).sync()).erased == {}  # said once

    other = ana.create_household(locality="54975", county="CJ", address="Str. Alta 2")
    await SyncClient(ana, server.url).sync([other.household_id])
    for args in ([hid], [other.household_id]):  # again (idempotent), and without --by
        done = await asyncio.to_thread(run_cli, "household", "erase", *args, "--yes",
                                       env=cli_env(database_url))
        assert done.returncode == 0, done.stderr
    async with server.app[ENGINE].connect() as conn:
        erasures = {r.household_id: r for r in (await conn.execute(
            sa.select(audit).where(audit.c.kind == "household-erased"))).all()}
    assert sorted(erasures) == sorted([hid, other.household_id])  # each audited once
    assert erasures[hid].user_id == "ops-maria" and erasures[hid].at is not None
    assert erasures[other.household_id].user_id.startswith("os:")
    assert "0722" not in str(erasures[hid].detail) and "school" not in str(erasures[hid].detail)


@pytest.mark.functional
async def test_rotate_master_from_the_command_line(store, engine, database_url,
                                                   tmp_path) -> None:
    hs = [household_with_names() for _ in range(2)]
    for h in hs:
        await create(store, h)
    new_file = tmp_path / "new.key"
    done = run_cli("keys", "generate", "--out", str(new_file), "--version", "2",
                   env=cli_env(database_url))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    done = run_cli("keys", "rotate-master", "--new-key-file", str(new_file),
                   env=cli_env(database_url))
    assert done.returncode == 0, done.stderr
    assert "rewrapped 2 data keys under master key version 2" in done.stdout
    new_only = {k: v for k, v in cli_env(database_url).items() if k != "VATRA_MASTER_KEY"}
    new_only["VATRA_MASTER_KEY_FILE"] = str(new_file)
    done = run_cli("keys", "status", env=new_only)
    assert done.returncode == 0, done.stderr
    assert "version 2: 2 data keys" in done.stdout
    reader = PostgresStore(engine, KeyRing(read_key_file(new_file)))
    try:
        for h in hs:
            loaded = await reader.load(h.household_id)
            assert Document.load(loaded.document_bytes()).get_heads() == h.doc.get_heads()
    finally:
        await reader.close()
    done = run_cli("keys", "status", env=cli_env(database_url))  # the old key alone: refused
    assert done.returncode == 1 and "version 2 is needed" in done.stderr


@pytest.mark.functional
async def test_the_server_refuses_to_start_without_the_right_key(store, database_url,
                                                                  tmp_path) -> None:
    await create(store, household_with_names())
    with pytest.raises(MasterKeyError, match="DATABASE_URL is set but no master key"):
        async with VatraServer(Settings(database_url=database_url, data_dir=tmp_path, port=0)):
            pass
    wrong = format_key_line(1, generate_master_key())
    done = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path),
                   env=cli_env(database_url, VATRA_MASTER_KEY=wrong), timeout=60)
    assert done.returncode == 1
    assert "refusing to start" in done.stderr and "wrong master key" in done.stderr
    assert "listening" not in done.stdout
    done = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path),
                   env={k: v for k, v in cli_env(database_url).items()
                        if k != "VATRA_MASTER_KEY"}, timeout=60)
    assert done.returncode == 1 and "no master key" in done.stderr


async def test_the_embedded_default_reuses_its_generated_key(tmp_path: Path) -> None:
    """First run on the embedded default: a key is generated into the data directory and a
    household stored under it; the second run finds the same key and reads the household."""
    settings = Settings(data_dir=tmp_path / "var")
    h = household_with_names()
    for run in range(2):
        with embedded_postgres(settings.data_dir) as url:
            engine = make_engine(url)
            s = PostgresStore(engine, load_keyring(settings))
            try:
                await migrate(engine)
                if run == 0:
                    await create(s, h)
                else:
                    loaded = await s.load(h.household_id)
                    assert Document.load(loaded.document_bytes()).get_heads() \
                        == h.doc.get_heads()
            finally:
                await s.close()
                await engine.dispose()
        key_file = settings.data_dir / "master.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        if run == 0:
            generated = key_file.read_bytes()
        assert key_file.read_bytes() == generated
