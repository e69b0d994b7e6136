"""One enrolled device must not crash, freeze or fill the server, outlive its revocation,
or move a household (docs/security.md, "Threat model: an enrolled device").

Each test replays an attack that worked against an earlier server, with a real server,
real sessions and real PostgreSQL; its docstring says what happened then. The devices are
the least privileged that can do it: ``ops`` and read-only ``national`` users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import subprocess
import sys
import zlib
from pathlib import Path

import aiohttp
import cbor2
import pytest
import sqlalchemy as sa
from _automerge_bytes import chunk, column, rechecksum, sync_message, uleb, with_column
from _rawpeer import raw_peer
from _scenes import active_household, joined
from automerge.core import ROOT, Document, Message, ScalarType, SyncState
from conftest import TEST_MASTER_KEY

from client_sdk import SupervisorClient, SyncClient
from client_sdk._transport import ClientChannel
from conflict import new_household_id
from sync_server.app import IDENTITY, PROJECTOR, STORE, SYNCHRONIZER, VatraServer
from sync_server.protocol import wire
from sync_server.protocol.errors import ErrorCode
from sync_server.protocol.http_auth import sign
from sync_server.protocol.session import ClientHandshake, FrameOpener, SecureChannel
from sync_server.store.quarantine import Quotas
from sync_server.store.tables import households, proj_households, quarantine
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional


# -- building hostile bytes by hand ------------------------------------------------------------


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``); False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_kib(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found is not None
    return int(found.group(1))


async def refusal(peer, message: wire.Message | bytes) -> wire.Error:
    """Send ``message`` and return the ``error`` the server answers with."""
    if isinstance(message, bytes):
        await peer.send_frame(message)
    else:
        await peer.send(message)
    while True:
        got = await peer.receive()
        assert got is not None, "closed without an error"
        if isinstance(got, wire.Error):
            return got


async def quarantined(server, code: str) -> list[sa.Row]:
    async with server.app[STORE]._engine.connect() as conn:
        return list((await conn.execute(
            sa.select(quarantine.c.id, quarantine.c.device_id, quarantine.c.size)
            .where(quarantine.c.code == code))).all())


async def metric(server, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{want}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# -- 1. a decompression bomb -------------------------------------------------------------------


async def test_a_decompression_bomb_is_refused_before_it_is_inflated(server, provision) -> None:
    """Before: a ``sync`` for a new random id carrying one compressed change chunk of zeros
    was inflated before any check; a 261 KB frame took the server from 83 to 853 MiB and
    a 1 MB frame aborted it. Here: 200 MiB of zeros deflated into a ~200 KB chunk, sent by
    an ``ops`` device, is refused with ``limit-exceeded`` without being inflated (the
    server's peak memory barely moves), quarantined once however often it is sent, and
    the server goes on serving a worker."""
    ops = await provision.tablet("ops-1", role="ops")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(bytes(200 * 1024 * 1024)) + deflate.flush()
    hid = new_household_id()
    frame = wire.Sync("ops", "server", hid, sync_message(changes=(chunk(2, bomb),)))
    measured = peak_rss_reset()
    before = rss_kib("VmRSS")
    for _ in range(3):
        async with raw_peer(server.url, ops) as peer:
            err = await refusal(peer, frame)
            assert (err.code, err.document_id) == (ErrorCode.LIMIT_EXCEEDED, hid)
            assert "inflated" in err.message
            await peer.expect_closed()
    if measured:
        assert rss_kib("VmHWM") - before < 64 * 1024  # KiB: it was never inflated
    assert len(await quarantined(server, "limit-exceeded")) == 1
    worker = await provision.tablet("ana")
    worker.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    assert (await SyncClient(worker, server.url).sync()).rejected == []


# -- 2. billions of Bloom-filter probes -------------------------------------------------------


async def test_a_bloom_filter_declaring_billions_of_probes_is_refused(server, provision) -> None:
    """Before: 15 bytes declaring 2^31-1 probes, in a ``sync`` for a household the device
    may read, made the binding ask for 8.6 GB and abort the server. Here a ``national``
    device sends them (and a filter with entries but no bits, which divides by zero in
    the binding): both are refused with a stable code, and the team goes on syncing."""
    hid, _, (ana,) = await active_household(server, provision)
    nat = await provision.tablet("nat-1", role="national")
    probes = uleb(1) + uleb(10) + uleb(2**31 - 1) + b"\xff\xff"
    no_bits = uleb(5) + uleb(0) + uleb(7)
    for bloom, code in ((probes, ErrorCode.LIMIT_EXCEEDED),
                        (no_bits, ErrorCode.MALFORMED_SYNC_DATA)):
        async with raw_peer(server.url, nat) as peer:
            err = await refusal(peer, wire.Sync(peer.peer_id, peer.server_id, hid,
                                                sync_message(haves=(bloom,))))
            assert (err.code, err.document_id) == (code, hid)
            await peer.expect_closed()
    with ana.edit(hid) as e:
        e.set_address("Str. Noua 1")
    assert (await SyncClient(ana, server.url).sync()).rejected == []


# -- 3. a long document id -------------------------------------------------------------------


async def test_a_huge_document_id_is_refused_before_it_is_parsed(server, provision) -> None:
    """Before: a ``request`` with a 300,000-character id froze the whole server for 22-24 s
    (id parsing is quadratic in the length and ran on the event loop). Here ids are
    measured before anything parses them: 200,000 characters (the test server's frame
    limit is 256 KiB) are ``limit-exceeded`` at the codec, 41 base58 characters are
    ``invalid-document-id`` before the binding sees them; the server answers the next
    device at once."""
    nat = await provision.tablet("nat-1", role="national")
    state = SyncState()
    first = Document().generate_sync_message(state)
    assert first is not None
    for doc_id, code in (("2" * 200_000, ErrorCode.LIMIT_EXCEEDED),
                         ("2" * 41, ErrorCode.INVALID_DOCUMENT_ID)):
        async with raw_peer(server.url, nat) as peer:
            err = await refusal(peer, wire.encode(wire.Request(peer.peer_id, peer.server_id,
                                                               doc_id, first.encode())))
            assert err.code == code
            await peer.expect_closed()
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as r:
        assert r.status == 200


# -- 4. filling the disk through the quarantine ------------------------------------------------


async def test_the_quarantine_keeps_each_refusal_once_and_within_quotas(
        database_url, tmp_path) -> None:
    """Before: a read-only device re-sent one refused 2.7 MiB batch 100 times and every
    copy was stored (276 MiB in 11 s, ~85 GiB an hour from one session). Here a
    ``national`` device sends one refused write ten times: it is kept once. Then it sends
    five different refused writes under a quota of three rows per device: three are kept,
    the others are still answered ``read-only`` and audited but not stored, and the
    operator's counter says why."""
    from conftest import TEST_MASTER_KEY as key

    from sync_server.config import Settings

    settings = Settings(database_url=database_url, data_dir=tmp_path / "srv", port=0,
                        max_frame_bytes=256 * 1024, master_key=key,
                        quarantine=Quotas(device_rows=3))
    async with VatraServer(settings) as server:
        p = Provisioner(server.app[IDENTITY], server.http_url, server.app[SYNCHRONIZER])

        class Prov(Provisioner):
            async def tablet(self, name, user_id=None, **kw):  # type: ignore[override]
                return await super().tablet(tmp_path / name, user_id or name, **kw)

        hid, _, (_ana, nat) = await active_household(
            server, Prov(p.identity, p.http_url, p.synchronizer), ("nat-1", {"role": "national"}))
        dup_before = await metric(server, "vatra_quarantine_dropped_total", reason="duplicate")
        rows_before = await metric(server, "vatra_quarantine_dropped_total",
                                   reason="device-rows")

        def write(n: int) -> bytes:
            doc = nat.household(hid).doc.fork()
            with doc.transaction() as tx:
                tx.put(ROOT, "address", ScalarType.Str, f"Str. Falsa {n}")
            return changes_only(nat.household(hid).doc, doc)

        async with raw_peer(server.url, nat) as peer:
            same = write(0)
            for _ in range(10):
                err = await refusal(peer, wire.Sync(peer.peer_id, peer.server_id, hid, same))
                assert err.code == ErrorCode.READ_ONLY
            assert len(await quarantined(server, "read-only")) == 1
            assert await metric(server, "vatra_quarantine_dropped_total",
                                reason="duplicate") - dup_before == 9
            for n in range(1, 6):
                err = await refusal(peer, wire.Sync(peer.peer_id, peer.server_id, hid, write(n)))
                assert err.code == ErrorCode.READ_ONLY
        assert len(await quarantined(server, "read-only")) == 3
        assert await metric(server, "vatra_quarantine_dropped_total",
                            reason="device-rows") - rows_before == 3
        async with server.app[STORE]._engine.connect() as conn:
            refused = (await conn.execute(sa.text(
                "SELECT count(*) FROM audit WHERE kind = 'batch-refused'"))).scalar_one()
        assert refused == 15  # every refusal is audited, kept or not


def own_fork(replica, doc: Document) -> Document:
    """A copy of ``doc`` that writes as the replica's registered actor."""
    fork = doc.fork()
    fork.set_actor(replica.actor_id)
    return fork


def changes_only(base: Document, edited: Document) -> bytes:
    """A sync message carrying exactly ``edited``'s changes since ``base`` (V1)."""
    return sync_message(changes=tuple(c.raw_bytes for c in edited.get_changes(base.get_heads())))


# -- 5. revocation is a barrier ----------------------------------------------------------------


async def test_a_handshake_held_open_across_revocation_gets_no_session(server, provision) -> None:
    """Before: a stolen device key opened a handshake (``hello``, got ``welcome``), held back
    ``auth`` while the admin revoked the device, then sent ``auth`` with a ``join`` and a
    ``request`` right behind it, got a full session, read and wrote. The revoked flag had
    been read once, at ``hello``. Here the thief gets the sealed ``device-revoked`` notice
    and the close, and not one frame of household data."""
    hid, _, (ana,) = await active_household(server, provision)
    creds = ana.credentials
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        channel = ClientChannel(ws)
        hs = ClientHandshake(creds.device_id, creds.signing_key, creds.server_key)
        await channel.send(hs.hello())
        welcome = await channel.receive()
        assert welcome is not None
        assert await server.app[IDENTITY].revoke_device(creds.device_id)
        await asyncio.sleep(0.2)  # the revocation is long committed when auth arrives
        auth, keys = hs.on_welcome(welcome)
        await channel.send(auth)
        secure = SecureChannel(channel, keys)
        state = SyncState()
        ask = Document().generate_sync_message(state)
        await secure.send(wire.encode(wire.Join("thief")))
        await secure.send(wire.encode(wire.Request("thief", "server", hid, ask.encode())))
        opener = FrameOpener(keys.receive)
        seen = []
        while (frame := await asyncio.wait_for(channel.receive(), 10)) is not None:
            plain = opener.open(frame)
            msg = cbor2.loads(plain)
            seen.append(msg.get("type") if msg.get("type") != "error" else msg.get("code"))
    assert "device-revoked" in seen
    assert not {"peer", "sync", "doc-unavailable"} & set(seen), seen


async def test_a_revocation_whose_notification_is_lost_still_cuts_within_a_second(
        server, provision) -> None:
    """The live cut used to rest on one ``LISTEN`` connection alone: a notification lost
    with it (a database restart) left revoked devices syncing. Here the device is revoked
    by an UPDATE that sends no notification at all; the server's sweep of live sessions
    still cuts it with ``device-revoked``."""
    ana = await provision.tablet("ana")
    creds = ana.credentials
    async with joined(server, ana) as channel:
        async with server.app[STORE]._engine.begin() as conn:
            await conn.execute(sa.text("UPDATE devices SET revoked_at = now() WHERE id = :d"),
                               {"d": creds.device_id})
        err = wire.decode(await asyncio.wait_for(channel.receive(), timeout=10))
        assert isinstance(err, wire.Error) and err.code == "device-revoked"
        assert await asyncio.wait_for(channel.receive(), timeout=10) is None


async def test_revoking_a_revoked_device_says_so_and_cuts_again(
        server, provision, database_url, tmp_path) -> None:
    """``vatra device revoke`` of a device revoked already used to print "no active
    device" and exit 1 without telling any server. Now it says when it was revoked, exits
    0, and notifies every server again."""
    ana = await provision.tablet("ana")
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY,
           "VATRA_DATA_DIR": str(tmp_path / "cli")}

    def revoke(device_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sync_server.cli", "device", "revoke",
                               device_id], env=env, capture_output=True, text=True, timeout=120)

    first = await asyncio.to_thread(revoke, ana.credentials.device_id)
    second = await asyncio.to_thread(revoke, ana.credentials.device_id)
    assert first.returncode == 0 and "revoked; its live sessions are cut" in first.stdout
    assert second.returncode == 0 and "was revoked already" in second.stdout
    missing = await asyncio.to_thread(revoke, "dev-nosuchdevice")
    assert missing.returncode == 1 and "no device" in missing.stdout


# -- 6. a household cannot move -----------------------------------------------------------------


async def test_a_household_moves_only_by_an_approved_request(server, provision) -> None:
    """Before: a worker's raw change set ``county`` and ``locality`` of an active
    household and was accepted; the county's supervisor could then no longer approve its
    requests (``decision-field``) while the read API still showed the old county. Here the
    raw change is refused (``protected-path``, quarantined), in registration too; a
    ``move_household`` request approved by the supervisor of the household's county moves
    it: the document, the registry, the projection and who may approve all follow."""
    hid, _, (ana,) = await active_household(server, provision)
    sup_cj = await provision.tablet("sup-cj", role="supervisor", county="CJ")
    sup_b = await provision.tablet("sup-b", role="supervisor", county="B")

    base = ana.household(hid).doc
    moved = own_fork(ana, base)
    with moved.transaction() as tx:
        tx.put(ROOT, "county", ScalarType.Str, "B")
        tx.put(ROOT, "locality", ScalarType.Str, "179132")
    async with raw_peer(server.url, ana) as peer:
        err = await refusal(peer, wire.Sync(peer.peer_id, peer.server_id, hid,
                                            changes_only(base, moved)))
        assert err.code == ErrorCode.PROTECTED_PATH and "county" in err.message
    assert len(await quarantined(server, "protected-path")) == 1

    young = ana.create_household(locality="54975", county="CJ", address="Str. Noua 2")  # status: registration
    await SyncClient(ana, server.url).sync()
    base = ana.household(young.household_id).doc
    moved = own_fork(ana, base)
    with moved.transaction() as tx:
        tx.put(ROOT, "locality", ScalarType.Str, "55000")
    async with raw_peer(server.url, ana) as peer:
        err = await refusal(peer, wire.Sync(peer.peer_id, peer.server_id, young.household_id,
                                            changes_only(base, moved)))
        assert err.code == ErrorCode.PROTECTED_PATH

    with ana.edit(hid) as e:
        rid = e.request_change("move_household", {"locality": "179132", "county": "B"},
                               "the family moved to Bucharest")
    await SyncClient(ana, server.url).sync()
    assert (await SupervisorClient(sup_cj, server.http_url).approve(hid, rid))["changed"]

    async with server.app[STORE]._engine.connect() as conn:
        row = (await conn.execute(sa.select(households.c.locality, households.c.county)
                                  .where(households.c.id == hid))).one()
    assert tuple(row) == ("179132", "B")
    await SyncClient(ana, server.url).sync()
    assert (ana.household(hid).locality, ana.household(hid).county) == ("179132", "B")
    await server.app[PROJECTOR].drain_all()
    async with server.app[STORE]._engine.connect() as conn:
        proj = (await conn.execute(sa.select(proj_households.c.county)
                                   .where(proj_households.c.household_id == hid))).scalar_one()
    assert proj == "B"
    sup_b.track(hid)
    assert (await SyncClient(sup_b, server.url).sync()).unavailable == []
    sup_cj.track(hid)
    assert (await SyncClient(sup_cj, server.url).sync()).unavailable == [hid]


# -- 8. replaying a signed HTTP request ---------------------------------------------------------


async def test_a_signed_request_cannot_be_replayed_after_a_restart_or_elsewhere(
        server, provision) -> None:
    """Before: a captured, signed profile read or request rejection, refused when replayed
    to the same process, was accepted after ``vatra serve`` restarted (the replay guard
    was in memory). Here the nonce is claimed in PostgreSQL: the replay is refused by a
    second instance on the same database and by the first one restarted."""
    sup = await provision.tablet("sup-cj", role="supervisor", county="CJ")
    creds = sup.credentials
    path = "/v1/requests?status=pending"
    header = sign(creds.device_id, creds.signing_key, "GET", path)

    async def send(base: str) -> int:
        async with aiohttp.ClientSession() as http, http.get(
                base + path, headers={"Authorization": header}) as r:
            return r.status

    assert await send(server.http_url) == 200
    assert await send(server.http_url) == 401
    other = dataclasses.replace(server.settings, port=0, data_dir=server.settings.data_dir)
    async with VatraServer(other) as second:
        assert await send(second.http_url) == 401
    await server.stop()
    await server.start()
    assert await send(server.http_url) == 401
    fresh = sign(creds.device_id, creds.signing_key, "GET", path)
    async with aiohttp.ClientSession() as http, http.get(
            server.http_url + path, headers={"Authorization": fresh}) as r:
        assert r.status == 200


# -- 9. a panic inside Automerge ----------------------------------------------------------------


def panicking_message(base: Document, edited: Document) -> bytes:
    """A sync message carrying ``edited``'s own change, mutated with its checksum
    recomputed, that makes the binding panic when applied to ``base`` (found by a seeded
    search, checked here on a copy so the vector cannot go stale)."""
    raw = edited.get_changes(base.get_heads())[0].raw_bytes
    rng = random.Random(7)
    for _ in range(5000):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(12, len(b))] = rng.randrange(256)
        try:
            msg = sync_message(changes=(rechecksum(bytes(b)),))
        except ValueError:  # the mutation broke the chunk's own header
            continue
        try:
            base.fork().receive_sync_message(SyncState(), Message.decode(msg))
        except Exception:
            continue
        except BaseException as exc:
            if type(exc).__name__ == "PanicException":
                return msg
            raise
    raise AssertionError("no mutation made the binding panic")


async def test_an_automerge_panic_is_a_refusal_not_a_silent_loss(server, provision,
                                                                   caplog) -> None:
    """Before: a worker's own change, mutated with a recomputed checksum, made the binding
    panic inside the server. A Rust panic is a BaseException, so it escaped Vatra's error
    handling: the frame got no answer and the messages queued behind it for that
    household on that connection were dropped without a word. Here it is refused like
    any malformed sync data (``malformed-sync-data``, quarantined, connection closed so
    the device resyncs), nothing of it merges, and the device's next session works."""
    hid, _, (ana,) = await active_household(server, provision)
    base = ana.household(hid).doc
    edited = own_fork(ana, base)
    with edited.transaction() as tx:
        tx.put(ROOT, "address", ScalarType.Str, "Str. Mutata 1")
    msg = panicking_message(base, edited)
    heads = sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads())
    async with raw_peer(server.url, ana) as peer:
        await peer.send(wire.Sync(peer.peer_id, peer.server_id, hid, msg))
        follow = Document().generate_sync_message(SyncState())
        await peer.send(wire.Sync(peer.peer_id, peer.server_id, hid, follow.encode()))
        err = await peer.receive()
        assert isinstance(err, wire.Error), err
        assert (err.code, err.document_id) == (ErrorCode.MALFORMED_SYNC_DATA, hid)
        await peer.expect_closed()
    assert "Automerge panicked" in caplog.text  # the server's binding did panic
    assert sorted(server.app[SYNCHRONIZER].registry.resident(hid).doc.get_heads()) == heads
    assert len(await quarantined(server, "malformed-sync-data")) == 1
    with ana.edit(hid) as e:
        e.set_address("Str. Buna 2")
    assert (await SyncClient(ana, server.url).sync()).rejected == []


# -- 7. one answer for "no" and "no such household" ----------------------------------------------


async def test_every_refusal_for_a_hidden_household_is_the_one_for_an_unknown_id(
        server, provision) -> None:
    """Before: for a worker of another county, a ``sync`` for an existing household was
    answered ``doc-unavailable`` while one for a missing id started a creation, so any
    enrolled device could learn which household ids exist. Here a hidden household, an
    erased one and an unknown id get the same bytes (the document id aside) for every
    message: a ``request``, an empty ``sync``, a ``sync`` whose changes are not a
    household, and one registering a household where the device may not."""
    hid, _, _ = await active_household(server, provision)
    gone, _, _ = await active_household(server, provision, tablet_prefix="b-")
    await server.app[STORE].erase_household(gone)
    other = await provision.tablet("sw-ag", "sw-ag", localities=[("13169", "AG")])
    unknown = new_household_id()

    # Each document is made once and loaded anew for every target: the same changes, the
    # same hashes (a change records the second it was made), so the answers may differ
    # only by what the server knows.
    junk = Document(actor_id=other.actor_id)
    with junk.transaction() as tx:
        tx.put(ROOT, "address", ScalarType.Str, "Str. Falsa 1")
    not_a_household = junk.save()
    from conflict import Household
    elsewhere = Household.create(locality="54975", county="CJ", address="Str. Alta 4",
                                 author="sw-ag", actor_id=other.actor_id,
                                 at="2026-01-01T00:00:00Z").doc.save()  # not her locality

    async def answers(target: str) -> list[list[bytes]]:
        """Every frame the server sends back, for each message kind, with the id masked."""
        out = []
        for kind, doc in ((wire.Request, Document()), (wire.Sync, Document()),
                          (wire.Sync, Document.load(not_a_household)),
                          (wire.Sync, Document.load(elsewhere))):
            frames = []
            async with raw_peer(server.url, other, peer_id="probe") as peer:
                state = SyncState()
                first = doc.generate_sync_message(state)
                await peer.send(kind(peer.peer_id, peer.server_id, target, first.encode()))
                while (frame := await peer.receive_frame()) is not None:
                    frames.append(cbor2.dumps({**cbor2.loads(frame), "documentId": "*"}))
                    msg = wire.decode(frame)
                    if not isinstance(msg, wire.Sync):
                        break
                    doc.receive_sync_message(state, Message.decode(msg.data))
                    reply = doc.generate_sync_message(state)
                    if reply is None:
                        break
                    await peer.send(wire.Sync(peer.peer_id, peer.server_id, target,
                                              reply.encode()))
            out.append(frames)
        return out

    expected = await answers(unknown)
    kinds = [[cbor2.loads(f)["type"] + ":" + str(cbor2.loads(f).get("code", "")) for f in fs]
             for fs in expected]
    assert kinds == [["doc-unavailable:"], ["sync:"], ["sync:", "error:not-a-household"],
                     ["sync:", "error:creation-refused"]]
    assert await answers(hid) == expected
    assert await answers(gone) == expected


# -- found by the fuzzing suite ---------------------------------------------------------------


async def test_a_nul_in_a_household_id_of_an_approval_is_not_found(server, provision) -> None:
    """Found by the long fuzzing run: ``POST /v1/households/%00/requests/0/approve``,
    signed by a supervisor's device, answered ``500 Internal Server Error`` (the id went
    to PostgreSQL, whose text cannot hold NUL). Now any id that is not a household id is
    ``404``, like a household that does not exist."""
    sup = await provision.tablet("sup-cj", role="supervisor", county="CJ")
    creds = sup.credentials
    for hid in ("%00", "abc%00def", "x" * 200):
        path = f"/v1/households/{hid}/requests/0/approve"
        header = sign(creds.device_id, creds.signing_key, "POST", path, b"{}")
        async with aiohttp.ClientSession() as http, http.post(
                server.http_url + path, data=b"{}", headers={"Authorization": header}) as r:
            assert r.status == 404, await r.text()
            assert (await r.json())["code"] == "not-found"


# -- found in review ----------------------------------------------------------------------------


def non_canonical(base: Document, edited: Document) -> bytes:
    """``edited``'s one change with its action column re-encoded in a valid but
    non-canonical form (the repeat run ``02 01`` written as the literal run ``7e 01 01``)
    and its checksum recomputed."""
    raw = edited.get_changes(base.get_heads())[0].raw_bytes
    assert column(raw, 0x42) == bytes.fromhex("0201")
    return sync_message(changes=(with_column(raw, 0x42, bytes.fromhex("7e0101")),))


async def test_a_change_encoded_unlike_automerge_would_is_refused(server, provision) -> None:
    """Found in review: a writer's own change, one column re-encoded in a valid but
    non-canonical way and its checksum recomputed, passed every check and merged. The
    binding kept the received hash as a head but re-encodes the change when it saves, so
    the household could no longer be saved and loaded ("mismatching heads"): a fresh
    tablet failed to download it, and so would a snapshot and a restart. Now the heads
    the batch's changes imply are compared with the document's: refused, nothing merged,
    and a fresh tablet still downloads the household."""
    hid, _, (ana,) = await active_household(server, provision)
    base = ana.household(hid).doc
    edited = own_fork(ana, base)
    with edited.transaction() as tx:
        tx.put(ROOT, "address", ScalarType.Str, "Str. Noua 1")
        tx.put(ROOT, "notes_2", ScalarType.Str, "x")
    async with raw_peer(server.url, ana) as peer:
        err = await refusal(peer, wire.Sync(peer.peer_id, peer.server_id, hid,
                                            non_canonical(base, edited)))
        assert (err.code, err.document_id) == (ErrorCode.MALFORMED_SYNC_DATA, hid)
        assert "non-canonical" in err.message
    resident = server.app[SYNCHRONIZER].registry.resident(hid).doc
    Document.load(resident.save())  # still saves and loads
    fresh = await provision.tablet("fresh", "ana")
    fresh.track(hid)
    assert (await SyncClient(fresh, server.url).sync()).rejected == []
    assert fresh.household(hid).doc.get_heads() == resident.get_heads()


async def test_changes_waiting_for_a_missing_dependency_are_bounded(server, provision) -> None:
    """Found in review: changes whose dependency never comes were kept, per connection,
    in a fork waiting for it; twenty 3 MB messages of them raised the server's memory by
    86 MB, from a read-only device too (nothing applied, so no write check ran). Now a
    household's waiting messages are bounded (``HELD_BYTES``): past it they are dropped
    and the device told ``limit-exceeded``."""
    from sync_server.sync.apply import HELD_BYTES

    hid, _, (_ana, nat) = await active_household(server, provision,
                                                  ("nat-1", {"role": "national"}))
    elsewhere = Document()
    with elsewhere.transaction() as tx:
        tx.put(ROOT, "x", ScalarType.Int, 0)
    big = "y" * (200 * 1024)
    codes = []
    async with raw_peer(server.url, nat) as peer:
        for i in range(HELD_BYTES // len(big) + 5):
            orphan = elsewhere.fork()
            with orphan.transaction() as tx:
                tx.put(ROOT, "v", ScalarType.Str, big[i:])
            change = orphan.get_changes(elsewhere.get_heads())[0].raw_bytes
            await peer.send(wire.Sync(peer.peer_id, peer.server_id, hid,
                                      sync_message(changes=(change,))))
            msg = await peer.receive()
            if msg is None:
                break
            codes.append(msg.code if isinstance(msg, wire.Error) else msg.type)
            if isinstance(msg, wire.Error):
                break
    assert codes[-1] == ErrorCode.LIMIT_EXCEEDED
    assert set(codes[:-1]) == {"sync"}
