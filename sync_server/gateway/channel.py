"""The server side of a peer's WebSocket, as a :class:`~sync_server.protocol.channel.FrameChannel`."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from sync_server.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

#: Seconds to wait for the peer's half of the WebSocket close handshake.
CLOSE_TIMEOUT = 5.0


class WebSocketChannel:
    """Binary WebSocket frames on an aiohttp server-side socket.

    aiohttp's own limit is set above ``max_frame_bytes`` so that a frame just
    over the limit is read and answered with a clear ``error`` message, rather
    than cut by aiohttp with a bare close code.
    """

    def __init__(self, ws: web.WebSocketResponse, max_frame_bytes: int) -> None:
        self._ws = ws
        self._max = max_frame_bytes

    async def send(self, frame: bytes) -> None:
        await self._ws.send_bytes(frame)

    async def receive(self) -> bytes | None:
        msg = await self._ws.receive()
        if msg.type is WSMsgType.BINARY:
            if len(msg.data) > self._max:
                raise ProtocolError(f"frame of {len(msg.data)} bytes exceeds the limit of "
                                    f"{self._max}", code=ErrorCode.FRAME_TOO_LARGE)
            return bytes(msg.data)
        if msg.type is WSMsgType.TEXT:
            raise ProtocolError("text frames are not part of the protocol; send binary CBOR",
                                code=ErrorCode.MALFORMED_MESSAGE)
        if msg.type is WSMsgType.ERROR:
            exc = msg.data
            if isinstance(exc, WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG:
                raise ProtocolError("frame exceeds the limit", code=ErrorCode.FRAME_TOO_LARGE)
            if isinstance(exc, WebSocketError):
                raise ProtocolError("frame could not be read (not a valid WebSocket frame)",
                                    code=ErrorCode.MALFORMED_MESSAGE)
            # The peer is gone (no pong to the heartbeat, a reset socket): nobody to answer.
            log.info("peer connection lost (%s)", type(exc).__name__)
            return None
        return None  # CLOSE, CLOSING, CLOSED

    async def close(self, reason: str) -> None:
        # A peer that stopped reading never answers the close handshake: bound the wait.
        try:
            await asyncio.wait_for(
                self._ws.close(code=WSCloseCode.POLICY_VIOLATION if reason else WSCloseCode.OK,
                               message=reason.encode()[:120]),
                timeout=CLOSE_TIMEOUT)
        except TimeoutError:
            log.info("peer did not complete the close handshake; dropping the socket")
