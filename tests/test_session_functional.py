"""Attacks on the E2E session over a real server socket (docs/security.md).

Each test opens a real session with an enrolled tablet's credentials
(``open_session`` over a :class:`client_sdk._transport.ClientChannel`), with a
:class:`RecordingChannel` in between that keeps the sealed bytes the session
writes, so they can be replayed, reordered, tampered with or cut short and
pushed into the raw WebSocket. The server refuses a frame it cannot open with
an ``error`` sealed in its own (still intact) direction, then closes the
connection with policy violation; the test reads that error with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import cbor2
import pytest
from aiohttp import WSCloseCode, WSMsgType
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from client_sdk import Replica, ServerRejected, SyncClient
from client_sdk._transport import ClientChannel
from sync_server.app import SERVER_KEY, VatraServer
from sync_server.protocol import wire
from sync_server.protocol.errors import ErrorCode
from sync_server.protocol.session import SecureChannel, SessionError, open_session

pytestmark = pytest.mark.functional

TIMEOUT = 10.0


class RecordingChannel:
    """A frame channel that records what crosses it; with ``hold`` set, frames the session
    sends are kept in ``held`` instead of going to the socket."""

    def __init__(self, inner: ClientChannel) -> None:
        self.inner = inner
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.held: list[bytes] = []
        self.hold = False

    async def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        if self.hold:
            self.held.append(frame)
        else:
            await self.inner.send(frame)

    async def receive(self) -> bytes | None:
        frame = await self.inner.receive()
        if frame is not None:
            self.received.append(frame)
        return frame

    async def close(self, reason: str) -> None:
        await self.inner.close(reason)


@dataclass
class Attack:
    ws: aiohttp.ClientWebSocketResponse
    wire_channel: RecordingChannel
    session: SecureChannel

    async def seal(self, message: wire.Message) -> bytes:
        """Seal ``message`` with the session's next counter without sending it."""
        self.wire_channel.hold = True
        try:
            await self.session.send(wire.encode(message))
        finally:
            self.wire_channel.hold = False
        return self.wire_channel.held.pop()

    async def receive(self) -> wire.Message | None:
        async with _timeout():
            frame = await self.session.receive()
        return None if frame is None else wire.decode(frame)

    async def refused_with(self, code: ErrorCode) -> wire.Error:
        """The server's sealed ``error`` with ``code``, then a policy-violation close."""
        msg = await self.receive()
        assert isinstance(msg, wire.Error), msg
        assert msg.code == code, msg
        assert msg.document_id is None
        async with _timeout():
            close = await self.ws.receive()
        # The close frame repeats the code, and it is not sealed: a network observer sees it.
        assert close.type is WSMsgType.CLOSE and close.extra == str(code), close
        assert self.ws.close_code == WSCloseCode.POLICY_VIOLATION
        return msg


def _timeout() -> asyncio.Timeout:
    return asyncio.timeout(TIMEOUT)


@contextlib.asynccontextmanager
async def attack(server: VatraServer, replica: Replica) -> AsyncIterator[Attack]:
    creds = replica.credentials
    assert creds is not None
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        recording = RecordingChannel(ClientChannel(ws))
        session = await open_session(recording, creds.device_id, creds.signing_key,
                                     creds.server_key)
        yield Attack(ws, recording, session)


def join(replica: Replica) -> wire.Join:
    return wire.Join(replica.peer_id)


async def test_a_replayed_frame_closes_the_session_with_frame_replayed(server, provision) -> None:
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        await a.session.send(wire.encode(join(ana)))
        assert isinstance(await a.receive(), wire.Peer)
        sealed_join = a.wire_channel.sent[-1]
        await a.ws.send_bytes(sealed_join)  # the same sealed bytes, a second time
        err = await a.refused_with(ErrorCode.FRAME_REPLAYED)
        assert "counter 0, expected 1" in err.message


async def test_a_reordered_frame_closes_the_session_with_frame_reordered(server, provision) -> None:
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        first = await a.seal(join(ana))
        second = await a.seal(wire.Ephemeral(ana.peer_id, "2fiH6LVoDnXEUsYNHowu3UTBwJqk", b"x"))
        assert first[:8] == bytes(8) and second[:8] == (1).to_bytes(8, "big")
        await a.ws.send_bytes(second)  # the second frame first
        err = await a.refused_with(ErrorCode.FRAME_REORDERED)
        assert "counter 1, expected 0" in err.message


async def test_a_tampered_ciphertext_closes_the_session_with_frame_forged(server, provision) -> None:
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        sealed = bytearray(await a.seal(join(ana)))
        sealed[12] ^= 0x01  # one bit of the ciphertext, past the 8-byte counter
        await a.ws.send_bytes(bytes(sealed))
        await a.refused_with(ErrorCode.FRAME_FORGED)


async def test_a_tampered_counter_is_forged_too(server, provision) -> None:
    """The counter is the associated data: rewriting it to the expected value does not help."""
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        await a.session.send(wire.encode(join(ana)))
        assert isinstance(await a.receive(), wire.Peer)
        replay = bytearray(a.wire_channel.sent[-1])
        replay[7] = 1  # frame 0 relabelled as the expected frame 1
        await a.ws.send_bytes(bytes(replay))
        await a.refused_with(ErrorCode.FRAME_FORGED)


async def test_a_truncated_frame_closes_the_session_with_frame_truncated(server, provision) -> None:
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        sealed = await a.seal(join(ana))
        await a.ws.send_bytes(sealed[:8 + 16 - 1])  # shorter than counter + tag
        await a.refused_with(ErrorCode.FRAME_TRUNCATED)


async def test_a_frame_cut_short_but_longer_than_the_tag_is_forged(server, provision) -> None:
    """Only a frame too short to hold counter + tag is 'truncated'; one cut anywhere else
    fails authentication (what the server actually answers)."""
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        sealed = await a.seal(join(ana))
        await a.ws.send_bytes(sealed[:-1])
        await a.refused_with(ErrorCode.FRAME_FORGED)


async def test_the_session_still_works_when_nothing_is_injected(server, provision) -> None:
    """The control case: the same harness, honest frames, a normal join."""
    ana = await provision.tablet("ana")
    async with attack(server, ana) as a:
        await a.ws.send_bytes(await a.seal(join(ana)))
        peer = await a.receive()
        assert isinstance(peer, wire.Peer) and peer.target_id == ana.peer_id


async def test_a_device_key_that_does_not_match_its_enrollment_is_refused(server,
                                                                          provision) -> None:
    ana = await provision.tablet("ana")
    creds = ana.credentials
    assert creds is not None
    # Same device id, fresh keys: what someone who knows the id but not the key can do.
    ana.store_credentials(dataclasses.replace(creds, signing_key=SigningKey.generate(),
                                              exchange_key=PrivateKey.generate()))
    forged = ana.credentials
    assert forged is not None and forged.device_id == creds.device_id

    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        recording = RecordingChannel(ClientChannel(ws))
        with pytest.raises(SessionError) as refused:
            await open_session(recording, forged.device_id, forged.signing_key,
                               forged.server_key)
        assert refused.value.code is ErrorCode.HANDSHAKE_FAILED
        # The refusal travels in plaintext (no session exists) and says nothing more.
        answer = cbor2.loads(recording.received[-1])
        assert answer == {"type": "error", "code": "handshake-failed",
                          "message": "handshake: the device's signature does not verify"}
        async with _timeout():
            close = await ws.receive()
        assert close.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), close
        assert ws.close_code == WSCloseCode.POLICY_VIOLATION

    with pytest.raises(ServerRejected) as rejected:
        await SyncClient(ana, server.url, max_attempts=1).sync()
    assert rejected.value.code == "handshake-failed"

    # The genuine key still opens a session: the failed attempts locked nothing.
    ana.store_credentials(creds)
    await SyncClient(ana, server.url, max_attempts=1).sync()


async def test_an_unknown_device_id_gets_the_same_refusal(server, provision) -> None:
    ana = await provision.tablet("ana")
    creds = ana.credentials
    assert creds is not None
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        recording = RecordingChannel(ClientChannel(ws))
        with pytest.raises(SessionError) as refused:
            await open_session(recording, "dev-doesnotexist", creds.signing_key,
                               creds.server_key)
        assert refused.value.code is ErrorCode.HANDSHAKE_FAILED
        assert cbor2.loads(recording.received[-1]) == {
            "type": "error", "code": "handshake-failed",
            "message": "handshake: the device's signature does not verify"}


async def test_the_pinned_server_key_detects_an_impostor_server(server, provision,
                                                                 tmp_path) -> None:
    ana = await provision.tablet("ana")
    ana.create_household(locality="54975", county="CJ", address="Str. Lunga 1", team={"social_worker": "ana"})
    # Same database, same master key, same enrolled devices: everything but the
    # server's private identity key, which stays in the real server's data dir.
    settings = dataclasses.replace(server.settings, port=0, data_dir=tmp_path / "impostor")
    async with VatraServer(settings) as impostor:
        assert bytes(impostor.app[SERVER_KEY].verify_key) != bytes(
            server.app[SERVER_KEY].verify_key)
        with pytest.raises(ServerRejected) as rejected:
            await SyncClient(ana, impostor.url, max_attempts=1).sync()
        assert rejected.value.code == "handshake-failed"
        assert "pinned server key" in rejected.value.message
    # The genuine server is still accepted, and nothing reached the impostor's side.
    summary = await SyncClient(ana, server.url, max_attempts=1).sync()
    assert summary.households_synced == 1 and not summary.rejected


async def test_a_peer_that_stops_answering_pings_is_gone_not_oversized(
        database_url, tmp_path, caplog) -> None:
    """Before: ``channel.py`` reported every error aiohttp surfaced as ``frame-too-large``,
    so a dead connection (no pong to the heartbeat) was logged, audited and answered as an
    oversized frame. Reproduced with a one-second heartbeat and a client that answers no
    ping. Now the server treats the peer as gone: it closes the connection without an
    error frame and nothing says ``frame-too-large``."""
    import logging

    import sqlalchemy as sa
    from conftest import TEST_MASTER_KEY

    from sync_server.app import IDENTITY, STORE, VatraServer
    from sync_server.config import Settings
    from vatra_devtools.provision import Provisioner

    settings = Settings(database_url=database_url, data_dir=tmp_path / "srv", port=0,
                        master_key=TEST_MASTER_KEY, heartbeat_seconds=1)
    caplog.set_level(logging.INFO)
    async with VatraServer(settings) as server:
        ana = await Provisioner(server.app[IDENTITY], server.http_url).tablet(
            tmp_path / "ana", "ana")
        creds = ana.credentials
        async with aiohttp.ClientSession() as http, http.ws_connect(
                server.url, autoping=False) as ws:
            channel = await open_session(ClientChannel(ws), creds.device_id,
                                         creds.signing_key, creds.server_key)
            await channel.send(wire.encode(wire.Join("silent")))
            assert isinstance(wire.decode(await channel.receive()), wire.Peer)
            frames = []
            while True:  # read (pings arrive, unanswered) until the server hangs up
                msg = await asyncio.wait_for(ws.receive(), timeout=20)
                if msg.type is aiohttp.WSMsgType.BINARY:
                    frames.append(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    break
            assert frames == []  # no error frame: nobody is there to read it
        async with server.app[STORE].engine.connect() as conn:
            codes = (await conn.execute(sa.text(
                "SELECT detail->>'code' FROM audit WHERE kind = 'session-closed'"))).scalars()
            assert "frame-too-large" not in list(codes)
    assert "frame-too-large" not in caplog.text
    assert "peer connection lost" in caplog.text
