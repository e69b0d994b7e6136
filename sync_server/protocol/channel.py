"""Frames in and out of one peer: the cut below the message codec.

A :class:`FrameChannel` moves whole frames (bytes) and nothing else, so the pipeline
above never sees the transport. The server's WebSocket channel is
:class:`sync_server.gateway.channel.WebSocketChannel`, the client's
``client_sdk._transport.ClientChannel``; the end-to-end encrypted session wraps a
channel in another channel of the same shape (:class:`~sync_server.protocol.session.
SecureChannel`), without touching the codec or the pipeline.
"""

from __future__ import annotations

from typing import Protocol


class FrameChannel(Protocol):
    async def send(self, frame: bytes) -> None: ...

    async def receive(self) -> bytes | None:
        """The next frame, or ``None`` once the peer has gone. Raises ProtocolError."""
        ...

    async def close(self, reason: str) -> None: ...
