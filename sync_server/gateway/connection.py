"""One connected peer: handshake state, grants, sync state, bounded outbox.

A :class:`Connection` is the pipeline's :class:`~sync_server.sync.peer.Peer`: the
authenticated device, what it may do (its grants), the pipeline's per-household sync
state, and a way to send it messages.

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
import enum
import logging
import weakref
from collections import deque
from collections.abc import Callable
from itertools import count

from prometheus_client import Counter, Gauge

from sync_server.auth.grants import Grants
from sync_server.auth.identity import Device
from sync_server.protocol import wire
from sync_server.protocol.channel import FrameChannel
from sync_server.protocol.errors import ErrorCode, ProtocolError, VatraError
from sync_server.sync.peer import PeerSync

log = logging.getLogger(__name__)
_ids = count(1)


class ConnectionState(enum.Enum):
    AWAITING_JOIN = "awaiting-join"
    OPEN = "open"
    CLOSED = "closed"


# Labels are message types and error codes only: never a household, a device or a user.
MESSAGES_OUT = Counter("vatra_messages_out_total", "Messages sent to devices", ["type"])
BYTES_OUT = Counter("vatra_bytes_out_total", "Bytes of messages sent to devices (plaintext)")
REFUSALS = Counter("vatra_refusals_total", "Errors sent to devices, by code", ["code"])
OUTBOX_OVERFLOWS = Counter("vatra_outbox_overflows_total",
                           "Connections dropped because their outbox was full")

#: Every connection of this process, while it lives: the outbox gauges read them at scrape time.
_LIVE: weakref.WeakSet[Connection] = weakref.WeakSet()
OUTBOX_FRAMES = Gauge("vatra_outbox_frames",
                      "Frames queued for devices, summed over this instance's connections")
OUTBOX_FRAMES.set_function(lambda: sum(c.outbox_depth for c in list(_LIVE)))
OUTBOX_DEEPEST = Gauge("vatra_outbox_frames_max",
                       "Frames queued for the one connection with the most (0 with none)")
OUTBOX_DEEPEST.set_function(lambda: max((c.outbox_depth for c in list(_LIVE)), default=0))


class Outbox:
    """A bounded queue of frames with one reader (the connection's writer task): a put
    never waits (a full outbox raises ``asyncio.QueueFull``), a get does. What
    ``asyncio.Queue`` did, in one deque where it kept four (and an event): about 2 KB
    less for each connection, most of which are idle (docs/performance.md, "Idle
    devices")."""

    __slots__ = ("_items", "_max", "_ready")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[bytes | None] = deque()
        self._max = maxsize
        self._ready: asyncio.Future[None] | None = None  # the reader waiting, if any

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: bytes | None) -> None:
        if len(self._items) >= self._max:
            raise asyncio.QueueFull
        self._items.append(item)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def get_nowait(self) -> bytes | None:
        return self._items.popleft()

    async def get(self) -> bytes | None:
        while not self._items:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                await self._ready
            finally:
                self._ready = None
        return self._items.popleft()


class Connection:
    def __init__(self, channel: FrameChannel, *, server_peer_id: str, outbox_frames: int,
                 device: Device | None = None, cut: Callable[[], None] | None = None) -> None:
        self.id = next(_ids)
        self.channel = channel
        self.device = device  # who is on the other end (set by the session handshake)
        #: what the device may do (authorization state, sync_server/auth/grants.py)
        self.grants: Grants | None = None
        self.server_peer_id = server_peer_id
        self.peer_id: str | None = None
        self.state = ConnectionState.AWAITING_JOIN
        #: the pipeline's state for this peer: SyncStates, changes waiting for a dependency
        self.sync = PeerSync()
        self._outbox = Outbox(outbox_frames)
        self._writer: asyncio.Task[None] | None = None
        self._sending = False  # the writer is inside channel.send (maybe stuck on a slow peer)
        self._close_reason = ""
        self.closed = asyncio.Event()
        #: the device was revoked: nothing of a household is read, written or sent any more
        self.revoked = False
        #: drops the socket at once (the server's: its transport's abort), for a send stuck
        #: on a peer that stopped reading; without it the stuck send is cancelled instead
        self._cut = cut
        #: bytes received and sent (plaintext frames), for the session's closing log line
        self.bytes_in = 0
        self.bytes_out = 0
        self._marker_queued = False  # the close marker (None) is in the outbox
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value}>"

    # -- state ---------------------------------------------------------------------------

    def opened(self, peer_id: str) -> None:
        if self.state is not ConnectionState.AWAITING_JOIN:
            raise ProtocolError("join is only valid once, as the first message",
                                code=ErrorCode.HANDSHAKE_REQUIRED)
        self.peer_id = peer_id
        self.state = ConnectionState.OPEN

    @property
    def outbox_depth(self) -> int:
        """Frames queued and not yet handed to the socket (the close marker, queued last
        when the connection closes, is not a frame)."""
        queued = self._outbox.qsize()
        return queued - 1 if self._marker_queued and queued else queued

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
        frame = wire.encode(message)
        try:
            self._outbox.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("connection %s: outbox full, closing", self.id)
            OUTBOX_OVERFLOWS.inc()
            self.abort(ErrorCode.OUTBOX_OVERFLOW)
            return
        self.bytes_out += len(frame)
        MESSAGES_OUT.labels(message.type).inc()
        BYTES_OUT.inc(len(frame))
        if isinstance(message, wire.Error):
            REFUSALS.labels(message.code).inc()

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
        self._marker_queued = True
        if self._sending and self._writer is not None:
            # A send stuck on a peer that stopped reading: drop the socket, so that send
            # fails and the read loop ends. (Cancelling the writer instead cancelled
            # aiohttp's shared drain future: the session was never released, and the
            # close at shutdown raised CancelledError.)
            if self._cut is not None:
                self._cut()
            else:
                self._writer.cancel()

    async def close(self, reason: str = "") -> None:
        """Flush queued frames (at most 5 s), then close the channel."""
        if self.state is not ConnectionState.CLOSED:
            self._close_reason = reason
            self.state = ConnectionState.CLOSED
            try:
                self._outbox.put_nowait(None)
                self._marker_queued = True
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
                    self._marker_queued = False
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
            try:
                await self.channel.close(self._close_reason)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    self.closed.set()
                    raise
                # not this task's cancellation: a future of the socket's, cancelled under it
                log.info("connection %s: the socket's close was cancelled", self.id)
            except Exception:
                log.debug("connection %s: closing the socket failed", self.id, exc_info=True)
            self.closed.set()
