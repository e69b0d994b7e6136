"""Bad input from one peer is answered and closes only that peer.

Every case below connects a raw aiohttp WebSocket client to a real server,
opens an end-to-end session with an enrolled teammate's tablet (except the
case that skips the session), joins properly (except the case that is about
joining), sends one bad thing and expects an ``error`` with the right
:class:`ErrorCode` (or ``doc-unavailable``) followed by a close of that
connection alone. Malformed bytes travel as the plaintext of a sealed frame,
so they reach the codec exactly as a buggy tablet's would. Meanwhile a
well-behaved, enrolled :class:`client_sdk.SyncClient` syncs before and after,
and an enrolled bystander raw connection that is subscribed to the same
household keeps receiving the fan-out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import cbor2
import pytest
from _rawpeer import RawPeer, raw_peer
from automerge._automerge import DocumentId
from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from client_sdk import Replica, SyncClient
from conflict import Household, new_household_id
from sync_server.protocol import wire
from sync_server.protocol.errors import ErrorCode

pytestmark = pytest.mark.functional

#: Household content used by the tests; none of it may ever appear in an error frame.
CONTENT = ("Str. Lunga 3", "Ana", "Popescu", "Bd. Eroilor 12", "gate code 4711")


# -- documents -------------------------------------------------------------------------------


def not_a_household(actor_id: bytes) -> Document:
    """A document a buggy client might produce: members keyed by name, address a number.

    Its changes carry ``actor_id`` (the sending device's registered one), so that what is
    wrong with it is its content, nothing else."""
    doc = Document(actor_id=actor_id)
    with doc.transaction() as tx:
        tx.put(ROOT, "schema", ScalarType.Uint, 1)
        tx.put(ROOT, "address", ScalarType.Int, 12)
        tx.put(ROOT, "Bd. Eroilor 12", ScalarType.Str, "gate code 4711")
        members = tx.put_object(ROOT, "members", ObjType.Map)
        ana = tx.put_object(members, "Ana Popescu", ObjType.Map)
        tx.put(ana, "first_name", ScalarType.Str, "Ana")
        tx.put(ana, "last_name", ScalarType.Str, "Popescu")
    return doc


def changes_message(doc: Document) -> bytes:
    """A real sync message that carries all of ``doc``'s changes (the second of a handshake)."""
    ours, theirs = SyncState(), SyncState()
    empty = Document()
    first = doc.generate_sync_message(ours)
    assert first is not None
    empty.receive_sync_message(theirs, first)
    answer = empty.generate_sync_message(theirs)
    assert answer is not None
    doc.receive_sync_message(ours, answer)
    second = doc.generate_sync_message(ours)
    assert second is not None
    return second.encode()


def uuid_spelling(hid: str) -> str:
    raw = bytes(DocumentId.from_string(hid).to_bytes())
    return str(uuid.UUID(bytes=raw))


# -- the bad inputs --------------------------------------------------------------------------


@dataclass
class Ctx:
    server_url: str
    good_hid: str
    good_doc: Document
    actor_id: bytes  # registered to the device the bad peer's session belongs to


Send = Callable[[RawPeer, Ctx], Awaitable[None]]


async def send_raw(peer: RawPeer, frame: bytes) -> None:
    """``frame`` as the plaintext of one sealed frame: past the session, straight to the codec."""
    await peer.send_frame(frame)


async def bad_truncated_cbor(peer: RawPeer, ctx: Ctx) -> None:
    await send_raw(peer, wire.encode(wire.Sync(peer.peer_id, peer.server_id, ctx.good_hid,
                                               b"\x42\x00"))[:-5])


async def bad_not_cbor(peer: RawPeer, ctx: Ctx) -> None:
    await send_raw(peer, b"\xff\xfe GET / HTTP/1.1\r\n")


async def bad_cbor_not_a_map(peer: RawPeer, ctx: Ctx) -> None:
    await send_raw(peer, cbor2.dumps(["sync", ctx.good_hid]))


async def bad_field_types(peer: RawPeer, ctx: Ctx) -> None:
    await send_raw(peer, cbor2.dumps({"type": "sync", "senderId": peer.peer_id,
                                      "targetId": peer.server_id, "documentId": ctx.good_hid,
                                      "data": "not bytes"}))


async def bad_unknown_type(peer: RawPeer, ctx: Ctx) -> None:
    await send_raw(peer, cbor2.dumps({"type": "gossip", "senderId": peer.peer_id,
                                      "documentId": ctx.good_hid, "data": b"\x00"}))


async def bad_server_only_type(peer: RawPeer, ctx: Ctx) -> None:
    await peer.send(wire.Peer(peer.peer_id, peer.server_id))


async def bad_document_id(peer: RawPeer, ctx: Ctx) -> None:
    data = ctx.good_doc.generate_sync_message(SyncState()).encode()
    await peer.send(wire.Sync(peer.peer_id, peer.server_id, "../households/1", data))


async def bad_uuid_document_id(peer: RawPeer, ctx: Ctx) -> None:
    """automerge-repo parses a UUID spelling too; Vatra spells a household id one way only."""
    data = ctx.good_doc.generate_sync_message(SyncState()).encode()
    await peer.send(wire.Sync(peer.peer_id, peer.server_id, uuid_spelling(ctx.good_hid), data))


async def bad_truncated_sync_known(peer: RawPeer, ctx: Ctx) -> None:
    data = changes_message(ctx.good_doc)
    await peer.send(wire.Sync(peer.peer_id, peer.server_id, ctx.good_hid, data[:len(data) // 2]))


async def bad_truncated_sync_unknown(peer: RawPeer, ctx: Ctx) -> None:
    fresh = Household.create(locality="54975", county="CJ", address="Bd. Eroilor 12",
                             author="sw-3", actor_id=ctx.actor_id)
    data = changes_message(fresh.doc)
    await peer.send(wire.Sync(peer.peer_id, peer.server_id, fresh.household_id, data[:-7]))


async def bad_too_large(peer: RawPeer, ctx: Ctx) -> None:
    """Sealed, the frame is over the server's 256 KiB limit; the server reads it through the
    session and answers (sealed) ``frame-too-large``."""
    data = b"\x42" + b"\x00" * (256 * 1024)
    await peer.send(wire.Sync(peer.peer_id, peer.server_id, ctx.good_hid, data))


async def bad_text_frame(peer: RawPeer, ctx: Ctx) -> None:
    """Not sealable: straight onto the socket, inside an open session."""
    await peer.ws.send_str('{"type": "join", "senderId": "x"}')


CLOSING_CASES: list[tuple[str, Send, ErrorCode]] = [
    ("truncated-cbor", bad_truncated_cbor, ErrorCode.MALFORMED_MESSAGE),
    ("not-cbor", bad_not_cbor, ErrorCode.MALFORMED_MESSAGE),
    ("cbor-not-a-map", bad_cbor_not_a_map, ErrorCode.MALFORMED_MESSAGE),
    ("field-types", bad_field_types, ErrorCode.MALFORMED_MESSAGE),
    ("unknown-type", bad_unknown_type, ErrorCode.UNKNOWN_MESSAGE_TYPE),
    ("server-only-type", bad_server_only_type, ErrorCode.UNKNOWN_MESSAGE_TYPE),
    ("malformed-document-id", bad_document_id, ErrorCode.INVALID_DOCUMENT_ID),
    ("uuid-document-id", bad_uuid_document_id, ErrorCode.INVALID_DOCUMENT_ID),
    ("truncated-sync-known-household", bad_truncated_sync_known,
     ErrorCode.MALFORMED_SYNC_DATA),
    ("truncated-sync-unknown-household", bad_truncated_sync_unknown,
     ErrorCode.MALFORMED_SYNC_DATA),
    ("frame-too-large", bad_too_large, ErrorCode.FRAME_TOO_LARGE),
    ("text-frame", bad_text_frame, ErrorCode.MALFORMED_MESSAGE),
]


# -- the well-behaved side -------------------------------------------------------------------


@dataclass
class Team:
    """A good device with one household on the server, a subscribed bystander, and the
    tablet of a third teammate whose credentials the misbehaving connections use (so that
    every refusal below is about the input, not about who sends it). All three enrolled."""

    replica: Replica
    hid: str
    bystander: RawPeer
    bystander_doc: Document
    bystander_state: SyncState
    mate: Replica

    async def device_edits_and_syncs(self, server_url: str, text: str) -> None:
        with self.replica.edit(self.hid) as h:
            h.append_activity("visit", text)
        summary = await SyncClient(self.replica, server_url).sync()
        assert summary.rejected == [] and summary.changes_sent == 1
        assert self.replica.is_saved(self.hid)

    async def bystander_catches_up(self) -> None:
        """The bystander receives the fan-out until it holds the device's heads."""
        want = sorted(self.replica.household(self.hid).doc.get_heads())
        while sorted(self.bystander_doc.get_heads()) != want:
            msg = await self.bystander.receive()
            assert isinstance(msg, wire.Sync), msg
            self.bystander_doc.receive_sync_message(self.bystander_state,
                                                    Message.decode(msg.data))
            reply = self.bystander_doc.generate_sync_message(self.bystander_state)
            if reply is not None:
                await self.bystander.send(wire.Sync(self.bystander.peer_id,
                                                    self.bystander.server_id, self.hid,
                                                    reply.encode()))


@pytest.fixture
async def team(server, provision) -> AsyncIterator[Team]:
    device = await provision.tablet("good", "sw-1")
    watcher = await provision.tablet("bystander", "sw-2")
    mate = await provision.tablet("mate", "sw-3")
    h = device.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    with device.edit(h.household_id) as hh:
        hh.add_member("Ana", "Popescu", "2015-04-01", "F", "child")
    summary = await SyncClient(device, server.url).sync()
    assert summary.changes_sent == 2 and device.is_saved(h.household_id)
    await provision.share(h.household_id, device, watcher, mate)
    await SyncClient(device, server.url).sync()  # (the team change, made on the server)
    async with raw_peer(server.url, watcher) as bystander:
        doc, state = Document(), SyncState()
        t = Team(device, h.household_id, bystander, doc, state, mate)
        await bystander.send(wire.Request(bystander.peer_id, bystander.server_id, t.hid,
                                          doc.generate_sync_message(state).encode()))
        await t.bystander_catches_up()
        yield t


def assert_no_content(peer: RawPeer, msg: wire.Message) -> None:
    text = peer.last_frame.decode("utf-8", errors="replace")
    assert isinstance(msg, wire.Error)
    for secret in CONTENT:
        assert secret not in msg.message
        assert secret not in text


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("send_bad", "code"), [c[1:] for c in CLOSING_CASES],
                         ids=[c[0] for c in CLOSING_CASES])
async def test_bad_input_is_answered_and_closes_only_that_connection(
        server, team: Team, send_bad: Send, code: ErrorCode) -> None:
    """One bad frame -> one ``error`` with the rule's code, then a policy-violation close of
    that socket alone: the bystander stays subscribed and the good device keeps syncing."""
    await team.device_edits_and_syncs(server.url, "before")
    await team.bystander_catches_up()
    async with raw_peer(server.url, team.mate) as bad:
        await send_bad(bad, Ctx(server.url, team.hid, team.replica.household(team.hid).doc,
                                team.mate.actor_id))
        msg = await bad.receive()
        assert isinstance(msg, wire.Error), msg
        assert msg.code == code
        assert_no_content(bad, msg)
        await bad.expect_closed()
    await team.device_edits_and_syncs(server.url, "after")
    await team.bystander_catches_up()


async def test_message_before_join_is_refused(server, team: Team) -> None:
    """A ``sync`` as the first message of an open session (no ``join``) gets
    ``handshake-required`` and a close: the session handshake does not replace ``join``."""
    async with raw_peer(server.url, team.mate, join=False) as bad:
        data = team.replica.household(team.hid).doc.generate_sync_message(SyncState()).encode()
        await bad.send(wire.Sync(bad.peer_id, "vatra", team.hid, data))
        msg = await bad.receive()
        assert isinstance(msg, wire.Error), msg
        assert msg.code == ErrorCode.HANDSHAKE_REQUIRED
        assert_no_content(bad, msg)
        await bad.expect_closed()
    await team.device_edits_and_syncs(server.url, "after")
    await team.bystander_catches_up()


async def test_a_second_join_is_handshake_required(server, team: Team) -> None:
    """Issue 15: a client written from docs/protocol.md alone sent ``join`` twice and got
    ``unknown-message-type``, where the docs say ``handshake-required``. It is now."""
    async with raw_peer(server.url, team.mate) as again:
        await again.send(wire.Join(again.peer_id))
        msg = await again.receive()
        assert isinstance(msg, wire.Error), msg
        assert msg.code == ErrorCode.HANDSHAKE_REQUIRED
        await again.expect_closed()
    await team.device_edits_and_syncs(server.url, "after")


async def test_a_join_naming_its_metadata_peer_metadata_gets_its_caseload(
        server, team: Team) -> None:
    """Issue 15: automerge-repo's WebSocket adapter sends ``peerMetadata`` in ``join``;
    the server read only ``metadata``, so a ``join`` with ``peerMetadata:
    {vatraCaseload: true}`` silently got no caseload. Both names are read, and ``peer``
    carries both."""
    async with raw_peer(server.url, team.mate, join=False) as repo:
        frame = cbor2.dumps({"type": "join", "senderId": repo.peer_id,
                             "supportedProtocolVersions": ["1"],
                             "peerMetadata": {"vatraCaseload": True}})
        await repo.send_frame(frame)
        peer = await repo.receive()
        assert isinstance(peer, wire.Peer), peer
        assert cbor2.loads(repo.last_frame)["peerMetadata"] == {"isEphemeral": False}
        caseload = await repo.receive()
        assert isinstance(caseload, wire.Caseload), caseload
        assert team.hid in caseload.document_ids


async def test_unknown_household_that_is_not_a_household_is_refused(server, team: Team,
                                                                    store) -> None:
    """A ``sync`` creating an unknown document whose changes are no valid household gets
    ``not-a-household`` for that document id, nothing is stored, and the error names
    neither values nor content-bearing keys (here: members keyed by a person's name)."""
    hid = new_household_id()
    async with raw_peer(server.url, team.mate) as bad:
        msg = await bad.push(not_a_household(team.mate.actor_id), hid, strict=False)
        assert isinstance(msg, wire.Error), msg
        assert msg.code == ErrorCode.NOT_A_HOUSEHOLD
        assert msg.document_id == hid
        assert_no_content(bad, msg)
        await bad.expect_closed()
    assert await store.household(hid) is None
    assert await store.change_count(hid) == 0
    await team.device_edits_and_syncs(server.url, "after")
    await team.bystander_catches_up()


async def test_request_for_unknown_household_is_doc_unavailable_and_keeps_the_connection(
        server, team: Team) -> None:
    """``request`` for a well-formed id the server does not know -> ``doc-unavailable``; the
    connection stays open and usable (the same socket then fetches a real household)."""
    unknown = new_household_id()
    async with raw_peer(server.url, team.mate) as peer:
        msg = await peer.push(Document(), unknown, kind=wire.Request, strict=False)
        assert isinstance(msg, wire.DocUnavailable), msg
        assert msg.document_id == unknown
        assert msg.target_id == peer.peer_id
        doc = Document()
        got = await peer.push(doc, team.hid, kind=wire.Request)
        assert isinstance(got, wire.Sync)
        assert sorted(doc.get_heads()) == sorted(team.replica.household(team.hid).doc.get_heads())
        assert Household(doc, team.hid).to_dict() == team.replica.household(team.hid).to_dict()
        await team.device_edits_and_syncs(server.url, "while open")
        await team.bystander_catches_up()
        assert not peer.ws.closed


async def test_a_client_that_skips_the_session_handshake_is_refused(server, team: Team) -> None:
    """A raw WebSocket client that sends an automerge-repo ``join`` in plaintext, with no
    session handshake, gets a plaintext ``error`` ``handshake-failed`` (no session exists to
    seal it) and a policy-violation close; nobody else notices."""
    async with raw_peer(server.url, None, join=False) as bad:
        await bad.send(wire.Join(bad.peer_id))
        frame = await bad.receive_frame()
        assert frame is not None
        refusal = cbor2.loads(frame)
        assert refusal["type"] == "error", refusal
        assert refusal["code"] == ErrorCode.HANDSHAKE_FAILED
        for secret in CONTENT:
            assert secret not in frame.decode("utf-8", errors="replace")
        await bad.expect_closed()
    await team.device_edits_and_syncs(server.url, "after")
    await team.bystander_catches_up()


async def test_another_teams_household_is_answered_as_if_it_did_not_exist(
        server, provision, team: Team) -> None:
    """A device of another team asking for a household gets, byte for byte, the answer
    for a household that does not exist: the same id asked for before and after the
    household was created on the server, and for the team's existing household the
    answer for an unknown id with the document id set to it. For a ``request`` that is
    ``doc-unavailable``; for a ``sync`` with nothing in it, the empty document's answer
    (an unknown id's ``sync`` is the start of a creation; answering a hidden household's
    with ``doc-unavailable`` instead told which ids exist). The connection stays open,
    and the household's fan-out never reaches it."""
    outsider = await provision.tablet("outsider", "sw-9")
    own = outsider.create_household(locality="54975", county="CJ", address="Str. Alta 9")
    assert (await SyncClient(outsider, server.url).sync()).rejected == []
    assert outsider.is_saved(own.household_id)  # on a team of its own

    later = team.replica.create_household(locality="54975", county="CJ",
                                          address="Str. Lunga 3")
    peer_id = "outsider-" + uuid.uuid4().hex[:8]  # the same on every connection below

    async def ask(hid: str, kind: type[wire.Sync] = wire.Request) -> bytes:
        msg = await peer.push(Document(actor_id=outsider.actor_id), hid, kind=kind,
                              strict=False)
        assert isinstance(msg, wire.DocUnavailable), msg
        assert msg.document_id == hid and msg.target_id == peer_id
        return peer.last_frame

    async with raw_peer(server.url, outsider, peer_id=peer_id) as peer:
        absent = await ask(later.household_id)
        unknown = new_household_id()
        absent_other = await ask(unknown)

    summary = await SyncClient(team.replica, server.url).sync()
    assert summary.rejected == [] and team.replica.is_saved(later.household_id)

    async def first_answer(hid: str) -> bytes:
        msg = await peer.push(Document(actor_id=outsider.actor_id), hid, strict=False)
        assert isinstance(msg, wire.Sync) and msg.document_id == hid, msg
        return peer.last_frame

    def with_id(frame: bytes, hid: str) -> bytes:
        return cbor2.dumps({**cbor2.loads(frame), "documentId": hid})

    async with raw_peer(server.url, outsider, peer_id=peer_id) as peer:
        assert await ask(later.household_id) == absent
        denied = await ask(team.hid)
        unknown_sync = await first_answer(new_household_id())
        assert await first_answer(later.household_id) == with_id(unknown_sync,
                                                                 later.household_id)
        assert await first_answer(team.hid) == with_id(unknown_sync, team.hid)
        template = wire.decode(absent_other)
        assert wire.encode(template) == absent_other
        assert denied == wire.encode(dataclasses.replace(template, document_id=team.hid))
        assert cbor2.loads(denied) == {**cbor2.loads(absent_other), "documentId": team.hid}

        await team.device_edits_and_syncs(server.url, "not for outsiders")
        await team.bystander_catches_up()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(peer.receive_frame(), 0.5)
        assert not peer.ws.closed
