"""Frames to and from the server over an aiohttp client WebSocket.

The same cut as the server's :mod:`sync_server.gateway.channel`: whole frames only,
so an encrypting session can wrap it without changing the sync logic.
"""

from __future__ import annotations

from aiohttp import ClientWebSocketResponse, WSMsgType

from sync_server.protocol.session import SecureChannel, open_session

from ._credentials import Credentials


class ClientChannel:
    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, frame: bytes) -> None:
        await self._ws.send_bytes(frame)

    async def receive(self) -> bytes | None:
        """The next binary frame, or ``None`` when the server closed the connection."""
        while True:
            msg = await self._ws.receive()
            if msg.type is WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                return None
            # TEXT/PING/PONG carry nothing for us

    async def close(self, reason: str = "") -> None:
        await self._ws.close()


class RepoTransport:
    """A ``Transport`` for the samod-based ``automerge.repo.Repo`` that talks to a Vatra server.

    ``await repo.connect(await RepoTransport.open(ws, credentials))`` makes a stock
    automerge-repo peer sync households with Vatra through the same end-to-end
    encrypted session the SDK uses (see ``tests/test_interop_functional.py``).
    """

    def __init__(self, channel: SecureChannel) -> None:
        self._channel = channel

    @classmethod
    async def open(cls, ws: ClientWebSocketResponse, credentials: Credentials) -> RepoTransport:
        channel = await open_session(ClientChannel(ws), credentials.device_id,
                                     credentials.signing_key, credentials.server_key)
        return cls(channel)

    async def send(self, msg: bytes) -> None:
        await self._channel.send(msg)

    async def recv(self) -> bytes:
        frame = await self._channel.receive()
        if frame is None:
            raise RuntimeError("connection closed")
        return frame

    async def close(self) -> None:
        await self._channel.close("")
