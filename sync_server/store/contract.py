"""The store contract: what the server asks of where households live, and the values
that cross it.

The contract (:class:`HouseholdStore`) is small on purpose, like automerge-repo's storage
adapters, and ``tests/test_storage_contract.py`` runs one contract suite against every
implementation (today :class:`sync_server.store.postgres.PostgresStore`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sync_server.protocol.errors import ErrorCode, StorageError, VatraError

#: The channel a commit that changed a household's team notifies (payload: the household
#: id), so every server reconsiders its live sessions' access at once.
TEAM_CHANGES = "vatra_team"

#: ``NOTIFY`` channel of every commit that logged changes: the payload is the household
#: id and the seq of the latest change logged, separated by a space. Every instance
#: listens (``sync_server/gateway/changes.py``).
CHANGES = "vatra_changes"


class StoreClosed(StorageError):
    """The store is closing (the server is stopping): nothing was stored; retry later."""


class UnknownHousehold(VatraError, LookupError):
    """No household is registered under this id."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, household_id: str) -> None:
        super().__init__(f"no household {household_id}", document_id=household_id)
        self.household_id = household_id


class HouseholdErased(VatraError, LookupError):
    """The household was erased: its data key is destroyed, its content unreadable."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, household_id: str) -> None:
        super().__init__(f"household {household_id} was erased (its data key is destroyed)",
                         document_id=household_id)
        self.household_id = household_id


class HouseholdStale(Exception):
    """Another instance logged changes for this household since the copy a batch was
    checked on was read: nothing of the batch was stored. Reload the copy and check the
    batch again (docs/instances.md)."""

    def __init__(self, household_id: str) -> None:
        super().__init__(f"household {household_id}: changed by another instance")
        self.household_id = household_id


class HouseholdIdTaken(VatraError, LookupError):
    """A creation named an id that is registered already: nothing was stored."""

    code = ErrorCode.CREATION_REFUSED

    def __init__(self, household_id: str) -> None:
        super().__init__(f"household id {household_id} is registered already",
                         document_id=household_id)
        self.household_id = household_id


@dataclass(frozen=True, slots=True)
class ErasureResult:
    household_id: str
    deleted: dict[str, int]  # table -> rows deleted (rows of the household outside the log)
    log_rows_kept: int       # change-log rows kept, sealed with the destroyed key
    already_erased: bool


@dataclass(frozen=True, slots=True)
class HouseholdRecord:
    """A household in the registry (no content: that is in the change log)."""

    id: str
    locality: str
    county: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredChange:
    """One Automerge change as logged: its hash, dependencies, author actor and bytes."""

    hash: bytes
    deps: tuple[bytes, ...]
    actor: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Author:
    """Who sent a batch: recorded with each change and in the audit log."""

    device_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    inserted: int        # rows new to the log (0 when everything was a re-send)
    inserted_bytes: int  # their body bytes (plaintext)
    last_seq: int        # highest log position among the inserted rows (0 if none inserted)


@dataclass(frozen=True, slots=True)
class LoadedHousehold:
    """What a cold load reads: the latest snapshot and the changes logged after it."""

    record: HouseholdRecord
    snapshot: bytes
    snapshot_heads: tuple[bytes, ...]
    later_changes: tuple[bytes, ...]
    last_seq: int

    @property
    def bytes_since_snapshot(self) -> int:
        return sum(len(c) for c in self.later_changes)

    def document_bytes(self) -> bytes:
        """Input for one ``Document.load``: snapshot chunk followed by change chunks."""
        return self.snapshot + b"".join(self.later_changes)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A household whose projection is behind: up to which change, and since when."""

    household_id: str
    last_seq: int
    enqueued_at: datetime


class HouseholdStore(Protocol):
    """The storage contract the server relies on."""

    async def create_household(self, record: HouseholdRecord,
                               first_changes: Sequence[StoredChange],
                               author: Author | None = None,
                               team: Sequence[str] = ()) -> AppendResult:
        """Register ``record``, log its first changes and put the existing users of
        ``team`` on its team, in one transaction.

        An id registered already stores nothing and raises :class:`HouseholdIdTaken`
        (:class:`HouseholdErased` if it was erased)."""
        ...

    async def move_household(self, record: HouseholdRecord, new: Sequence[StoredChange],
                             author: Author | None = None,
                             team: Sequence[str] | None = None) -> AppendResult:
        """Log ``new`` and set the household's locality and county (and its team, when
        ``team`` is given), in one transaction."""
        ...

    async def household(self, household_id: str) -> HouseholdRecord | None: ...

    async def heads(self, household_ids: Collection[str]
                    ) -> dict[str, tuple[HouseholdRecord, list[bytes]]]:
        """The registry row and the log's heads of each of these households that exists
        and is not erased (the reconnect fast path compares them with a device's)."""
        ...

    async def append_changes(self, household_id: str, new: Sequence[StoredChange],
                             author: Author | None = None,
                             team: Sequence[str] | None = None,
                             expected_seq: int | None = None) -> AppendResult:
        """Log ``new`` in one transaction; changes already logged are skipped. ``author``
        is recorded with each change and in the audit log. ``team``: the household's
        team changed with these changes; its users (those that exist) replace the team
        in the same transaction, and every server hears of it (:data:`TEAM_CHANGES`).
        ``expected_seq``: the last change the caller's copy holds; if the log holds a
        later one, nothing is stored and :class:`HouseholdStale` is raised. Every commit
        that logs something notifies :data:`CHANGES`."""
        ...

    async def last_seq(self, household_id: str) -> int:
        """The seq of the household's latest logged change (0: none)."""
        ...

    async def load(self, household_id: str) -> LoadedHousehold | None: ...

    async def save_snapshot(self, household_id: str, body: bytes,
                            heads: Sequence[bytes], covers_seq: int) -> None:
        """Replace the household's snapshot with ``body``, covering the log up to ``covers_seq``."""
        ...

    async def change_count(self, household_id: str) -> int: ...

    async def change_origins(self, household_id: str, hashes: Collection[bytes]
                             ) -> dict[bytes, tuple[str | None, datetime]]:
        """``hash -> (author device id or None for the server's own, received at)``."""
        ...
