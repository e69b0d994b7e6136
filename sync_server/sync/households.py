"""Resident households: one in-memory Automerge document per household, loaded on demand.

Each :class:`HouseholdActor` owns its document and a lock; every merge into
it happens under that lock, so changes to one household are applied one
batch at a time while other households proceed in parallel.

Only what is durable is ever in ``actor.doc``: it is loaded from the store,
and replaced only by a fork whose new changes have been committed
(:mod:`sync_server.sync.pipeline`). Sync messages are generated from ``actor.doc``
alone, so no peer is ever told of heads the database does not hold.

Idle households (no subscribed connection, lock free) are evicted, least
recently used first, when the resident count or their stored bytes exceed
the configured bounds; the next access reloads them transparently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Collection
from typing import TYPE_CHECKING

from automerge.core import Document
from prometheus_client import Counter, Gauge

from sync_server.store.contract import HouseholdErased, HouseholdRecord, HouseholdStore
from sync_server.sync import cpu
from sync_server.sync.change_ops import ObjectIndex

if TYPE_CHECKING:
    from sync_server.store.contract import AppendResult
    from sync_server.sync.peer import Peer

log = logging.getLogger(__name__)

RESIDENT = Gauge("vatra_households_resident", "Households held in memory")
EVICTIONS = Counter("vatra_household_evictions_total", "Idle households dropped from memory")
LOADS = Counter("vatra_household_loads_total", "Households loaded from the store")


class HouseholdActor:
    def __init__(self, record: HouseholdRecord, doc: Document, *, snapshot_bytes: int,
                 bytes_since_snapshot: int, last_seq: int) -> None:
        self.record = record
        self.doc = doc
        self.lock = asyncio.Lock()
        self.subscribers: set[Peer] = set()
        self.snapshot_bytes = snapshot_bytes
        self.bytes_since_snapshot = bytes_since_snapshot
        self.last_seq = last_seq
        #: where each object of ``doc`` lives, to read what a batch touched from its
        #: operations (built on the first batch; see :mod:`sync_server.sync.change_ops`)
        self.objects = ObjectIndex()
        #: another instance said it logged changes this copy may lack (gateway/changes.py)
        self.stale = False

    @property
    def id(self) -> str:
        return self.record.id

    def swap(self, fork: Document, stored: AppendResult) -> None:
        """Make ``fork`` the household's copy, once its new changes are committed
        (``stored``): only committed changes ever become visible to a peer."""
        self.doc = fork
        self.bytes_since_snapshot += stored.inserted_bytes
        self.last_seq = max(self.last_seq, stored.last_seq)

    def replace(self, fresh: HouseholdActor) -> None:
        """Take ``fresh``'s copy (the household as the store holds it now, with what other
        instances committed), keeping this actor's lock and subscribers."""
        self.record, self.doc = fresh.record, fresh.doc
        self.snapshot_bytes = fresh.snapshot_bytes
        self.bytes_since_snapshot = fresh.bytes_since_snapshot
        self.last_seq = fresh.last_seq
        self.objects = ObjectIndex()
        self.stale = False

    @property
    def stored_bytes(self) -> int:
        """Bytes of this household in the store: the measure used for residency bounds."""
        return self.snapshot_bytes + self.bytes_since_snapshot

    @property
    def idle(self) -> bool:
        return not self.subscribers and not self.lock.locked()


class HouseholdRegistry:
    def __init__(self, store: HouseholdStore, *, max_resident: int, max_bytes: int) -> None:
        self.store = store
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self._resident: OrderedDict[str, HouseholdActor] = OrderedDict()
        self._loading: dict[str, asyncio.Future[HouseholdActor | None]] = {}
        self.loads = 0
        self.evictions = 0
        #: Households found erased (crypto-shredded): answered like unknown ones, never recreated.
        self.erased: set[str] = set()
        #: Peers holding a household as the server does, by household, whether it is
        #: resident or not: when it changes they are subscribed and answered.
        self._watchers: dict[str, set[Peer]] = {}

    def __len__(self) -> int:
        return len(self._resident)

    def actors(self) -> list[HouseholdActor]:
        """Every resident household's actor."""
        return list(self._resident.values())

    def resident(self, household_id: str) -> HouseholdActor | None:
        return self._resident.get(household_id)

    async def get(self, household_id: str) -> HouseholdActor | None:
        """The household's actor, loading it if needed; ``None`` if no such household."""
        actor = self._resident.get(household_id)
        if actor is not None:
            self._resident.move_to_end(household_id)
            return actor
        pending = self._loading.get(household_id)
        if pending is not None:
            loaded = await asyncio.shield(pending)
            if loaded is None:
                return None
            # Other tasks ran while we waited: the household may have been evicted (or
            # replaced) meanwhile. Hand out only the actor the registry tracks.
            current = self._resident.get(household_id)
            if current is None:
                self._admit(loaded)
                return loaded
            return current
        fut: asyncio.Future[HouseholdActor | None] = asyncio.get_running_loop().create_future()
        self._loading[household_id] = fut
        try:
            actor = await self._load(household_id)
            if actor is not None:
                self._admit(actor)
            fut.set_result(actor)
            return actor
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: the caller gets it raised below
            raise
        finally:
            del self._loading[household_id]

    async def _load(self, household_id: str) -> HouseholdActor | None:
        try:
            loaded = await self.store.load(household_id)
        except HouseholdErased:
            self.erased.add(household_id)
            return None
        if loaded is None:
            return None
        self.loads += 1
        LOADS.inc()
        data = loaded.document_bytes()
        doc = await cpu.offload(Document.load, data)
        return HouseholdActor(loaded.record, doc, snapshot_bytes=len(loaded.snapshot),
                              bytes_since_snapshot=loaded.bytes_since_snapshot,
                              last_seq=loaded.last_seq)

    async def refresh(self, actor: HouseholdActor, *, check: bool = True) -> bool:
        """Bring ``actor`` (its lock held by the caller) up to the log: if the store holds
        a change later than its copy's (another instance committed one), reload it.
        ``check=False`` reloads without asking. True if it was reloaded. Several
        instances serve one household; each trusts its copy only once it knows it is
        not behind (docs/instances.md)."""
        if check and await self.store.last_seq(actor.id) <= actor.last_seq:
            actor.stale = False
            return False
        fresh = await self._load(actor.id)
        if fresh is None:  # erased meanwhile (or gone): answered like an unknown id
            self.forget_erased(actor.id)
            return False
        actor.replace(fresh)
        return True

    def forget_erased(self, household_id: str) -> None:
        """The store found the household erased: drop its copy; from now on it is answered
        like an unknown id (its subscribers keep a reference nobody answers from)."""
        self.erased.add(household_id)
        self._resident.pop(household_id, None)
        RESIDENT.set(len(self._resident))

    def admit_new(self, actor: HouseholdActor) -> HouseholdActor:
        """Register an actor for a household just created (its first changes committed)."""
        existing = self._resident.get(actor.id)
        if existing is not None:
            return existing
        self._admit(actor)
        return actor

    def _admit(self, actor: HouseholdActor) -> None:
        self._resident[actor.id] = actor
        # Not the one being admitted: its caller is about to subscribe to it.
        self.evict_idle(keep=actor.id)

    def evict_idle(self, keep: str | None = None) -> int:
        """Drop idle households (but ``keep``), least recently used first, until within bounds."""
        total = sum(a.stored_bytes for a in self._resident.values())
        evicted = 0
        for hid in list(self._resident):
            if len(self._resident) <= self.max_resident and total <= self.max_bytes:
                break
            actor = self._resident[hid]
            if actor.idle and hid != keep:
                del self._resident[hid]
                total -= actor.stored_bytes
                evicted += 1
        self.evictions += evicted
        EVICTIONS.inc(evicted)
        RESIDENT.set(len(self._resident))
        return evicted

    def unsubscribe(self, conn: Peer) -> None:
        for hid in conn.sync.documents:
            actor = self._resident.get(hid)
            if actor is not None:
                actor.subscribers.discard(conn)
        self.unwatch_all(list(conn.sync.watched), conn)
        self.evict_idle()

    # -- watchers: the reconnect fast path's households that were the same ------------------

    def watch(self, household_id: str, peer: Peer) -> None:
        """``peer`` holds the household as the log does: when it changes, ``peer`` is
        subscribed to it and answered (:meth:`take_watchers`). Nothing is loaded for it."""
        self._watchers.setdefault(household_id, set()).add(peer)
        peer.sync.watched.add(household_id)

    def watch_all(self, household_ids: Collection[str], peer: Peer) -> None:
        """:meth:`watch` each of these households."""
        for hid in household_ids:
            self._watchers.setdefault(hid, set()).add(peer)
        peer.sync.watched.update(household_ids)

    def unwatch(self, household_id: str, peer: Peer) -> None:
        self.unwatch_all((household_id,), peer)

    def unwatch_all(self, household_ids: Collection[str], peer: Peer) -> None:
        for hid in household_ids:
            peers = self._watchers.get(hid)
            if peers is not None:
                peers.discard(peer)
                if not peers:
                    del self._watchers[hid]
        peer.sync.watched.difference_update(household_ids)

    def watched(self, household_id: str) -> bool:
        return household_id in self._watchers

    def watched_households(self) -> set[str]:
        return set(self._watchers)

    def take_watchers(self, household_id: str) -> set[Peer]:
        """The household's watchers, who stop watching it (their caller subscribes them)."""
        peers = self._watchers.pop(household_id, set())
        for peer in peers:
            peer.sync.watched.discard(household_id)
        return peers
