"""A tablet that stays connected to one household and edits it live.

The SDK's :class:`client_sdk.SyncClient` syncs a caseload and closes; a team member
co-editing a household keeps one end-to-end encrypted session open (issue 15 brings
that to the SDK). This is that session, built from the same parts: the session
handshake, ``join``/``peer``, then Automerge's sync protocol on one household, with
every edit made through :class:`conflict.Household` as the device's enrolled user.

:meth:`LiveSession.edit` makes one edit, sends it, and returns when the server's heads
include it (the server answers with its heads once the change is committed).
:data:`SENT` stamps each edit when it leaves, so a teammate's session can tell how long
each edit took to reach it (every change a message brings is counted, also those under
newer heads).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import aiohttp
from automerge.core import Message, SyncState

from client_sdk import Replica
from client_sdk._errors import RETRYABLE_CODES
from client_sdk._transport import ClientChannel
from sync_server.protocol import wire
from sync_server.protocol.session import open_session

#: household -> {change hash: perf_counter() when that edit left its tablet}, for every
#: live session of this process: a teammate's session reads when it received each one
SENT: dict[str, dict[bytes, float]] = {}
#: Seconds an edit may take to be acknowledged before the session is given up.
ACK_TIMEOUT = 30.0


class LiveSession:
    def __init__(self, replica: Replica, url: str, household_id: str) -> None:
        self.replica = replica
        self.url = url
        self.household_id = household_id
        self.household = replica.household(household_id)
        self._state = SyncState()
        self._server_heads: list[bytes] = []
        self._heads_changed = asyncio.Event()
        #: (latency in seconds) of teammates' edits received, not yet reported
        self.pushes: collections.deque[float] = collections.deque()
        #: retryable refusals (e.g. storage-failure) answered by syncing again, not reported
        self.retries: collections.deque[str] = collections.deque()
        self.bytes_out = 0
        self.bytes_in = 0
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._peer = ""
        self._mine: set[bytes] = set()
        self.error: BaseException | None = None

    async def open(self) -> None:
        creds = self.replica.credentials
        if creds is None:
            raise RuntimeError("the replica is not enrolled")
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, max_msg_size=0)
        self._channel = await open_session(ClientChannel(self._ws), creds.device_id,
                                           creds.signing_key, creds.server_key)
        await self._channel.send(wire.encode(wire.Join(self.replica.peer_id)))
        frame = await self._channel.receive()
        peer = wire.decode(frame) if frame is not None else None
        if not isinstance(peer, wire.Peer):
            raise ConnectionError(f"expected peer, got {peer!r}")
        self._peer = peer.sender_id
        self._reader = asyncio.create_task(self._read())
        await self._send_sync()
        mine = self.household.doc.get_heads()
        await self._until(lambda: self._server_has(mine))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def edit(self, text: str) -> float:
        """One visit note appended live; seconds until the server acknowledged it."""
        self.household.append_activity("visit", text)
        head = self.household.doc.get_heads()[0]
        started = time.perf_counter()
        self._mine.add(head)
        SENT.setdefault(self.household_id, {})[head] = started
        await self._send_sync()
        await self._until(lambda: self._server_has([head]))
        return time.perf_counter() - started

    def _server_has(self, hashes: list[bytes]) -> bool:
        """Whether the server's latest heads cover these changes. Not "is one of its
        heads": a teammate's change on top of this one may be the head by the time this
        session looks (found in review: the edit then waited out ACK_TIMEOUT)."""
        if not self._server_heads:
            return False
        # changes not reachable from the server's heads (all of them, if a head is one
        # this copy does not hold yet: then the next message decides)
        beyond = {bytes(c.hash) for c in self.household.doc.get_changes(self._server_heads)}
        return not beyond & set(hashes)

    async def _until(self, done: object) -> None:
        assert callable(done)
        async with asyncio.timeout(ACK_TIMEOUT):
            while not done():
                if self.error is not None:
                    raise ConnectionError(f"the session ended: {self.error}") from self.error
                self._heads_changed.clear()
                await self._heads_changed.wait()

    async def _send_sync(self) -> None:
        message = self.household.doc.generate_sync_message(self._state)
        if message is not None:
            frame = wire.encode(wire.Sync(self.replica.peer_id, self._peer, self.household_id,
                                          message.encode()))
            self.bytes_out += len(frame)
            await self._channel.send(frame)

    async def _read(self) -> None:
        try:
            while (frame := await self._channel.receive()) is not None:
                self.bytes_in += len(frame)
                msg = wire.decode(frame)
                if isinstance(msg, wire.Error):
                    if msg.code in RETRYABLE_CODES and msg.document_id == self.household_id:
                        # not stored, nothing lost: the server forgot what it knew of this
                        # replica; start the household's sync again, as a device does
                        self.retries.append(msg.code)
                        self._state = SyncState()
                        await self._send_sync()
                        continue
                    raise ConnectionError(f"refused: {msg.code}")
                if not isinstance(msg, wire.Sync) or msg.document_id != self.household_id:
                    continue
                now = time.perf_counter()
                doc = self.household.doc
                before = doc.get_heads()
                doc.receive_sync_message(self._state, Message.decode(msg.data))
                sent = SENT.get(self.household_id, {})
                for change in doc.get_changes(before):  # what this message brought
                    edited = sent.get(bytes(change.hash))
                    if edited is not None and bytes(change.hash) not in self._mine:
                        self.pushes.append(now - edited)
                self._server_heads = wire.sync_message_heads(msg.data)
                self._heads_changed.set()
                await self._send_sync()
            raise ConnectionError("the server closed the session")
        except BaseException as exc:
            self.error = exc
            self._heads_changed.set()
            raise
