"""A raw automerge-repo peer for functional tests, speaking through a real session.

``raw_peer(url, replica)`` opens a WebSocket, runs the Vatra session handshake
with the enrolled ``replica``'s credentials (``open_session`` over a
:class:`client_sdk._transport.ClientChannel`), and by default sends ``join``.
Every message then travels sealed, exactly as a real tablet's; the peer keeps
the :class:`SecureChannel` and records the plaintext of every frame it sent.

Bad input that must bypass the codec (malformed CBOR, oversized frames) goes
through :meth:`RawPeer.send_frame`: those bytes become the plaintext of one
sealed frame. What must not be sealed at all (a text frame, a frame before or
instead of the handshake) goes to ``peer.ws`` directly. ``raw_peer(url, None)``
skips the handshake altogether: frames then cross the socket in plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSCloseCode, WSMsgType
from automerge.core import Document, Message, SyncState

from client_sdk import Replica
from client_sdk._transport import ClientChannel
from sync_server.protocol import wire
from sync_server.protocol.channel import FrameChannel
from sync_server.protocol.session import SecureChannel, open_session

TIMEOUT = 10.0


@dataclass
class RawPeer:
    ws: aiohttp.ClientWebSocketResponse
    #: The session's sealed channel, or the plain socket for a peer that skipped the handshake.
    channel: FrameChannel
    peer_id: str
    server_id: str = "unknown-server"
    #: Plaintext of every frame sent through ``channel``, in order (join included).
    sent: list[bytes] = field(default_factory=list)
    #: Plaintext of the last frame received.
    last_frame: bytes = b""

    @property
    def session(self) -> SecureChannel | None:
        return self.channel if isinstance(self.channel, SecureChannel) else None

    async def send_frame(self, frame: bytes) -> None:
        """Send ``frame`` as it is (through the session: as the plaintext of one sealed frame)."""
        self.sent.append(frame)
        await self.channel.send(frame)

    async def send(self, message: wire.Message) -> None:
        await self.send_frame(wire.encode(message))

    async def receive_frame(self) -> bytes | None:
        """The plaintext of the next frame, or ``None`` once the server closed the connection."""
        frame = await asyncio.wait_for(self.channel.receive(), TIMEOUT)
        if frame is not None:
            self.last_frame = frame
        return frame

    async def receive(self) -> wire.Message | None:
        """The next message, or ``None`` once the server closed the connection."""
        frame = await self.receive_frame()
        return None if frame is None else wire.decode(frame)

    async def join(self) -> None:
        await self.send(wire.Join(self.peer_id))
        peer = await self.receive()
        assert isinstance(peer, wire.Peer), peer
        assert peer.target_id == self.peer_id
        self.server_id = peer.sender_id

    async def push(self, doc: Document, hid: str, state: SyncState | None = None,
                   kind: type[wire.Sync] = wire.Sync, *,
                   strict: bool = True) -> wire.Message | None:
        """Run the sync protocol for ``doc`` until the server advertises exactly its heads.

        Returns the last message received: the converged ``sync``, or (with
        ``strict=False``) the ``error``/``doc-unavailable``/other message, or ``None``
        (closed), that stopped it. With ``strict`` anything but a ``sync`` for
        ``hid`` fails the test."""
        state = state if state is not None else SyncState()
        first = doc.generate_sync_message(state)
        assert first is not None
        await self.send(kind(self.peer_id, self.server_id, hid, first.encode()))
        return await self.follow(doc, hid, state, strict=strict)

    async def follow(self, doc: Document, hid: str, state: SyncState,
                     want: list[bytes] | None = None, *,
                     strict: bool = True) -> wire.Message | None:
        """Answer the server's sync messages until it and ``doc`` agree (on ``want``)."""
        while True:
            msg = await self.receive()
            if not isinstance(msg, wire.Sync) or msg.document_id != hid:
                assert not strict, msg
                return msg
            doc.receive_sync_message(state, Message.decode(msg.data))
            server_heads = sorted(wire.sync_message_heads(msg.data))
            if server_heads == sorted(doc.get_heads()) and (
                    want is None or server_heads == sorted(want)):
                return msg
            reply = doc.generate_sync_message(state)
            if reply is not None:
                await self.send(wire.Sync(self.peer_id, self.server_id, hid, reply.encode()))

    async def expect_closed(self) -> None:
        """The server closes this connection (policy violation), sending nothing more."""
        msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
        assert self.ws.close_code == WSCloseCode.POLICY_VIOLATION
        assert await self.receive_frame() is None


@contextlib.asynccontextmanager
async def raw_peer(url: str, replica: Replica | None, *, join: bool = True,
                   peer_id: str | None = None,
                   max_msg_size: int = 4 * 1024 * 1024) -> AsyncIterator[RawPeer]:
    """A connected peer. With an enrolled ``replica``: a session with its credentials, then
    (``join``) the automerge-repo ``join``. With ``None``: no handshake, plaintext frames."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url, max_msg_size=max_msg_size) as ws:
        channel: FrameChannel = ClientChannel(ws)
        if replica is not None:
            creds = replica.credentials
            assert creds is not None, "enroll the replica first (provision.tablet)"
            channel = await open_session(channel, creds.device_id, creds.signing_key,
                                         creds.server_key)
        peer = RawPeer(ws, channel, peer_id or "raw-" + uuid.uuid4().hex[:8])
        if join:
            await peer.join()
        yield peer
