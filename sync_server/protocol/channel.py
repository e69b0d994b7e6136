"""Frames in and out of one peer: the cut below the message codec.

A :class:`FrameChannel` moves whole frames (bytes) and nothing else, so the
pipeline above never sees the transport. Today the only channel is a plain
WebSocket; the end-to-end encrypted session wraps a channel in another
channel of the same shape, without touching the codec or the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from sync_server.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

#: Seconds to wait for the peer's half of the WebSocket close handshake.
CLOSE_TIMEOUT = 5.0


class FrameChannel(Protocol):
    async def send(self, frame: bytes) -> None: ...

    async def receive(self) -> bytes | None:
        """The next frame, or ``None`` once the peer has gone. Raises ProtocolError."""
        ...

    async def close(self, reason: str) -> None: ...


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
            raise ProtocolError("frame could not be read (too large or broken)",
                                code=ErrorCode.FRAME_TOO_LARGE)
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
