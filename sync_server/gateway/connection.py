"""One connected peer: handshake state, per-household sync state, bounded outbox.

A connection moves through explicit states; illegal transitions raise::

    AWAITING_JOIN --join--> OPEN --close--> CLOSED
           \\______________________________/^

Outgoing frames go through a bounded outbox drained by one writer task.
Policy when the outbox is full: the peer is too slow to follow the fan-out,
so the connection is closed with ``outbox-overflow``. Nothing is lost: the
server's state is durable and the device resumes with a fresh sync on
reconnect, which sends exactly what it misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from itertools import count
from typing import TYPE_CHECKING

from automerge.core import Document, SyncState

from sync_server.protocol import wire
from sync_server.protocol.channel import FrameChannel
from sync_server.protocol.errors import ErrorCode, VatraError

if TYPE_CHECKING:
    from sync_server.auth.identity import Device

log = logging.getLogger(__name__)
_ids = count(1)

#: Households one session may sync (a worker's caseload is at most a few thousand;
#: supervisors and national users open households one by one): each holds a SyncState.
MAX_DOCUMENTS = 10_000


class ConnectionState(enum.Enum):
    AWAITING_JOIN = "awaiting-join"
    OPEN = "open"
    CLOSED = "closed"


class Connection:
    def __init__(self, channel: FrameChannel, *, server_peer_id: str, outbox_frames: int,
                 device: Device | None = None) -> None:
        self.id = next(_ids)
        self.channel = channel
        self.device = device  # who is on the other end (set by the session handshake)
        self.access: dict[str, bool] = {}  # household -> may sync, decided once per connection
        self.writable: dict[str, bool] = {}  # household -> may change it
        self.team_households: set[str] | None = None  # a worker's team households, read once
        self.server_peer_id = server_peer_id
        self.peer_id: str | None = None
        self.state = ConnectionState.AWAITING_JOIN
        self._sync_states: dict[str, SyncState] = {}
        #: household -> a fork holding this peer's changes queued for a missing dependency,
        #: and the bytes of the messages it holds (bounded: HELD_BYTES)
        self.held: dict[str, Document] = {}
        self.held_bytes: dict[str, int] = {}
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=outbox_frames)
        self._writer: asyncio.Task[None] | None = None
        self._sending = False  # the writer is inside channel.send (maybe stuck on a slow peer)
        self._close_reason = ""
        self.closed = asyncio.Event()
        #: the device was revoked: nothing of a household is read, written or sent any more
        self.revoked = False

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value}>"

    # -- state ---------------------------------------------------------------------------

    def opened(self, peer_id: str) -> None:
        if self.state is not ConnectionState.AWAITING_JOIN:
            raise VatraError("join is only valid once, as the first message",
                             code=ErrorCode.HANDSHAKE_REQUIRED)
        self.peer_id = peer_id
        self.state = ConnectionState.OPEN

    def sync_state(self, document_id: str) -> SyncState:
        state = self._sync_states.get(document_id)
        if state is None:
            if len(self._sync_states) >= MAX_DOCUMENTS:
                raise VatraError(f"a session may sync at most {MAX_DOCUMENTS} households; "
                                 f"reconnect for more", code=ErrorCode.LIMIT_EXCEEDED,
                                 document_id=document_id)
            state = self._sync_states[document_id] = SyncState()
        return state

    def reset_sync_state(self, document_id: str) -> None:
        """Forget what this peer is believed to have, after a failed or rejected sync
        (and any of its changes held back for a missing dependency)."""
        self._sync_states[document_id] = SyncState()
        self.held.pop(document_id, None)
        self.held_bytes.pop(document_id, None)

    @property
    def documents(self) -> list[str]:
        return list(self._sync_states)

    # -- outbox --------------------------------------------------------------------------

    def start(self) -> None:
        self._writer = asyncio.create_task(self._drain(), name=f"conn-{self.id}-writer")

    def send(self, message: wire.Message) -> None:
        """Queue ``message``; never blocks. A full outbox closes the connection. Once the
        device is revoked only the revocation notice is sent."""
        if self.state is ConnectionState.CLOSED:
            return
        if self.revoked and not (isinstance(message, wire.Error)
                                 and message.code == ErrorCode.DEVICE_REVOKED):
            return
        try:
            self._outbox.put_nowait(wire.encode(message))
        except asyncio.QueueFull:
            log.warning("connection %s: outbox full, closing", self.id)
            self.abort(ErrorCode.OUTBOX_OVERFLOW)

    def send_error(self, err: VatraError) -> None:
        self.send(wire.Error(self.server_peer_id, err.message[:wire.MAX_TEXT_CHARS], str(err.code),
                             err.document_id))

    def revoke(self) -> None:
        """The device was revoked: drop what is queued for it (household data) and send
        nothing more but the notice; the pipeline refuses its batches from now on."""
        self.revoked = True
        if self.state is ConnectionState.CLOSED:
            return  # closing already: its close marker is queued, keep it
        while not self._outbox.empty():
            self._outbox.get_nowait()

    def abort(self, code: ErrorCode) -> None:
        """Close without waiting for queued frames (used when the outbox itself is the problem)."""
        self._close_reason = str(code)
        self.state = ConnectionState.CLOSED
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(None)
        if self._sending and self._writer is not None:
            self._writer.cancel()  # a send stuck on a peer that stopped reading: give it up

    async def close(self, reason: str = "") -> None:
        """Flush queued frames (at most 5 s), then close the channel."""
        if self.state is not ConnectionState.CLOSED:
            self._close_reason = reason
            self.state = ConnectionState.CLOSED
            try:
                self._outbox.put_nowait(None)
            except asyncio.QueueFull:
                self.abort(ErrorCode.OUTBOX_OVERFLOW)
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout=5)
            except TimeoutError:
                self._writer.cancel()

    async def _drain(self) -> None:
        try:
            while True:
                frame = await self._outbox.get()
                if frame is None:
                    break
                self._sending = True
                await self.channel.send(frame)
                self._sending = False
        except (ConnectionError, RuntimeError) as exc:
            log.info("connection %s: send failed (%s)", self.id, type(exc).__name__)
        except asyncio.CancelledError:
            if not (self._sending and self.state is ConnectionState.CLOSED):
                raise
            # cancelled by abort(): not an error of this task, close the channel below
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            self.state = ConnectionState.CLOSED
            with contextlib.suppress(Exception):
                await self.channel.close(self._close_reason)
            self.closed.set()
