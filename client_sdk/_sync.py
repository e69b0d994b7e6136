"""Syncing a replica's whole caseload with the server in one session, or staying connected.

One WebSocket, the end-to-end session, and ``join`` sealed behind its last handshake
frame. With the reconnect fast path (docs/protocol.md), ``vatra-heads`` goes in the same
flight: the server says which households are the same (not synced at all) and which
differ, and speaks first for those. Then, for every household to sync, a fresh
Automerge ``SyncState`` and the usual exchange of sync messages until the server's
advertised heads equal ours. Households we have never downloaded are asked for with
``request``; households never uploaded go up in the first message. :class:`LiveSync`
keeps the session open after that first exchange (docs/sdk.md).

Connection failures are retried with exponential backoff and full jitter;
an ``error`` from the server is not retried (it names a rule, and the same
bytes would be refused again) but reported in the summary.

A household whose batch the server refused for its content (``protected-path``,
``decision-field``, ``schema-violation``: :data:`RECOVERABLE_CODES`) is recovered
within the same ``sync()``: the client asks for the server's copy again (a
``request`` from an empty document), re-applies on it every local edit that is
allowed, as new changes of this device (protected edits become change requests;
see :mod:`client_sdk._recovery`), and keeps the result as the replica's copy.
It uploads the result in a second, short session for the recovered households
only, where both peers start from fresh sync states. (Continuing on the fetch's
state sometimes produced no message at all for the rebased copy, and the
exchange stalled until the idle timeout.)
``SyncSummary.recovered`` says what was re-applied, re-filed, dropped and
uploaded. (A live session rebuilds such a household at once, then starts a fresh
session, whose first exchange uploads it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field

import aiohttp
from automerge.core import Document, Message, SyncState

from sync_server.protocol import fastpath, wire
from sync_server.protocol.errors import ProtocolError
from sync_server.protocol.session import SecureChannel, SessionError, open_session

from ._errors import (
    RETRYABLE_CODES,
    NotEnrolled,
    ReplicaError,
    ServerRejected,
    ServerUnavailable,
    SyncFailed,
    SyncStalled,
)
from ._recovery import RECOVERABLE_CODES, Recovery, rebase
from ._replica import Replica, covers
from ._transport import ClientChannel

log = logging.getLogger(__name__)

RemoteChangeCallback = Callable[[str, int], None]   # (household_id, changes received)
SavedCallback = Callable[[str, list[bytes]], None]  # (household_id, server heads)
_Send = Callable[[wire.Message], Awaitable[None]]


@dataclass
class SyncSummary:
    households_synced: int = 0
    changes_sent: int = 0
    changes_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    unavailable: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # left the caseload: local copy deleted
    #: erased on the server: local copy deleted, with the unsynced local changes it held
    erased: dict[str, int] = field(default_factory=dict)
    #: unsynced local changes deleted with a household removed or erased (non-zero only)
    discarded: dict[str, int] = field(default_factory=dict)
    rejected: list[ServerRejected] = field(default_factory=list)
    #: households whose refused batch was rebuilt on the server's copy (see module doc)
    recovered: dict[str, Recovery] = field(default_factory=dict)
    attempts: int = 1
    seconds: float = 0.0
    #: households the reconnect fast path found the same on both sides (not synced;
    #: counted in ``households_synced``)
    households_unchanged: int = 0

    def absorb(self, other: SyncSummary) -> None:
        """Add a follow-up session's figures (the households are already counted)."""
        for name in ("changes_sent", "changes_received", "bytes_sent", "bytes_received",
                     "attempts", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unavailable += other.unavailable
        self.rejected += other.rejected
        self.erased.update(other.erased)
        self.discarded.update(other.discarded)


@dataclass
class _Offer:
    """What a fast-path ``vatra-heads`` offered (see :meth:`SyncClient._heads_offer`)."""

    tagged: list[tuple[str, bytes]] = field(default_factory=list)
    named: list[tuple[str, bytes]] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # never synced: not offered
    message: wire.Heads = field(default_factory=lambda: wire.Heads("", b""))


@dataclass
class _DocSync:
    doc: Document
    state: SyncState
    hashes_before: set[bytes]
    first_server_heads: list[bytes] | None = None
    server_heads: list[bytes] = field(default_factory=list)
    done: bool = False
    was_saved: bool = False
    rounds: int = 0
    #: recovering a refused batch: "" (no), "fetching" the server's copy, "rebased"
    phase: str = ""
    refused: Document | None = None  # the local copy the server refused
    code: str = ""
    recovery: Recovery | None = None
    #: a copy with the server's changes and the oldest unsent ones that fit a frame,
    #: while the rest wait (:func:`stepped`); None: the whole copy is synced
    step: Document | None = None


#: The biggest frame the SDK takes from the server. The server's frame limit bounds what
#: it accepts, not what it sends: a household with attachments arrives whole in one
#: message (decision 66), up to this.
MAX_DOWNLOAD_FRAME = 128 * 1024 * 1024

#: Changes in one step, at most (bytes): an upload bigger than this goes in steps even
#: when a frame would take more. The server's memory for a message is about twenty
#: times the message (copies on the way from the socket to the database), so smaller
#: steps keep a big upload's peak low for a few more round trips (docs/performance.md,
#: "Big values").
STEP_BYTES = 1024 * 1024

#: Bytes of a frame kept for what wraps a sync message's changes: the message's heads
#: and Bloom filter, the envelope (CBOR) and the sealing.
FRAME_MARGIN = 32 * 1024


def stepped(doc: Document, server_heads: list[bytes], budget: int) -> Document | None:
    """A copy of ``doc`` to answer the server from when the changes it lacks would not
    fit in one frame: what the server has, and the oldest of the rest whose size fits
    ``budget`` (one change at least, whatever its size). The server acknowledges them, and the
    next answer takes the next step. None when everything fits. Heads of the server's
    that this copy has not received yet are left out of the reckoning: the server sends
    those changes during the step.

    Before (issue 13, fault 8), such a household could never sync: the server dropped
    the oversized frame, and every retry sent it again."""
    if not server_heads:
        return None  # the session's first answer: no changes in it yet
    missing = doc.get_changes(server_heads)
    if sum(len(c.raw_bytes) for c in missing) <= budget:
        return None
    every = doc.get_changes([])  # causal order
    hashes = {c.hash for c in every}
    known = [h for h in server_heads if h in hashes]
    if len(known) < len(server_heads):  # get_changes takes unknown heads for "nothing known"
        missing = doc.get_changes(known) if known else every
        if sum(len(c.raw_bytes) for c in missing) <= budget:
            return None
    taken: set[bytes] = set()
    size = 0
    for c in missing:  # raw sizes: a message carries most changes uncompressed
        if taken and size + len(c.raw_bytes) > budget:
            break
        taken.add(c.hash)
        size += len(c.raw_bytes)
    lacking = {c.hash for c in missing}
    return Document.load(b"".join(c.bytes for c in every
                                  if c.hash not in lacking or c.hash in taken))


class SyncClient:
    """Syncs one :class:`Replica` with one server.

    ``on_remote_change(household_id, n)`` fires when n changes from others
    arrived; ``on_saved(household_id, heads)`` when the server's heads first
    include every local change of that household.
    """

    def __init__(self, replica: Replica, server_url: str, *,
                 on_remote_change: RemoteChangeCallback | None = None,
                 on_saved: SavedCallback | None = None,
                 max_attempts: int = 5, backoff_base: float = 0.2, backoff_cap: float = 10.0,
                 idle_timeout: float = 30.0, max_frame_bytes: int = 4 * 1024 * 1024,
                 max_step_bytes: int = STEP_BYTES,
                 max_rounds: int = 200, fast_path: bool = True,
                 on_progress: ProgressCallback | None = None,
                 heartbeat: float = 30.0) -> None:
        self.replica = replica
        #: ``on_progress(Progress)``: n of m households synced, bytes so far (each sync,
        #: and each live session's first exchange)
        self.on_progress = on_progress
        #: seconds between WebSocket pings; a link that answers none is dropped
        self.heartbeat = heartbeat
        #: offer the reconnect fast path (docs/protocol.md); False syncs every household
        #: as a plain automerge-repo peer would
        self.fast_path = fast_path
        self._plain_only = False  # the server did not take the offer: not offered again
        self.server_url = server_url
        self.on_remote_change = on_remote_change
        self.on_saved = on_saved
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.idle_timeout = idle_timeout
        self.max_frame_bytes = max_frame_bytes
        #: changes sent in one message at most, when they come in steps (:func:`stepped`)
        self.step_bytes = min(max_step_bytes, max_frame_bytes - FRAME_MARGIN)
        self.max_rounds = max_rounds

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): full jitter, capped."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))

    async def sync(self, household_ids: list[str] | None = None) -> SyncSummary:
        """Upload and download every household of the caseload (or those given)."""
        summary = await self._retrying(lambda: self._sync_once(household_ids, recover=True))
        pending = sorted(hid for hid, r in summary.recovered.items() if not r.uploaded)
        if pending:  # upload the recovered households, from fresh sync states
            upload = await self._retrying(lambda: self._sync_once(pending, recover=False))
            summary.absorb(upload)
            for hid in pending:
                summary.recovered[hid].uploaded = (
                    hid not in {r.document_id for r in upload.rejected}
                    and covers(self.replica.document(hid), self.replica.server_heads(hid)))
        return summary

    async def _retrying(self, once: Callable[[], Awaitable[SyncSummary]]) -> SyncSummary:
        last: BaseException | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                summary = await once()
                summary.attempts = attempt
                return summary
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError,
                    ServerUnavailable) as exc:
                last = exc
                log.info("sync attempt %d failed: %s", attempt, type(exc).__name__)
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.backoff_delay(attempt))
        raise SyncFailed(self.max_attempts, last)

    async def _sync_once(self, household_ids: list[str] | None, *,
                         recover: bool) -> SyncSummary:
        started = time.perf_counter()
        summary = SyncSummary()
        async with self._connected(summary, fast=household_ids is None) as (channel, offer):
            session = _Session(self, channel, summary, recover=recover)
            await session.first_exchange(offer, household_ids)
        summary.seconds = time.perf_counter() - started
        return summary

    @contextlib.asynccontextmanager
    async def _connected(self, summary: SyncSummary, *, fast: bool
                         ) -> AsyncIterator[tuple[SecureChannel, _Offer | None]]:
        """A session with the server, ``join`` (and, with ``fast``, the fast path's offer)
        sent behind the handshake's ``auth``: the sealed channel and the offer made."""
        creds = self.replica.credentials
        if creds is None:
            raise NotEnrolled("enroll this replica before syncing (client_sdk.enroll)")
        peer_id = self.replica.peer_id
        metadata: dict[str, object] = {"isEphemeral": False, "vatraCaseload": True}
        offer = None
        if fast and self.fast_path and not self._plain_only:
            offer = self._heads_offer(peer_id, creds.role)
            metadata["vatraHeads"] = fastpath.VERSION
        early = [wire.encode(wire.Join(peer_id, metadata=metadata))]
        if offer is not None:
            early.append(wire.encode(offer.message))
        summary.bytes_sent += sum(len(f) for f in early)
        async with aiohttp.ClientSession() as session, session.ws_connect(
                self.server_url, max_msg_size=max(self.max_frame_bytes, MAX_DOWNLOAD_FRAME)
                + 64 * 1024,
                heartbeat=self.heartbeat) as ws:
            try:
                channel = await open_session(ClientChannel(ws), creds.device_id,
                                             creds.signing_key, creds.server_key, early=early)
            except SessionError as err:  # the server's refusal, in a frame
                refusal = ServerUnavailable if err.code in RETRYABLE_CODES else ServerRejected
                raise refusal(str(err.code), err.message) from err
            yield channel, offer

    def live(self, *, on_connected: Callable[[SyncSummary], None] | None = None) -> LiveSync:
        """Stay connected: ``async with client.live() as live: …``. See :class:`LiveSync`."""
        return LiveSync(self, on_connected=on_connected)

    def _rejected(self, err: wire.Error) -> ServerRejected:
        """The server's ``error`` as an exception; a revoked device wipes its replica."""
        if err.code == "device-revoked":
            log.warning("this device was revoked: deleting the local replica")
            self.replica.wipe()
        if err.document_id is None and err.code in RETRYABLE_CODES:
            return ServerUnavailable(err.code, err.message)
        return ServerRejected(err.code, err.message, err.document_id)

    def _heads_offer(self, peer_id: str, role: str) -> _Offer:
        """The fast path's ``vatra-heads``: a tag of the heads of every household synced
        before, anonymous for a worker's (its caseload), named otherwise; households
        never synced are known to differ and are not offered."""
        offer = _Offer()
        for hid in self.replica.household_ids():
            if not self.replica.server_heads(hid):
                offer.fresh.append(hid)
                continue
            tag = fastpath.heads_tag(hid, self.replica.document(hid).get_heads())
            (offer.tagged if role == "worker" else offer.named).append((hid, tag))
        offer.message = wire.Heads(peer_id, b"".join(tag for _, tag in offer.tagged),
                                   tuple(offer.named))
        return offer

    def _apply_heads(self, offer: _Offer, reply: wire.HeadsReply,
                     summary: SyncSummary) -> tuple[list[str], set[str]]:
        """The server's ``vatra-heads-reply``: the households to sync, and those of them
        the server opens. Erased ones are deleted; a worker's household that is neither
        the same nor differing left the caseload and is deleted too. The rest (never
        synced, or named and not compared) the device opens itself."""
        entries = offer.tagged + offer.named
        same = {hid for (hid, _), s in zip(entries, fastpath.bits(reply.same, len(entries)),
                                          strict=True) if s}
        differ, erased = set(reply.differ), set(reply.erased)
        self._discard(sorted(erased & set(self.replica.household_ids())), summary,
                      erased=True)
        gone = [hid for hid, _ in offer.tagged
                if hid not in same and hid not in differ and hid not in erased]
        self._discard(gone, summary, erased=False)
        for hid in sorted(differ - set(self.replica.household_ids())):
            self.replica.track(hid)
        for hid in sorted(same):  # the server holds exactly these heads: saved
            heads = self.replica.document(hid).get_heads()
            if sorted(self.replica.server_heads(hid)) != sorted(heads):
                self.replica.set_server_heads(hid, heads, flush=False)
                if self.on_saved is not None:
                    self.on_saved(hid, heads)
        summary.households_synced += len(same)
        summary.households_unchanged = len(same)
        own = {hid for hid in offer.fresh + [hid for hid, _ in offer.named]
               if hid not in same and hid not in erased}
        return sorted(differ | own), differ

    def _apply_caseload(self, caseload: set[str], summary: SyncSummary) -> list[str]:
        """Households to sync: ours plus the caseload's. A worker's households the server
        no longer lists (removed from the team) are deleted here, if they were synced
        before; households registered offline and never synced are kept."""
        local = set(self.replica.household_ids())
        creds = self.replica.credentials
        if creds is not None and creds.role == "worker":
            gone = [hid for hid in sorted(local - caseload) if self.replica.server_heads(hid)]
            self._discard(gone, summary, erased=False)
            local.difference_update(gone)
        for hid in sorted(caseload - local):
            self.replica.track(hid)
        return sorted(local | caseload)

    def _discard(self, household_ids: list[str], summary: SyncSummary, *,
                 erased: bool) -> None:
        """Delete these local copies (erased on the server, or no longer ours), counting
        the unsynced changes each held: the server would refuse them, and they are lost."""
        for hid in household_ids:
            try:
                unsynced = self.replica.unsynced_changes(hid)
            except ReplicaError:  # an unreadable copy: deleted all the same
                log.warning("household %s: local copy unreadable; deleting it", hid)
                unsynced = 0
            self.replica.remove(hid)
            if erased:
                summary.erased[hid] = unsynced
            else:
                summary.removed.append(hid)
            if unsynced:
                summary.discarded[hid] = unsynced
                log.warning("household %s %s: %d unsynced local changes discarded", hid,
                            "was erased on the server" if erased else "left this caseload",
                            unsynced)

    async def _on_sync(self, msg: wire.Sync, d: _DocSync, send: _Send, peer_id: str,
                       server_id: str, summary: SyncSummary) -> None:
        hid = msg.document_id
        d.rounds += 1
        if d.rounds > self.max_rounds:
            raise SyncStalled(hid, d.rounds)
        before = d.doc.get_heads()
        if d.step is None:
            d.doc.receive_sync_message(d.state, Message.decode(msg.data))
        else:  # what the server sends during a step reaches the whole copy too
            d.step.receive_sync_message(d.state, Message.decode(msg.data))
            d.doc.merge(d.step)
        d.server_heads = wire.sync_message_heads(msg.data)
        if d.first_server_heads is None:
            d.first_server_heads = d.server_heads
        self.replica.set_server_heads(hid, d.server_heads, flush=False)
        after = d.doc.get_heads()
        if (after != before and self.on_remote_change is not None and d.phase != "fetching"
                and self.replica.has_local_copy(hid)):
            self.on_remote_change(hid, len(d.doc.get_changes(before)))
        reply = self._reply(hid, d)
        if reply is not None:
            await send(wire.Sync(peer_id, server_id, hid, reply.encode()))
        saved = covers(d.doc, d.server_heads)
        if saved and not d.was_saved and d.hashes_before and self.on_saved is not None:
            self.on_saved(hid, d.server_heads)
        d.was_saved = saved
        # Equal heads mean equal documents; any reply just sent is an acknowledgement.
        d.done = sorted(after) == sorted(d.server_heads)
        if d.done and d.phase == "fetching":
            self._finish_fetch(d, hid, summary)

    def _reply(self, hid: str, d: _DocSync) -> Message | None:
        """The answer to the server: from the whole copy, or, while the changes the server
        lacks do not fit one frame, from the current step (:func:`stepped`). Each step
        runs with a sync state of its own, from its first message: a state carried over
        from a bigger copy names changes the step cannot send, and it would send none."""
        if d.step is not None and sorted(d.step.get_heads()) == sorted(d.server_heads):
            d.step = None  # the server has this step: take the next one, if any
            d.state = SyncState()
        if d.step is None:
            step = stepped(d.doc, d.server_heads, self.step_bytes)
            if step is not None:
                d.step, d.state = step, SyncState()
                log.info("household %s: changes over one frame; sending them in steps", hid)
        return (d.doc if d.step is None else d.step).generate_sync_message(d.state)

    async def _start_recovery(self, hid: str, refused: _DocSync, code: str, send: _Send,
                              peer_id: str, server_id: str) -> _DocSync:
        """Ask for the server's copy of a household whose batch it refused, from scratch
        (the server dropped its sync state for it along with the batch)."""
        log.info("household %s: batch refused (%s); fetching the server's copy to "
                 "re-apply the allowed edits", hid, code)
        fresh = Document(actor_id=self.replica.actor_id)
        d = _DocSync(fresh, SyncState(), set(), phase="fetching", refused=refused.doc,
                     code=code)
        m = fresh.generate_sync_message(d.state)
        assert m is not None  # a fresh SyncState always has something to say
        await send(wire.Request(peer_id, server_id, hid, m.encode()))
        return d

    def _finish_fetch(self, d: _DocSync, hid: str, summary: SyncSummary) -> None:
        """The server's copy is here: re-apply the refused copy's allowed edits on it and
        keep the result as the replica's copy (:meth:`sync` uploads it next)."""
        creds = self.replica.credentials
        assert creds is not None and d.refused is not None
        server_copy = d.doc
        server_hashes = {c.hash for c in server_copy.get_changes([])}
        local_hashes = {c.hash for c in d.refused.get_changes([])}
        result, recovery = rebase(d.refused, server_copy, hid, actor_id=self.replica.actor_id,
                                  user_id=creds.user_id, role=creds.role, code=d.code)
        d.doc, d.refused, d.recovery, d.phase = result, None, recovery, "rebased"
        summary.recovered[hid] = recovery
        self.replica.adopt(hid, result)
        received = len(server_hashes - local_hashes)
        summary.changes_received += received
        if received and self.on_remote_change is not None:
            self.on_remote_change(hid, received)
        log.info("household %s: recovered; %d value(s) re-applied, %d re-filed as change "
                 "requests, %d dropped", hid, recovery.reapplied, len(recovery.refiled),
                 len(recovery.dropped))
        recovery.uploaded = not result.get_changes(server_copy.get_heads())  # nothing new

    @staticmethod
    def _count(d: _DocSync, summary: SyncSummary) -> None:
        after = {c.hash for c in d.doc.get_changes([])}
        summary.changes_received += len(after - d.hashes_before)
        first = d.first_server_heads or []
        if not set(first) <= after:
            summary.changes_sent += len(d.hashes_before)  # cannot happen after a full sync
            return
        # What we had that the server's first message did not cover.
        lacking = {c.hash for c in d.doc.get_changes(first)} if first else after
        summary.changes_sent += len(lacking & d.hashes_before)


@dataclass(frozen=True)
class Progress:
    """How far a session's first exchange is: ``done`` of ``total`` households synced,
    and the bytes sent (uploads) and received (downloads) so far."""

    done: int
    total: int
    bytes_sent: int
    bytes_received: int


ProgressCallback = Callable[[Progress], None]


#: What a peer with an empty document says first (heads, need and an empty Bloom filter).
_EMPTY_PEER: bytes = Document().generate_sync_message(SyncState()).encode()


def fits_one_step(doc: Document, client: SyncClient) -> bool:
    """Whether all of ``doc``'s changes fit one step of an upload (:func:`stepped`)."""
    return sum(len(c.raw_bytes) for c in doc.get_changes([])) <= client.step_bytes


class _Session:
    """One connected session's exchange, shared by :meth:`SyncClient.sync` (until every
    household is settled) and :class:`LiveSync` (for as long as the link holds)."""

    def __init__(self, client: SyncClient, channel: SecureChannel, summary: SyncSummary, *,
                 recover: bool, follow: bool = False,
                 rebuilt: Collection[str] = ()) -> None:
        self.client, self.channel, self.summary = client, channel, summary
        self.recover = recover
        #: households rebuilt on the server's copy in the session before: refused again,
        #: they are reported, not rebuilt again
        self.rebuilt = frozenset(rebuilt)
        #: answer the server about any household of the replica it sends (live mode);
        #: otherwise only about those this session opened
        self.follow = follow
        self.peer_id = client.replica.peer_id
        self.server_id = ""
        self.docs: dict[str, _DocSync] = {}
        self._first: set[str] = set()  # the households of the first exchange
        self._finished: set[str] = set()

    async def send(self, message: wire.Message) -> None:
        frame = wire.encode(message)
        self.summary.bytes_sent += len(frame)
        await self.channel.send(frame)

    async def receive(self, idle: float | None) -> wire.Message:
        """The next message; ``idle``: seconds to wait at most (None: as long as it takes)."""
        frame = await asyncio.wait_for(self.channel.receive(), idle)
        if frame is None:
            raise ConnectionError("server closed the connection")
        self.summary.bytes_received += len(frame)
        return wire.decode(frame)

    async def first_exchange(self, offer: _Offer | None,
                             household_ids: list[str] | None) -> None:
        """:meth:`begin`, then every household's messages until all are settled, then the
        summary's figures."""
        try:
            await self.begin(offer, household_ids)
            while not self.settled():
                await self.dispatch(await self.receive(self.client.idle_timeout))
            self.count()
        finally:
            # One write per sync, also when it fails half-way: households keep what
            # arrived, and the server heads recorded are ones the server advertised.
            self.client.replica.flush()

    async def begin(self, offer: _Offer | None, household_ids: list[str] | None) -> None:
        """Read ``peer`` and the caseload (or the fast path's reply), and open every
        household to sync: the server opens those the fast path found different."""
        client, summary = self.client, self.summary
        first = await self.receive(client.idle_timeout)
        if isinstance(first, wire.Error):
            raise client._rejected(first)
        if not isinstance(first, wire.Peer):
            raise ProtocolError(f"expected 'peer', got '{first.type}'")
        self.server_id = first.sender_id
        server_first: set[str] = set()  # households the server opens (the fast path)
        overtaking: list[wire.Sync] = []
        if offer is not None:
            if first.metadata.get("vatraHeads") != fastpath.VERSION:
                # A server older than the fast path: it refuses vatra-heads and closes.
                log.info("the server does not offer the reconnect fast path; syncing "
                         "without it")
                client._plain_only = True
                raise ConnectionError("the server does not offer the reconnect fast path")
            reply = await self.receive(client.idle_timeout)
            while isinstance(reply, wire.Sync):
                # A change stored while the server compared: pushed to this session as a
                # watcher, ahead of the reply. Handled once the households are open.
                overtaking.append(reply)
                reply = await self.receive(client.idle_timeout)
            if isinstance(reply, wire.Error):
                raise client._rejected(reply)
            if not isinstance(reply, wire.HeadsReply):
                raise ProtocolError(f"expected 'vatra-heads-reply', got '{reply.type}'")
            ids, server_first = client._apply_heads(offer, reply, summary)
        else:
            caseload = await self.receive(client.idle_timeout)
            if isinstance(caseload, wire.Error):
                raise client._rejected(caseload)
            if not isinstance(caseload, wire.Caseload):
                raise ProtocolError(f"expected 'vatra-caseload', got '{caseload.type}'")
            erased = set(caseload.erased)
            client._discard(sorted(erased & set(client.replica.household_ids())), summary,
                            erased=True)
            if household_ids is None:
                ids = client._apply_caseload(set(caseload.document_ids), summary)
            else:
                ids = [hid for hid in household_ids if hid not in erased]
        self._first = set(ids)
        self._progress()
        for hid in ids:
            await self.open(hid, server_first=hid in server_first)
        for msg in overtaking:
            await self.dispatch(msg)

    async def open(self, hid: str, *, server_first: bool = False) -> _DocSync:
        """Start syncing ``hid`` from a fresh sync state; the first message is ours unless
        the server speaks first."""
        replica = self.client.replica
        local = replica.has_local_copy(hid)
        doc = replica.document(hid)
        d = self.docs[hid] = _DocSync(doc, SyncState(),
                                      {c.hash for c in doc.get_changes([])} if local else set())
        if not server_first:
            if local and not replica.server_heads(hid) and fits_one_step(doc, self.client):
                # Never synced (registered offline): the server holds nothing of it. Told
                # what an empty peer says, the sync state lets the first message carry the
                # changes, which saves the round trip that would only learn that.
                doc.receive_sync_message(d.state, Message.decode(_EMPTY_PEER))
                d.first_server_heads = []  # what the server held: nothing
            m = doc.generate_sync_message(d.state)
            assert m is not None  # a fresh SyncState always has something to say
            kind = wire.Sync if local else wire.Request
            await self.send(kind(self.peer_id, self.server_id, hid, m.encode()))
        return d

    async def push(self, hid: str) -> None:
        """Local changes to ``hid`` (live mode): send them on the household's sync state."""
        d = self.docs.get(hid)
        if d is None or d.phase:
            if d is None:
                await self.open(hid)
            return
        d.done = False
        d.was_saved = covers(d.doc, d.server_heads)  # False: the new edit is not saved yet
        m = self.client._reply(hid, d)
        if m is not None:
            await self.send(wire.Sync(self.peer_id, self.server_id, hid, m.encode()))

    def settled(self) -> bool:
        return all(d.done for d in self.docs.values())

    async def dispatch(self, msg: wire.Message) -> None:
        """Handle one message from the server."""
        client, docs, summary = self.client, self.docs, self.summary
        if isinstance(msg, wire.Sync):
            known = docs.get(msg.document_id)
            if known is None:
                if not (self.follow and client.replica.has_local_copy(msg.document_id)):
                    return  # a household this session did not open
                known = await self.open(msg.document_id, server_first=True)
            await client._on_sync(msg, known, self.send, self.peer_id, self.server_id,
                                  summary)
            if known.done:
                known.rounds = 0
        elif isinstance(msg, wire.DocUnavailable):
            if msg.document_id in docs:
                docs[msg.document_id].done = True
                summary.unavailable.append(msg.document_id)
        elif isinstance(msg, wire.Error):
            rejection = client._rejected(msg)
            summary.rejected.append(rejection)
            if msg.document_id is None or msg.document_id not in docs:
                raise rejection
            hid = msg.document_id
            d = docs[hid]
            d.done = True
            if (msg.code in RECOVERABLE_CODES and d.phase == "" and self.recover
                    and hid not in self.rebuilt and client.replica.has_local_copy(hid)):
                docs[hid] = await client._start_recovery(hid, d, msg.code, self.send,
                                                          self.peer_id, self.server_id)
            elif not self.recover or hid in self.rebuilt:
                log.warning("household %s: the re-applied edits were refused too (%s)",
                            hid, msg.code)
        else:
            return
        doc_id = msg.document_id
        if doc_id in self._first and doc_id not in self._finished and docs[doc_id].done:
            self._finished.add(doc_id)
            self._progress()

    def _progress(self) -> None:
        if self.client.on_progress is not None:
            self.client.on_progress(Progress(len(self._finished), len(self._first),
                                             self.summary.bytes_sent,
                                             self.summary.bytes_received))

    def count(self) -> None:
        """The summary's per-household figures, once the exchange settled."""
        client, summary = self.client, self.summary
        for hid, d in self.docs.items():
            if hid in summary.unavailable or not d.doc.get_heads():
                continue
            summary.households_synced += 1
            if d.phase:
                continue  # counted by _finish_fetch
            if not client.replica.has_local_copy(hid):
                client.replica.adopt(hid, d.doc)
            client._count(d, summary)


class _Resync(ConnectionError):
    """A refused batch was rebuilt on the server's copy: a fresh session uploads it."""


class LiveSync:
    """A replica that stays connected (:meth:`SyncClient.live`).

    It syncs the caseload as :meth:`SyncClient.sync` does (with the fast path), then
    keeps the session open: the server's pushes are merged into the replica as they
    come (``on_remote_change``, ``on_saved`` fire per household, and each copy is saved
    to disk), and :meth:`changed` sends a local edit at once. When the link drops it
    reconnects, waiting with exponential backoff and full jitter between tries, and
    resumes with the fast path. A refusal that names no household (the device was
    revoked) ends it: :meth:`wait` raises it.

    ``on_connected(summary)`` fires each time a session's first exchange is done; the
    summary is that exchange's.
    """

    def __init__(self, client: SyncClient, *,
                 on_connected: Callable[[SyncSummary], None] | None = None) -> None:
        self.client = client
        self.on_connected = on_connected
        #: set while a session is open and its first exchange done
        self.connected = asyncio.Event()
        self.sessions = 0  #: sessions whose first exchange completed
        self._dirty: set[str] = set()
        self._rebuilt: set[str] = set()  # households rebuilt, for the next session to upload
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveSync:
        self._task = asyncio.create_task(self._run(), name="vatra-live-sync")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def changed(self, household_id: str) -> None:
        """The replica's copy of ``household_id`` changed here: send it (now if connected,
        else at the next session, which sends it anyway)."""
        self._dirty.add(household_id)
        self._wake.set()

    async def wait(self) -> None:
        """Until the live session ends: only by a refusal, which is raised."""
        assert self._task is not None
        try:
            await asyncio.shield(self._task)
        except ServerRejected:
            self._reported = True
            raise

    async def close(self) -> None:
        """Stop; a refusal that ended the session and that :meth:`wait` did not raise is
        raised here."""
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        except ServerRejected:
            if not self._reported:
                raise
        finally:
            self.connected.clear()
            self.client.replica.flush()

    _reported = False  # wait() raised the refusal that ended the session

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._session()
            except _Resync:
                self.connected.clear()  # at once: the link is fine
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError,
                    ServerUnavailable) as exc:
                self.connected.clear()
                attempt = 1 if self.connected_once else attempt + 1
                self.connected_once = False
                delay = self.client.backoff_delay(attempt)
                log.info("live sync: link lost (%s); reconnecting in %.1f s",
                         type(exc).__name__, delay)
                await asyncio.sleep(delay)

    connected_once = False  # the last session got through its first exchange

    def _resync_if_rebuilt(self, summary: SyncSummary) -> None:
        """A household recovered in this session still has to go up: a fresh session
        uploads it (as :meth:`SyncClient.sync` does in a second session), and if its
        re-applied edits are refused too, reports that instead of rebuilding it again."""
        pending = {hid for hid, r in summary.recovered.items() if not r.uploaded}
        if pending:
            self._rebuilt = pending
            raise _Resync("a refused batch was rebuilt on the server's copy; uploading it "
                          "in a fresh session")

    async def _session(self) -> None:
        client = self.client
        summary = SyncSummary()
        started = time.perf_counter()
        self._dirty.clear()  # the first exchange sends every local change anyway
        async with client._connected(summary, fast=True) as (channel, offer):
            session = _Session(client, channel, summary, recover=True, follow=True,
                               rebuilt=self._rebuilt)
            self._rebuilt = set()
            await session.first_exchange(offer, None)
            self._resync_if_rebuilt(summary)
            summary.seconds = time.perf_counter() - started
            self.sessions += 1
            self.connected_once = True
            self.connected.set()
            if self.on_connected is not None:
                self.on_connected(summary)
            await self._follow(session)

    async def _follow(self, session: _Session) -> None:
        """Merge what the server pushes, send what changes here, until the link drops."""
        incoming = asyncio.ensure_future(session.receive(None))
        try:
            while True:
                woken = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({incoming, woken},
                                             return_when=asyncio.FIRST_COMPLETED)
                if woken not in done:
                    woken.cancel()
                if incoming in done:
                    msg = incoming.result()  # raises when the link dropped
                    try:
                        await session.dispatch(msg)
                    finally:
                        self.client.replica.flush()
                    self._resync_if_rebuilt(session.summary)
                    incoming = asyncio.ensure_future(session.receive(None))
                if self._wake.is_set():
                    self._wake.clear()
                    dirty, self._dirty = sorted(self._dirty), set()
                    for hid in dirty:
                        await session.push(hid)
        finally:
            incoming.cancel()
            with contextlib.suppress(BaseException):
                await incoming
