"""What the pipeline needs of a connected device, and the sync state it keeps per peer.

The pipeline never sees a socket: it talks to a :class:`Peer` (the gateway's
``Connection`` is one), which carries the authenticated device, its
:class:`~sync_server.auth.grants.Grants`, and a :class:`PeerSync`.
"""

from __future__ import annotations

from typing import Protocol

from automerge.core import Document, SyncState

from sync_server.auth.grants import Grants
from sync_server.auth.identity import Device
from sync_server.auth.ids import CompactIds
from sync_server.protocol import wire
from sync_server.protocol.errors import DocumentError, ErrorCode

#: Households one session may sync (a worker's caseload is at most a few thousand;
#: supervisors and national users open households one by one): each holds a SyncState.
MAX_DOCUMENTS = 10_000


class PeerSync:
    """One peer's Automerge sync state per household, and the fork holding its changes
    that wait for a missing dependency (with the bytes of the messages it holds)."""

    def __init__(self, max_documents: int = MAX_DOCUMENTS) -> None:
        self._states: dict[str, SyncState] = {}
        self._max = max_documents
        self.held: dict[str, Document] = {}
        self.held_bytes: dict[str, int] = {}
        #: households this peer holds as the server does (the reconnect fast path said
        #: so): not loaded for it, but opened for it when they change
        #: (:meth:`~sync_server.sync.households.HouseholdRegistry.watch`)
        self.watched = CompactIds()

    def state(self, household_id: str) -> SyncState:
        state = self._states.get(household_id)
        if state is None:
            if len(self._states) >= self._max:
                raise DocumentError(f"a session may sync at most {self._max} households; "
                                    f"reconnect for more", code=ErrorCode.LIMIT_EXCEEDED,
                                    document_id=household_id)
            state = self._states[household_id] = SyncState()
        return state

    def reset(self, household_id: str) -> None:
        """Forget what this peer is believed to have, after a failed or refused sync
        (and any of its changes held back for a missing dependency)."""
        self._states[household_id] = SyncState()
        self.held.pop(household_id, None)
        self.held_bytes.pop(household_id, None)

    @property
    def documents(self) -> list[str]:
        return list(self._states)

    def syncing(self, household_id: str) -> bool:
        """Whether this session has exchanged sync messages for the household."""
        return household_id in self._states


class Peer(Protocol):
    """A connected, authenticated device, as the pipeline sees it."""

    peer_id: str | None
    device: Device | None
    grants: Grants | None
    sync: PeerSync

    @property
    def revoked(self) -> bool: ...

    def send(self, message: wire.Message) -> None: ...

